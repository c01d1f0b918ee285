"""The package's face and its layers: every public name is importable from `plait`, and a
layer imports only what lies under it (the import-linter contracts check the code; these
check what actually loads at run time)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import plait


def loaded_after(statement: str) -> set[str]:
    """The plait modules a fresh interpreter has loaded after running `statement`."""
    report = "import sys, json; print(json.dumps([m for m in sys.modules if m[:5] == 'plait']))"
    code = f"{statement}\n{report}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


@pytest.mark.parametrize("name", plait.__all__)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(plait, name) is not None
    assert name in dir(plait)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        plait.nothing_here  # noqa: B018


def test_the_public_names_are_the_defining_modules_own() -> None:
    from plait.core.scheduler import Scheduler
    from plait.core.task import Task
    from plait.runs.result import RunResult

    assert plait.Scheduler is Scheduler and plait.Task is Task and plait.RunResult is RunResult


def test_importing_the_core_loads_nothing_above_it() -> None:
    loaded = loaded_after("import plait.core.graph, plait.core.scheduler")
    outside = {m for m in loaded if not m.startswith("plait.core") and m != "plait.errors"}
    assert outside == {"plait"}, outside  # the package face only, which imports nothing eagerly


def test_importing_plait_loads_no_layer_until_a_name_is_used() -> None:
    assert loaded_after("import plait") == {"plait"}
    used = loaded_after("import plait; plait.Task")
    assert "plait.api" not in used and "plait.stores" not in used and "plait.llm" not in used


def test_the_command_line_runs_as_a_module() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "plait.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "exec" in out.stdout and "run" in out.stdout


def test_the_core_stays_readable_in_one_sitting():
    # Issue 15's contract: the core (task, graph, scheduler, events, tools, ...) is at most
    # 1,500 lines, so a newcomer can read all of it; what grows goes to an edge or a layer.
    core = Path(plait.__file__).parent / "core"
    lines = sum(len(p.read_text().splitlines()) for p in core.glob("*.py"))
    assert lines <= 1500, f"src/plait/core is {lines} lines"
