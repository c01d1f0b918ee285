"""Hostile tools, run by a real `plait exec`: tools that raise what no tool should (SystemExit,
KeyboardInterrupt, GeneratorExit, their own CancelledError, a BaseException of their own, an
exception whose message cannot be read) and tools that return what cannot be kept (NaN, a
huge value, an object, a lone surrogate, a list nested past any limit).

The contract for each: the tool's task fails (or is done) by itself with a message naming
why, its sibling task is done, the process exits 1 (0 when everything is done) with no
traceback, and the store holds exactly what the output says.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from plait import open_store

from .plaitproc import one_object, plait, tasks

RAISERS = {
    "system_exit_0": ("SystemExit(0)", "SystemExit: 0"),
    "system_exit_3": ("SystemExit(3)", "SystemExit: 3"),
    "keyboard_interrupt": ("KeyboardInterrupt()", "KeyboardInterrupt"),
    "generator_exit": ("GeneratorExit()", "GeneratorExit"),
    "cancelled": ("asyncio.CancelledError()", "CancelledError"),
    "own_base": ("Own('mine')", "Own: mine"),
    "unreadable": ("Unreadable()", "Unreadable: (its message cannot be shown)"),
}


def tools_source() -> str:
    lines = [
        "import asyncio, sys",
        "import plait",
        "class Own(BaseException): pass",
        "class Unreadable(Exception):",
        "    def __str__(self): raise RuntimeError('no message for you')",
        "@plait.tool",
        "async def sibling() -> str:",
        "    return 'fine'",
        "@plait.tool(pure=True)",
        "def pure_exit(n: int) -> str:",
        "    sys.exit(4)",
    ]
    for name, (raised, _) in RAISERS.items():
        lines += [
            "@plait.tool",
            f"def sync_{name}() -> str:",
            f"    raise {raised}",
            "@plait.tool",
            f"async def async_{name}() -> str:",
            f"    raise {raised}",
        ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def raising_tools(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tools") / "raising.py"
    path.write_text(tools_source())
    return path


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("name", list(RAISERS))
def test_a_tool_raising_anything_fails_its_task_and_nothing_else(
    raising_tools, tmp_path, kind, name
):
    plan = tmp_path / "p.plan"
    plan.write_text(f"1. {kind}_{name}()\n2. sibling()\n")
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    code, out, err = plait("exec", plan, "--tools", raising_tools, "--store", url,
                           "--run-id", "R", "--json")  # fmt: skip
    message = RAISERS[name][1]
    assert code == 1, err
    assert err == ""
    result = one_object(out)
    assert (result["status"], result["error"]) == (
        "failed",
        f"task 1 ({kind}_{name}) failed: {message}",
    )
    assert tasks(result) == {1: ("failed", message), 2: ("done", "fine")}
    store = open_store(url)
    try:
        assert store.get("R").status == "failed"
        settles = [json.loads(r.data) for r in store.records("R") if r.kind == "settle"]
        assert {s["id"]: s["status"] for s in settles} == {1: "failed", 2: "done"}
    finally:
        store.close()


def test_a_pure_tool_calling_sys_exit_fails_every_caller(raising_tools, tmp_path):
    plan = tmp_path / "p.plan"
    plan.write_text("1. pure_exit(1)\n2. pure_exit(1)\n3. sibling()\n")
    code, out, err = plait("exec", plan, "--tools", raising_tools, "--json")
    assert code == 1 and err == ""
    assert tasks(one_object(out)) == {
        1: ("failed", "SystemExit: 4"),
        2: ("failed", "SystemExit: 4"),
        3: ("done", "fine"),
    }


def test_a_tool_raising_system_exit_says_so_in_one_line_without_json(raising_tools, tmp_path):
    plan = tmp_path / "p.plan"
    plan.write_text("1. sync_system_exit_0()\n")
    code, out, err = plait("exec", plan, "--tools", raising_tools)
    assert code == 1
    assert out == ""
    assert "Traceback" not in err
    assert (
        err.strip().splitlines()[-1] == "error: task 1 (sync_system_exit_0) failed: SystemExit: 0"
    )


RETURNERS = """
import plait

@plait.tool
def nan() -> float:
    return float("nan")

@plait.tool
def huge() -> str:
    return "x" * (8 * 2**20)

@plait.tool
def an_object() -> object:
    return object()

@plait.tool
def surrogate() -> str:
    return "a\\udcffb"

@plait.tool
def nested() -> list:
    value = []
    for _ in range(5000):
        value = [value]
    return value

@plait.tool
async def sibling() -> str:
    return "fine"
"""


@pytest.fixture(scope="module")
def returning_tools(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tools") / "returning.py"
    path.write_text(RETURNERS)
    return path


def stored_results(url: str, run_id: str) -> dict[int, tuple[str, object]]:
    store = open_store(url, readonly=True)
    try:
        settles = [json.loads(r.data) for r in store.records(run_id) if r.kind == "settle"]
    finally:
        store.close()
    return {s["id"]: (s["status"], s.get("result", s.get("error"))) for s in settles}


@pytest.mark.parametrize("tool", ["an_object", "surrogate", "nested"])
def test_a_result_that_cannot_be_stored_fails_its_task_by_name(returning_tools, tmp_path, tool):
    plan = tmp_path / "p.plan"
    plan.write_text(f"1. {tool}()\n2. sibling()\n")
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    code, out, err = plait("exec", plan, "--tools", returning_tools, "--store", url,
                           "--run-id", "R", "--json")  # fmt: skip
    assert code == 1 and err == ""
    got = tasks(one_object(out))
    assert got[2] == ("done", "fine")
    assert got[1][0] == "failed"
    assert got[1][1].startswith("result cannot be stored: ")
    assert "\n" not in got[1][1]
    stored = stored_results(url, "R")
    assert stored[2] == ("done", "fine")
    assert stored[1][0] == "failed"


def test_nan_and_huge_results_are_kept_whole(returning_tools, tmp_path):
    plan = tmp_path / "p.plan"
    plan.write_text("1. nan()\n2. huge()\n")
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    code, _, err = plait("exec", plan, "--tools", returning_tools, "--store", url,
                         "--run-id", "R")  # fmt: skip
    assert code == 0, err
    store = open_store(url, readonly=True)
    try:
        settles = {
            json.loads(r.data)["id"]: r.data for r in store.records("R") if r.kind == "settle"
        }
    finally:
        store.close()
    nan = json.loads(settles[1])["result"]  # the store's JSON keeps NaN as NaN
    assert isinstance(nan, float) and math.isnan(nan)
    assert json.loads(settles[2])["result"] == "x" * (8 * 2**20)
