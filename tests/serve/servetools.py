"""Tools for the server tests: quick arithmetic, a failure, a gate the test opens, and an echo
whose name is longer than the live page's graph node is wide.

`gate(name)` logs `"{pid} {run_id} {task_id}"` to $PLAIT_SERVE_LOG (one O_APPEND write), then
waits until the file named by $PLAIT_SERVE_GATE exists: the test decides when gated tasks may
finish, so "killed while these were running" is a handshake, not a sleep.
"""

from __future__ import annotations

import asyncio
import os

import plait

LOG_ENV = "PLAIT_SERVE_LOG"
GATE_ENV = "PLAIT_SERVE_GATE"


def _log() -> None:
    path = os.environ.get(LOG_ENV)
    ctx = plait.current_task()
    if not path or ctx is None:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{os.getpid()} {ctx.run_id} {ctx.task_id}\n".encode())
    finally:
        os.close(fd)


@plait.tool
async def add(a: int, b: int) -> int:
    """a + b."""
    _log()
    return a + b


@plait.tool
async def echo(text: str) -> str:
    """The text back."""
    _log()
    return text


@plait.tool
async def nap(seconds: float) -> float:
    """Sleep, then return the seconds slept."""
    _log()
    await asyncio.sleep(seconds)
    return seconds


@plait.tool
async def boom(message: str) -> str:
    """Always fails with `message`."""
    _log()
    raise RuntimeError(message)


@plait.tool
async def gate(name: str) -> str:
    """Wait until the gate file exists, then return `name`."""
    _log()
    path = os.environ.get(GATE_ENV, "")
    while not (path and os.path.exists(path)):
        await asyncio.sleep(0.02)
    return name


@plait.tool
async def search_every_archive(text: str) -> str:
    """The text back (a tool whose name is longer than a graph node is wide)."""
    _log()
    return text
