"""Hostile batch inputs, through a real `plait batch`: every kind of line that is not an item
(not UTF-8, not JSON, NaN, out of range, nested past any limit, not an object, no id, a null
id, a repeated id, blank), ids that differ only in type, and a store reused under the same
run id with other questions.

For each: a bad line is a failed record naming its line and never stops the batch, every
valid item is answered once, every output line is strict JSON, a batch run again writes
nothing twice, and a stored answer never comes back for another question.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .plaitproc import LIMIT, env, one_line, plait

TOOLS = """
import plait

@plait.tool
async def note(text: str) -> str:
    return text
"""


def reply(answer: str) -> list[str]:
    return ['1. note("x")\njoin()\n', f"Action: Finish({answer})"]


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, str]:
    tools = tmp_path / "tools.py"
    tools.write_text(TOOLS)
    replies = {f"[{k}]": reply(f"answer {k}") for k in ("a", "b", "c", "int", "str", "new")}
    (tmp_path / "replies.json").write_text(json.dumps(replies))
    return tools, f"replay:{tmp_path / 'replies.json'}"


def strict(line: str) -> Any:
    def reject(constant: str) -> Any:
        raise ValueError(f"{constant} in an output line")

    return json.loads(line, parse_constant=reject)


def records(out: Path) -> list[dict[str, Any]]:
    return [strict(line) for line in out.read_bytes().decode("utf-8").splitlines()]


HOSTILE_LINES: list[tuple[bytes, str | None]] = [
    # (the input line, the error its record must carry; None: a valid item, answered)
    (b'{"id": "a", "question": "[a] ?", "keep": "\\udcff lone"}', None),
    (b"", "blank"),
    (b"   \t", "blank"),
    (b'{"id": "x1", "question": "caf\xe9 [b] ?"}', "not UTF-8 (invalid continuation byte"),
    (b"{not json", "not JSON (Expecting property name"),
    (b'{"id": "x2", "question": "[b] ?", "n": NaN}', "not JSON (NaN is not a JSON value"),
    (b'{"id": "x3", "question": "[b] ?", "n": 1e999}', "not JSON (1e999 is out of range"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'["id", "question"]', "an item must be a JSON object, not list"),
    (b'"just a string"', "an item must be a JSON object, not str"),
    (b'{"question": "[b] ?"}', "no 'id'"),
    (b'{"id": null, "question": "[b] ?"}', "'id' is null; give every item an id"),
    (b'{"id": 1, "question": "[int] ?"}', None),
    (b'{"id": "1", "question": "[str] ?"}', None),
    (b'{"id": 1, "question": "[c] ?"}', "id 1 is {path} line 13's already"),
    (b'{"id": "b", "question": "[b] ?"}', None),
]


@pytest.mark.parametrize("source", ["file", "stdin"])
@pytest.mark.parametrize("with_store", [False, True], ids=["no-store", "store"])
def test_no_input_line_stops_the_batch_and_none_is_done_twice(setup, tmp_path, with_store, source):
    tools, model = setup
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(b"\n".join(line for line, _ in HOSTILE_LINES) + b"\n")
    out = tmp_path / "out.jsonl"
    path = str(inp) if source == "file" else "-"
    argv: tuple[Any, ...] = (path, "--tools", tools, "--model", model, "--out", out)
    if with_store:
        argv += ("--store", f"sqlite:///{tmp_path / 'runs.db'}", "--run-id", "B")
    feed = inp.read_bytes() if source == "stdin" else None
    code, stdout, stderr = plait_batch(argv, feed)
    assert code == 1, stderr
    assert "Traceback" not in stderr

    got = records(out)
    done = {json.dumps(r["id"]): r for r in got if r["status"] == "done"}
    assert {k: r["answer"] for k, r in done.items()} == {
        '"a"': "answer a",
        "1": "answer int",
        '"1"': "answer str",
        '"b"': "answer b",
    }
    assert done['"a"']["keep"] == "\udcff lone"  # written as the escape it came in as
    failed = {r["bad_line"]: r for r in got if r["status"] == "failed"}
    expected = {
        n: error.format(path=path)
        for n, (_, error) in enumerate(HOSTILE_LINES, 1)
        if error not in (None, "blank")
    }
    assert sorted(failed) == sorted(expected)  # every bad line once; blank lines: nothing
    for n, error in expected.items():
        assert failed[n]["error"].startswith(f"{path} line {n}: {error}"), failed[n]
    assert failed[15]["id"] == 1 and failed[12]["id"] is None
    summary = json.loads(stdout)
    assert (summary["done"], summary["failed"]) == (4, len(expected))

    # Run again on the same output: nothing is answered, written or reported again.
    before = out.read_bytes()
    code, stdout, stderr = plait_batch(argv, feed)
    assert code == 0, stderr
    assert out.read_bytes() == before
    assert (json.loads(stdout)["done"], json.loads(stdout)["failed"]) == (0, 0)
    assert f"has {4 + len(expected)} items already" in stderr


def plait_batch(argv: tuple[Any, ...], feed: bytes | None) -> tuple[int, str, str]:
    """`plait batch ARGV`, with `feed` as its stdin's bytes when given."""
    if feed is None:
        return plait("batch", *argv)
    proc = subprocess.run(
        [sys.executable, "-m", "plait.cli", "batch", *map(str, argv)],
        input=feed,
        capture_output=True,
        env=env(),
        timeout=LIMIT,
    )
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def test_a_stored_batch_item_is_tied_to_its_question(setup, tmp_path):
    tools, model = setup
    store = f"sqlite:///{tmp_path / 'runs.db'}"

    def batch(lines: list[dict[str, Any]], out: str) -> tuple[int, list[dict[str, Any]]]:
        inp = tmp_path / f"{out}.in.jsonl"
        inp.write_text("".join(json.dumps(x) + "\n" for x in lines))
        argv = ("--tools", tools, "--model", model, "--store", store, "--run-id", "B")
        code, _, err = plait("batch", inp, *argv, "--out", tmp_path / out)
        assert "Traceback" not in err
        return code, records(tmp_path / out)

    code, got = batch([{"id": 1, "question": "[int] ?"}, {"id": "1", "question": "[str] ?"}], "o1")
    assert code == 0
    assert {json.dumps(r["id"]): r["answer"] for r in got} == {
        "1": "answer int",
        '"1"': "answer str",
    }

    # The same run id, another question for id 1: an error naming the item, not the old answer.
    code, got = batch([{"id": 1, "question": "[new] ?"}], "o2")
    assert code == 1
    (only,) = got
    assert (only["status"], only["answer"]) == ("failed", None)
    assert only["error"].endswith(
        "line 1: run B:1 in the store was asked another question; "
        "give the batch another run id, or the item another id"
    )

    # The same question again: the stored answer, read back.
    code, got = batch([{"id": "1", "question": "[str] ?"}], "o3")
    assert code == 0 and [r["answer"] for r in got] == ["answer str"]


