"""Which call a tool is serving: `current_task()` inside a tool, set by the scheduler.

A tool reads `current_task().idempotency_key` to make a side effect safe to repeat: a task
that was running when a process died runs again on resume (at-least-once), under the same key.
Backends that call a tool in another process set it there with `serving`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TaskContext:
    """Which call a tool is serving; `idempotency_key` is stable across resumes."""

    run_id: str
    task_id: int
    attempt: int  # 1 for the first try in this process

    @property
    def idempotency_key(self) -> str:
        return f"{self.run_id}:{self.task_id}"


_current: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "plait_task", default=None
)


def entered(context: TaskContext) -> None:
    """Make `current_task()` return `context` in this asyncio task from now on (the scheduler
    calls it in each task's own coroutine, so no reset is needed)."""
    _current.set(context)


def current_task() -> TaskContext | None:
    """The task the calling tool runs for, or None outside a tool call."""
    return _current.get()


@contextmanager
def serving(context: TaskContext | None) -> Iterator[None]:
    """Make `current_task()` return `context` here: for backends that call a tool in
    another process."""
    token = _current.set(context)
    try:
        yield
    finally:
        _current.reset(token)
