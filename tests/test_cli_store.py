"""The CLI contracts of durable runs: --store and --run-id on exec and run, `plait resume`,
`plait runs`, `plait show`, one-line errors, and the lease between two processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plait import open_store
from test_cli import FINISH, PLAN, QUESTION, assert_one_line, one_json_object, plait_main, write

SLOW_TOOLS = """
import asyncio
import plait

@plait.tool
async def nap(seconds: float, label: str) -> str:
    await asyncio.sleep(seconds)  # async, so Ctrl-C cancels it at once
    return label
"""
SLOW_PLAN = '1. nap(0.05, "a")\n2. nap(30, "slow")\n3. nap(0.05, "$1 then $2")\n'


def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'runs.db'}"


def plait_proc(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "plait.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")},
    )


def wait_for(predicate, what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def test_exec_records_the_run_and_runs_lists_it(capsys, tmp_path, example_plan, example_tools):
    store = db(tmp_path)
    code, out, _ = plait_main(
        capsys, "exec", example_plan, "--tools", example_tools, "--store", store, "--run-id", "L1"
    )
    assert code == 0
    assert out.strip() == "237.0"
    code, out, _ = plait_main(capsys, "runs", "--store", store)
    assert code == 0
    header, row = out.strip().splitlines()
    assert header.split()[:4] == ["ID", "STATUS", "AGE", "TASKS"]
    assert row.split()[:2] == ["L1", "done"]
    assert "5/5" in row.split()
    code, out, _ = plait_main(capsys, "runs", "--store", store, "--json")
    (summary,) = json.loads(out)  # one JSON array, like every other --json: one value
    assert (summary["id"], summary["status"], summary["tasks_done"], summary["tasks_total"]) == (
        "L1",
        "done",
        5,
        5,
    )


def test_exec_uses_the_default_store(capsys, tmp_path, example_plan, example_tools, monkeypatch):
    monkeypatch.setenv("PLAIT_STORE", db(tmp_path))
    code, _, _ = plait_main(capsys, "exec", example_plan, "--tools", example_tools, "--run-id", "d")
    assert code == 0
    info = open_store(db(tmp_path)).get("d")
    assert info is not None and info.state == "done"


def test_show_prints_tasks_and_timeline_and_exports(capsys, tmp_path, example_plan, example_tools):
    store = db(tmp_path)
    argv = ("--tools", example_tools, "--store", store, "--run-id", "S", "--json")
    code, out, _ = plait_main(capsys, "exec", example_plan, *argv)
    ran = one_json_object(out)
    code, out, _ = plait_main(capsys, "show", "S", "--store", store)
    assert code == 0
    assert "run S: done" in out
    assert "answer: 237.0" in out
    tasks = out.split("\ntasks\n")[1].split("\ntimeline")[0]
    assert [line.split()[:3] for line in tasks.strip().splitlines()] == [
        ["1.", "search", "done"],
        ["2.", "search", "done"],
        ["3.", "extract_number", "done"],
        ["4.", "extract_number", "done"],
        ["5.", "calculate", "done"],
    ]
    timeline = out.split("timeline (seconds since created)\n")[1].splitlines()
    marks = [line.split()[1] for line in timeline]
    assert marks[0] == "»" and marks[-1] == "="
    assert marks.count("+") == 5 and marks.count("▶") == 5 and marks.count("✓") == 5

    trace = tmp_path / "show.json"
    code, out, _ = plait_main(capsys, "show", "S", "--store", store, "--json", "--trace", trace)
    shown = one_json_object(out)
    for key in ("run_id", "status", "answer"):
        assert shown[key] == ran[key]
    assert [(t["id"], t["args"], t["result"]) for t in shown["tasks"]] == [
        (t["id"], t["args"], t["result"]) for t in ran["tasks"]
    ]
    names = {e["name"] for e in json.loads(trace.read_text())["traceEvents"] if e.get("ph") == "X"}
    assert {"1. search", "5. calculate"} <= names


def test_resume_of_a_finished_run_prints_its_result(capsys, tmp_path, example_plan, example_tools):
    store = db(tmp_path)
    argv = ("--tools", example_tools, "--store", store)
    plait_main(capsys, "exec", example_plan, *argv, "--run-id", "F")
    code, out, _ = plait_main(capsys, "resume", "F", *argv, "--json")
    assert code == 0
    data = one_json_object(out)
    assert (data["status"], data["answer"]) == ("done", "237.0")
    assert len(data["tasks"]) == 5


def test_run_records_replies_and_resume_reuses_them(capsys, tmp_path, replies, example_tools):
    store = db(tmp_path)
    argv = ("--tools", example_tools, "--store", store)
    model = replies(PLAN, FINISH)
    code, out, _ = plait_main(
        capsys, "run", QUESTION, *argv, "--model", model, "--run-id", "Q", "--json"
    )
    assert code == 0
    records = list(open_store(store).records("Q"))
    texts = [json.loads(r.data)["text"] for r in records if r.kind == "llm"]
    assert texts == [PLAN.removesuffix("<END_OF_PLAN>"), FINISH] or texts[1] == FINISH
    code, out, _ = plait_main(capsys, "show", "Q", "--store", store)
    assert f"question: {QUESTION}" in out
    assert "model: replay:" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["runs", "--store", "nosuch://x"], "unknown store URL 'nosuch://x'"),
        (["show", "nope", "--store", "{db}"], "no run nope in"),
        (["resume", "nope", "--tools", "{tools}", "--store", "{db}"], "no run nope in"),
        (["runs", "--store", "sqlite://"], "bad sqlite URL"),
    ],
)
def test_store_errors_exit_2_with_one_line(capsys, tmp_path, example_tools, argv, message):
    argv = [a.format(db=db(tmp_path), tools=example_tools) for a in argv]
    code, out, err = plait_main(capsys, *argv)
    assert code == 2
    assert out == ""
    assert message in assert_one_line(err)


def test_exec_with_a_taken_run_id_exits_2(capsys, tmp_path, example_plan, example_tools):
    store = db(tmp_path)
    argv = ("--tools", example_tools, "--store", store, "--run-id", "T")
    assert plait_main(capsys, "exec", example_plan, *argv)[0] == 0
    code, _, err = plait_main(capsys, "exec", example_plan, *argv)
    assert code == 2
    line = assert_one_line(err)
    # A finished run is not to be finished again: it is shown.
    assert "run T already exists and is finished (done)" in line
    assert f"plait show T --store {store}" in line
    assert "resume" not in line


def test_run_with_the_run_id_of_an_unfinished_run_says_resume(capsys, tmp_path, example_tools):
    store = db(tmp_path)
    tools = write(tmp_path / "slow.py", SLOW_TOOLS)
    plan = write(tmp_path / "p.plan", '1. nap(0, "x")\n')
    argv = ("--tools", tools, "--store", store, "--run-id", "U")
    assert plait_main(capsys, "exec", plan, *argv)[0] == 0
    opened = open_store(store)
    opened.claim("U", "test", 15.0)
    opened.append("U", "test", [], _unfinished("cancelled"))
    code, _, err = plait_main(capsys, "exec", plan, *argv)
    assert code == 2
    line = assert_one_line(err)
    assert "run U already exists (cancelled)" in line
    assert f"plait resume U --tools {tools} --store {store}" in line


def test_resume_without_a_tool_the_run_used_exits_2(capsys, tmp_path, example_tools):
    store = db(tmp_path)
    tools = write(tmp_path / "slow.py", SLOW_TOOLS)
    plan = write(tmp_path / "p.plan", '1. nap(0, "x")\n')
    assert (
        plait_main(capsys, "exec", plan, "--tools", tools, "--store", store, "--run-id", "R")[0]
        == 0
    )
    # A finished run is only read back; an unfinished one needs its tools.
    opened = open_store(store)
    opened.claim("R", "test", 15.0)
    opened.append("R", "test", [], _unfinished())
    code, _, err = plait_main(capsys, "resume", "R", "--tools", example_tools, "--store", store)
    assert code == 2
    assert "nap" in assert_one_line(err)


def _unfinished(status: str = "failed"):
    from plait.stores import Progress

    return Progress(1, 0, status, release=True)


def test_interrupted_exec_resumes_and_a_second_resumer_is_told_it_is_held(tmp_path):
    store = db(tmp_path)
    tools = write(tmp_path / "slow.py", SLOW_TOOLS)
    plan = write(tmp_path / "slow.plan", SLOW_PLAN)
    argv = ("--tools", str(tools), "--store", store)
    first = plait_proc("exec", str(plan), *argv, "--run-id", "K", "--json")
    opened = open_store(store)

    def settled(task_id: int) -> bool:
        return any(
            r.kind == "settle" and json.loads(r.data)["id"] == task_id for r in opened.records("K")
        )

    wait_for(lambda: settled(1), "task 1 to be recorded")
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=60)
    assert first.returncode == 130
    # The hint repeats what was given, quoted for a shell, so it can be run as it is.
    assert f"finish it with: plait resume K --tools {tools} --store {store}" in err
    assert one_json_object(out)["status"] == "cancelled"
    assert opened.get("K").state == "cancelled"

    # One resumer holds the run; another is turned away while it does.
    second = plait_proc("resume", "K", *argv, "--json")
    wait_for(lambda: (opened.get("K").holder or "").split(":")[1:2] == [str(second.pid)], "lease")
    third = plait_proc("resume", "K", *argv)
    _, err3 = third.communicate(timeout=60)
    assert third.returncode == 2
    assert "run K is held by" in assert_one_line(err3)
    second.send_signal(signal.SIGINT)
    second.communicate(timeout=60)
    assert second.returncode == 130
