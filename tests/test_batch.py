"""Batches (plait.batch, `plait batch`): shared work done once, failures isolated, bounded
reading, output lines as items finish, and a killed batch finished by running it again."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import plait
from plait.batch import BatchStats, abatch
from test_cli import assert_one_line, plait_main

ENTITIES = ["Eiffel", "Liberty", "Pisa", "Ben", "Khalifa"]


def comparisons(n: int) -> tuple[list[dict], dict[str, list[str]]]:
    """n questions comparing two of ENTITIES, and the replay model's replies for each."""
    items, replies = [], {}
    for i in range(n):
        a, b = ENTITIES[i % len(ENTITIES)], ENTITIES[(i * 2 + 1) % len(ENTITIES)]
        items.append({"id": f"q{i}", "question": f"[q{i}] Is {a} taller than {b}?", "row": i})
        replies[f"[q{i}]"] = [
            f'1. height("{a}")\n2. height("{b}")\n3. note("{a}")\njoin()\n',
            f"Action: Finish({a} or {b})",
        ]
    return items, replies


def tools(calls: Counter[str]) -> list[plait.Tool]:
    @plait.tool(pure=True)
    async def height(name: str) -> int:
        calls["height", name] += 1
        await asyncio.sleep(0.01)
        return len(name) * 10

    @plait.tool
    async def note(text: str) -> str:  # impure: never merged
        calls["note", text] += 1
        return text

    return [height, note]


async def test_pure_calls_run_once_across_the_batch_and_impure_ones_every_time(tmp_path):
    items, replies = comparisons(20)
    calls: Counter[str] = Counter()
    path = tmp_path / "replies.json"
    path.write_text(json.dumps(replies))
    stats = BatchStats()
    results = [
        r
        async for r in abatch(
            items, tools=tools(calls), model=f"replay:{path}", concurrency=4, stats=stats
        )
    ]
    assert sorted(r.id for r in results) == sorted(i["id"] for i in items)
    assert all(r.status == "done" for r in results)
    assert {r.id: r.fields for r in results} == {i["id"]: {"row": i["row"]} for i in items}
    heights = {k: v for k, v in calls.items() if k[0] == "height"}
    assert heights == {("height", e): 1 for e in ENTITIES}  # 40 requested, 5 distinct
    assert sum(v for k, v in calls.items() if k[0] == "note") == 20
    assert (stats.tool_calls_requested, stats.tool_calls_made) == (60, 25)
    assert (stats.done, stats.failed) == (20, 0)


async def test_a_batch_opens_one_backend_for_all_its_runs(tmp_path, monkeypatch):
    import plait.runs.session as session

    opened: list[object] = []

    def counted(name: str) -> object:
        backend = open_backend(name)
        opened.append(backend)
        return backend

    open_backend = session.open_backend
    monkeypatch.setattr(session, "open_backend", counted)
    items, replies = comparisons(6)
    path = tmp_path / "replies.json"
    path.write_text(json.dumps(replies))
    calls: Counter[str] = Counter()
    results = [
        r async for r in abatch(items, tools=tools(calls), model=f"replay:{path}", concurrency=3)
    ]
    assert [r.status for r in results] == ["done"] * 6
    assert len(opened) == 1  # one local thread pool for the batch, not one per item


async def test_identical_prompts_are_sent_to_the_model_once(tmp_path):
    items = [{"id": n, "question": "[same] Is Pisa taller than Ben?"} for n in range(6)]
    path = tmp_path / "replies.json"
    path.write_text(json.dumps({"[same]": ['1. height("Pisa")\njoin()\n', "Action: Finish(no)"]}))
    stats = BatchStats()
    results = [
        r async for r in abatch(items, tools=tools(Counter()), model=f"replay:{path}", stats=stats)
    ]
    assert [r.answer for r in results] == ["no"] * 6
    assert (stats.llm_calls_requested, stats.llm_calls_made) == (12, 2)


