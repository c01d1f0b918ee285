"""The `plait` CLI as a real process, for the hostile tests: signals, exits and output are
only real in a process of its own (an in-process `main()` shares the test's signal handlers
and its interpreter's exit)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[2] / "src"
LIMIT = 120.0  # seconds a process may take before the test gives up on it


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), **extra}


def spawn(*argv: Any, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`plait ARGV...` started, its stdout and stderr piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "plait.cli", *map(str, argv)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(**(extra_env or {})),
    )


def plait(*argv: Any, extra_env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """`plait ARGV...` run to its end: (exit code, stdout, stderr)."""
    proc = spawn(*argv, extra_env=extra_env)
    out, err = proc.communicate(timeout=LIMIT)
    return proc.returncode, out, err


def one_line(err: str) -> str:
    """The one line a failing command may print on stderr, with no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def one_object(out: str) -> dict[str, Any]:
    """The one JSON object `--json` prints on stdout; strict (no NaN)."""
    data = json.loads(out, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    assert isinstance(data, dict)
    return data


def wait_for(predicate: Callable[[], bool], what: str, limit: float = LIMIT) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def tasks(result: dict[str, Any]) -> dict[int, tuple[str, Any]]:
    """{task id: (status, result or error)} of a --json result."""
    return {
        t["id"]: (t["status"], t["result"] if t["status"] == "done" else t["error"])
        for t in result["tasks"]
    }