def test_a_batch_input_that_does_not_exist_is_one_line_exit_2(setup, tmp_path):
    tools, model = setup
    code, _, err = plait("batch", tmp_path / "nope.jsonl", "--tools", tools, "--model", model,
                         "--out", tmp_path / "out.jsonl")  # fmt: skip
    assert code == 2
    assert "nope.jsonl" in one_line(err)
    assert not (tmp_path / "out.jsonl").exists()


def test_an_items_own_bad_line_field_is_not_a_resume_marker(setup, tmp_path):
    """An item passing through a field named `bad_line` is still that item's result: run
    again, the batch skips the item (not the input line its field names) and runs the rest."""
    tools, model = setup
    inp = tmp_path / "in.jsonl"
    out = tmp_path / "out.jsonl"
    a = {"id": "a", "question": "[a] ?", "bad_line": 2}
    inp.write_text(json.dumps(a) + "\n")
    unreachable = ("--model", "openai:x", "--base-url", "http://127.0.0.1:9/v1")
    code, _, err = plait("batch", inp, "--tools", tools, *unreachable, "--out", out)
    assert code == 1, err
    [first] = records(out)
    assert (first["id"], first["status"], first["bad_line"]) == ("a", "failed", 2)

    inp.write_text(json.dumps(a) + "\n" + json.dumps({"id": "b", "question": "[b] ?"}) + "\n")
    code, stdout, err = plait("batch", inp, "--tools", tools, "--model", model, "--out", out)
    assert code == 0, err
    got = records(out)
    assert [(r["id"], r["status"]) for r in got] == [("a", "failed"), ("b", "done")]
    assert got[1]["answer"] == "answer b"
    assert (json.loads(stdout)["done"], json.loads(stdout)["failed"]) == (1, 0)