async def test_a_failing_query_never_stops_the_batch(tmp_path):
    items, replies = comparisons(6)
    replies["[q2]"] = ['1. missing_tool("x")\njoin()\n'] * 3  # invalid every time
    del replies["[q4]"]  # the model has nothing for it
    items.insert(3, {"id": "no-question"})
    items.insert(0, "not an object")
    path = tmp_path / "replies.json"
    path.write_text(json.dumps(replies))
    got = {
        r.id: r
        async for r in abatch(items, tools=tools(Counter()), model=f"replay:{path}", concurrency=2)
    }
    assert {k: r.status for k, r in got.items()} == {
        None: "failed", "q0": "done", "q1": "done", "q2": "failed", "no-question": "failed",
        "q3": "done", "q4": "failed", "q5": "done",
    }  # fmt: skip
    assert "unknown tool 'missing_tool'" in got["q2"].error
    assert "no key of the replay file matches" in got["q4"].error
    assert got["no-question"].error == "item 5: 'question' must be a non-empty string"
    assert got[None].error == "item 1: an item must be a JSON object, not str"


async def test_items_are_read_lazily(tmp_path):
    path = tmp_path / "replies.json"
    path.write_text(json.dumps({"[q": ['1. height("Pisa")\njoin()\n', "Action: Finish(ok)"] * 99}))
    taken = 0

    def endless():
        nonlocal taken
        for n in itertools.count():
            taken += 1
            yield {"id": n, "question": f"[q{n}] ?"}

    seen = 0
    async for _ in abatch(endless(), tools=tools(Counter()), model=f"replay:{path}", concurrency=3):
        seen += 1
        if seen == 10:
            break
    # At most `concurrency` running and as many finished ones waiting to be read.
    assert taken <= seen + 2 * 3 + 1


# -- the CLI ---------------------------------------------------------------------------------

SLOW_TOOLS = """
import asyncio, os
import plait

@plait.tool(pure=True)
async def height(name: str) -> int:
    with open(os.environ["BATCH_LOG"], "a") as log:
        log.write(name + "\\n")
    await asyncio.sleep(0.2)
    return len(name) * 10

@plait.tool
async def note(text: str) -> str:
    return text
"""


def write_batch(tmp_path: Path, n: int) -> tuple[Path, str, Path]:
    items, replies = comparisons(n)
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(i) + "\n" for i in items))
    (tmp_path / "replies.json").write_text(json.dumps(replies))
    (tmp_path / "tools.py").write_text(SLOW_TOOLS)
    return inp, f"replay:{tmp_path / 'replies.json'}", tmp_path / "tools.py"


def test_batch_writes_a_line_per_item_and_a_summary(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("BATCH_LOG", str(tmp_path / "ran.log"))
    inp, model, tools_py = write_batch(tmp_path, 8)
    with inp.open("a") as f:
        f.write("{not json\n")
    out = tmp_path / "out.jsonl"
    argv = ("batch", inp, "--tools", tools_py, "--model", model, "--out", out)
    code, stdout, stderr = plait_main(capsys, *argv, "--concurrency", "3")
    assert code == 1  # one line was bad
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 9
    done = [x for x in lines if x["status"] == "done"]
    assert sorted(x["id"] for x in done) == [f"q{i}" for i in range(8)]
    assert all(set(x) == {"id", "status", "answer", "error", "usage", "row"} for x in done)
    (bad,) = [x for x in lines if x["status"] == "failed"]
    assert bad["error"].endswith("in.jsonl line 9: not JSON (Expecting property name enclosed "
                                 "in double quotes: line 1 column 2 (char 1))")  # fmt: skip
    summary = json.loads(stdout)
    assert (summary["done"], summary["failed"]) == (8, 1)
    assert summary["tool_calls"] == {"made": 8 + 5, "requested": 24}
    assert "8 done, 1 failed" in stderr


def test_bad_flags_and_files_exit_2(capsys, tmp_path):
    code, _, err = plait_main(
        capsys, "batch", tmp_path / "nope.jsonl", "--tools", "x.py", "--out", tmp_path / "o"
    )
    assert code == 2
    assert "tools" in assert_one_line(err) or "nope.jsonl" in err
    inp, model, tools_py = write_batch(tmp_path, 2)
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "q0"}\nnot a result\n{"id": "q1"}\n')
    code, _, err = plait_main(
        capsys, "batch", inp, "--tools", tools_py, "--model", model, "--out", out
    )
    assert code == 2
    assert "out.jsonl line 2 is not a result line" in assert_one_line(err)


