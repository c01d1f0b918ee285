"""Hostile signals: SIGTERM and Ctrl-C while a tool blocks, as a real `plait` process.

A thread cannot be interrupted, so a sync tool blocked in `time.sleep(3600)` is the worst
case: the run must still end when its tasks have settled (its timeout), a SIGTERM or the
first Ctrl-C must stop it (exit 130, the resume hint, what settled kept in the store), and
the blocked thread is left to die with the process, with a warning. An async tool that never
yields blocks the loop itself: the first signal cannot be acted on, a second one must be.
Handshakes are marker files a tool writes when it starts; no timing is asserted.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
from pathlib import Path

import pytest

from plait import open_store

from .plaitproc import LIMIT, one_line, one_object, plait, spawn, tasks, wait_for

TOOLS = """
import asyncio, os, time
import plait

def _started(name):
    open(os.environ["MARKS"] + "/" + name, "w").close()

@plait.tool(timeout=0.5)
def stuck_with_timeout() -> str:
    time.sleep(3600)
    return "never"

@plait.tool
def stuck(after: str) -> str:
    _started("stuck")
    if os.environ.get("BLOCK") == "1":
        time.sleep(3600)
    return "unstuck " + after

@plait.tool
async def quick(label: str) -> str:
    return label

@plait.tool
async def spin(after: str) -> str:
    _started("spin")
    while os.environ.get("BLOCK") == "1":  # never yields: the loop itself is blocked
        pass
    return "spun " + after
"""
WARNING = "still running after its task ended; left to stop with the process"
WARNED = "plait: warning: 1 sync tool call"


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, str]:
    tools = tmp_path / "tools.py"
    tools.write_text(TOOLS)
    marks = tmp_path / "marks"
    marks.mkdir()
    return tools, marks, f"sqlite:///{tmp_path / 'runs.db'}"


def settled(url: str, run_id: str) -> dict[int, str]:
    store = open_store(url)
    try:
        return {
            json.loads(r.data)["id"]: json.loads(r.data)["status"]
            for r in store.records(run_id)
            if r.kind == "settle"
        }
    finally:
        store.close()


def test_a_sync_tool_blocked_past_its_timeout_does_not_keep_the_process_alive(setup, tmp_path):
    tools, marks, url = setup
    plan = tmp_path / "p.plan"
    plan.write_text('1. stuck_with_timeout()\n2. quick("b")\n3. quick("$1")\n')
    code, out, err = plait(
        "exec", plan, "--tools", tools, "--store", url, "--run-id", "T", "--json",
        extra_env={"MARKS": str(marks)},
    )  # fmt: skip
    assert code == 1
    result = one_object(out)
    assert result["status"] == "failed"
    assert tasks(result) == {
        1: ("failed", "timed out after 0.5s"),
        2: ("done", "b"),
        3: ("skipped", "input $1 failed"),
    }
    assert err.strip() == f"{WARNED} (stuck_with_timeout) {WARNING}"
    assert settled(url, "T") == {1: "failed", 2: "done", 3: "skipped"}  # nothing lost


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_one_signal_stops_a_run_blocked_in_a_sync_tool_and_the_run_resumes(setup, tmp_path, signum):
    tools, marks, url = setup
    plan = tmp_path / "p.plan"
    plan.write_text('1. quick("a")\n2. stuck($1)\n')
    argv = ("--tools", tools, "--store", url, "--json")
    proc = spawn("exec", plan, *argv, "--run-id", "S",
                 extra_env={"MARKS": str(marks), "BLOCK": "1"})  # fmt: skip
    wait_for((marks / "stuck").exists, "the stuck tool to start")
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=LIMIT)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("plait: interrupted; finish it with: plait resume S")
    assert lines[:-1] == [f"{WARNED} (stuck) {WARNING}"]
    result = one_object(out)
    assert result["status"] == "cancelled"
    assert tasks(result) == {1: ("done", "a"), 2: ("cancelled", "interrupted")}
    assert settled(url, "S") == {1: "done"}  # an interrupted task is not settled: it reruns

    # Nothing lost: the resume runs only what was interrupted.
    (marks / "stuck").unlink()
    code, out, err = plait("resume", "S", *argv, extra_env={"MARKS": str(marks)})
    assert code == 0, err
    assert tasks(one_object(out)) == {1: ("done", "a"), 2: ("done", "unstuck a")}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_second_signal_stops_an_async_tool_that_never_yields(setup, tmp_path, signum):
    tools, marks, url = setup
    plan = tmp_path / "p.plan"
    plan.write_text('1. quick("a")\n2. spin($1)\n')
    proc = spawn("exec", plan, "--tools", tools, "--store", url, "--run-id", "N", "--json",
                 extra_env={"MARKS": str(marks), "BLOCK": "1"})  # fmt: skip
    wait_for((marks / "spin").exists, "the spinning tool to start")
    sent = signal_until_it_ends(proc, signum)
    out, err = proc.communicate(timeout=LIMIT)
    assert proc.returncode == 130, err
    assert sent >= 2  # the first cannot act: the loop is blocked
    assert one_line(err).startswith("plait: interrupted; finish it with: plait resume N")
    result = one_object(out)
    # The signal's KeyboardInterrupt stopped the run; it is not the tool's failure.
    assert result["status"] == "cancelled"
    assert tasks(result)[1] == ("done", "a")
    assert tasks(result)[2][0] == "cancelled"
    assert settled(url, "N")[1] == "done"


def test_sigterm_while_the_tools_file_loads_exits_130(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    tools = tmp_path / "slow_import.py"
    tools.write_text(
        "import os, time\nopen(os.environ['MARKS'] + '/importing', 'w').close()\ntime.sleep(3600)\n"
    )
    plan = tmp_path / "p.plan"
    plan.write_text('1. quick("a")\n')
    proc = spawn("exec", plan, "--tools", tools, extra_env={"MARKS": str(marks)})
    wait_for((marks / "importing").exists, "the tools file to start loading")
    assert signal_until_it_ends(proc, signal.SIGTERM) >= 1
    out, err = proc.communicate(timeout=LIMIT)
    assert proc.returncode == 130
    assert err.strip() == "plait: interrupted"
    assert out == ""


def signal_until_it_ends(proc: subprocess.Popen[str], signum: int) -> int:
    """Send `signum` until the process ends (a loop blocked by a tool cannot act on the
    first: asyncio's handler only cancels the run; the second interrupts); how many sent."""
    sent = 0
    while proc.poll() is None and sent < 20:
        proc.send_signal(signum)
        sent += 1
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(2)
    if proc.poll() is None:
        proc.kill()
    return sent