@pytest.mark.parametrize("with_store", [False, True])
def test_a_killed_batch_finishes_when_run_again(tmp_path, with_store):
    log = tmp_path / "ran.log"
    inp, model, tools_py = write_batch(tmp_path, 30)
    out = tmp_path / "out.jsonl"
    argv = [sys.executable, "-m", "plait.cli", "batch", str(inp), "--tools", str(tools_py),
            "--model", model, "--out", str(out), "--concurrency", "2"]  # fmt: skip
    if with_store:
        argv += ["--store", f"sqlite:///{tmp_path / 'runs.db'}", "--run-id", "b1"]
    env = {**os.environ, "BATCH_LOG": str(log)}
    first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (out.exists() and out.read_text().count("\n") >= 4):
        assert time.monotonic() < deadline and first.poll() is None, "no results came"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    before = {json.loads(x)["id"] for x in out.read_text().splitlines() if x.endswith("}")}
    assert 4 <= len(before) < 30
    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    ids = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    assert sorted(ids) == sorted(f"q{i}" for i in range(30))  # each once, none lost
    assert f"has {len(before)} items already" in second.stderr


async def test_a_batch_run_again_reads_its_pure_calls_from_the_store(tmp_path):
    items, replies = comparisons(10)
    path = tmp_path / "replies.json"
    path.write_text(json.dumps(replies))
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    calls: Counter[str] = Counter()
    first = [
        r
        async for r in abatch(
            items, tools=tools(calls), model=f"replay:{path}", store=store, run_id="b"
        )
    ]
    assert all(r.status == "done" for r in first)
    assert sum(v for k, v in calls.items() if k[0] == "height") == len(ENTITIES)
    calls.clear()
    # The same batch id, new items (so new runs): the pure calls are already in the store.
    again = [{**i, "id": f"again-{i['id']}"} for i in items]
    second = [
        r
        async for r in abatch(
            again, tools=tools(calls), model=f"replay:{path}", store=store, run_id="b"
        )
    ]
    assert all(r.status == "done" for r in second)
    assert [k for k in calls if k[0] == "height"] == []
    assert sum(v for k, v in calls.items() if k[0] == "note") == 10  # impure: run again


# -- item identity: ids by their JSON form, tied to their question ----------------------------


def replay(tmp_path: Path, replies: dict[str, list[str]]) -> str:
    path = tmp_path / f"replies-{len(list(tmp_path.iterdir()))}.json"
    path.write_text(json.dumps(replies))
    return f"replay:{path}"


def answer(key: str, text: str) -> dict[str, list[str]]:
    return {key: ['1. note("x")\njoin()\n', f"Action: Finish({text})"]}


async def collect(items, tmp_path, model, **kwargs) -> list:
    return [r async for r in abatch(items, tools=tools(Counter()), model=model, **kwargs)]


async def test_ids_1_and_quoted_1_are_two_items_each_its_own_run(tmp_path):
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    model = replay(tmp_path, {**answer("[int]", "int one"), **answer("[str]", "string one")})
    items = [{"id": 1, "question": "[int] ?"}, {"id": "1", "question": "[str] ?"}]
    got = await collect(items, tmp_path, model, store=store, run_id="b")
    assert sorted((repr(r.id), r.status, r.answer) for r in got) == [
        ("'1'", "done", "string one"),
        ("1", "done", "int one"),
    ]
    opened = plait.open_store(store)
    try:
        assert {i.id: i.source for i in opened.runs()} == {"b:1": "[int] ?", 'b:"1"': "[str] ?"}
    finally:
        opened.close()


async def test_a_repeated_id_fails_the_later_item_by_its_position(tmp_path):
    model = replay(tmp_path, {**answer("[a]", "A"), **answer("[b]", "B")})
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    items = [
        {"id": 1, "question": "[a] ?"},
        {"id": "x", "question": "[a] ?"},
        {"id": 1, "question": "[b] ?"},
    ]
    got = await collect(items, tmp_path, model, store=store, run_id="b")
    by_line = {r.line: r for r in got}
    assert [r.answer for r in got if r.status == "done"].count("A") == 2
    (repeat,) = [r for r in got if r.status == "failed"]
    assert (repeat.id, repeat.line, repeat.error) == (1, 3, "item 3: id 1 is item 1's already")
    assert repeat.to_dict()["bad_line"] == 3
    assert None in by_line  # the good items carry no position


async def test_a_stored_item_asked_another_question_is_an_error_never_the_old_answer(tmp_path):
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    model = replay(tmp_path, {**answer("[old]", "old answer"), **answer("[new]", "new answer")})
    (first,) = await collect([{"id": 1, "question": "[old] ?"}], tmp_path, model, store=store,
                             run_id="b")  # fmt: skip
    assert (first.status, first.answer) == ("done", "old answer")
    (again,) = await collect([{"id": 1, "question": "[new] ?"}], tmp_path, model, store=store,
                             run_id="b")  # fmt: skip
    assert (again.status, again.answer) == ("failed", None)
    assert again.error == (
        "item 1: run b:1 in the store was asked another question; "
        "give the batch another run id, or the item another id"
    )
    (same,) = await collect([{"id": 1, "question": "[old] ?"}], tmp_path, model, store=store,
                            run_id="b")  # fmt: skip
    assert (same.status, same.answer) == ("done", "old answer")  # read back, not asked again


async def test_a_null_id_is_a_bad_item(tmp_path):
    model = replay(tmp_path, answer("[a]", "A"))
    (got,) = await collect([{"id": None, "question": "[a] ?"}], tmp_path, model)
    assert (got.status, got.line) == ("failed", 1)
    assert got.error == "item 1: 'id' is null; give every item an id"


def test_item_keys_are_one_to_one():
    from plait.batch import item_key

    ids = [1, "1", 1.0, "q7", "true", True, None, "null", [1], "[1]", {"a": 1}, "", '"1"']
    keys = [item_key(i) for i in ids]
    assert len(set(keys)) == len(ids)
    assert item_key("q7") == "q7" and item_key(1) == "1" and item_key("1") == '"1"'


# -- input lines: blank, not UTF-8, bad lines, restarts ----------------------------------------


def test_blank_lines_are_no_items_and_a_non_utf8_line_fails_alone(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("BATCH_LOG", str(tmp_path / "ran.log"))
    inp, model, tools_py = write_batch(tmp_path, 3)
    lines = inp.read_bytes().splitlines(keepends=True)
    inp.write_bytes(
        lines[0] + b"\n   \n" + b'{"id": "bad", "question": "caf\xe9"}\n' + lines[1] + b"\r\n"
        + lines[2]
    )  # fmt: skip
    out = tmp_path / "out.jsonl"
    argv = ("batch", inp, "--tools", tools_py, "--model", model, "--out", out)
    code, stdout, _ = plait_main(capsys, *argv)
    assert code == 1
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["id"] for r in records if r["status"] == "done") == ["q0", "q1", "q2"]
    (bad,) = [r for r in records if r["status"] == "failed"]
    assert bad["bad_line"] == 4 and bad["id"] is None
    assert bad["error"] == f"{inp} line 4: not UTF-8 (invalid continuation byte at byte 31)"
    assert (json.loads(stdout)["done"], json.loads(stdout)["failed"]) == (3, 1)

    # Run again: nothing is answered or written again, the bad line included.
    before = out.read_text()
    code, stdout, err = plait_main(capsys, *argv)
    assert out.read_text() == before
    assert (json.loads(stdout)["done"], json.loads(stdout)["failed"]) == (0, 0)
    assert "has 4 items already" in err


def test_skipping_goes_by_the_ids_json_form(capsys, tmp_path):
    tools_py = tmp_path / "tools.py"
    tools_py.write_text(SLOW_TOOLS)
    model = replay(tmp_path, {**answer("[int]", "int one"), **answer("[str]", "string one")})
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": 1, "question": "[int] ?"}\n{"id": "1", "question": "[str] ?"}\n')
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": 1, "status": "done", "answer": "int one"}\n')  # an earlier run's
    code, _, err = plait_main(capsys, "batch", inp, "--tools", tools_py, "--model", model,
                              "--out", out)  # fmt: skip
    assert code == 0, err
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(x["id"], x["answer"]) for x in lines] == [(1, "int one"), ("1", "string one")]
