"""RunResult: what a run returns, built only from its events.

Its `to_dict()` is exactly the `--json` object the CLI prints; both are views of the event
stream recorded by `Recorder`, never a second bookkeeping path. Both are strict JSON: a float
that is not finite (NaN, Infinity: `1e999` in a plan, a tool's nan) is null.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pydantic_core import to_json, to_jsonable_python

from ..core import events as ev
from ..core.events import Usage
from ..core.graph import DONE, PENDING, RUNNING
from ..core.remote import json_fallback


@dataclass(slots=True)
class TaskRecord:
    id: int
    tool: str
    args: Any
    status: str = PENDING
    result: Any = None
    error: str | None = None
    started: float | None = None
    finished: float | None = None
    attempts: int = 0

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable_python(self._raw(), fallback=json_fallback, inf_nan_mode="null")  # type: ignore[no-any-return]

    def _raw(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tool": self.tool,
            "args": self.args,
            "status": self.status,
            "result": self.result,
            "error": self.error,
            "started": _round(self.started),
            "finished": _round(self.finished),
        }


@dataclass(slots=True)
class LLMCall:
    role: str
    model: str
    started: float
    finished: float | None = None
    usage: Usage = field(default_factory=Usage)
    error: str | None = None
    retries: int = 0
    first_token: float | None = None


@dataclass(slots=True)
class RunResult:
    """The outcome of a run: status is done, failed or cancelled."""

    run_id: str
    status: str
    answer: str | None
    tasks: list[TaskRecord]
    usage: Usage
    llm_calls: list[LLMCall] = field(default_factory=list)
    replans: int = 0
    error: str | None = None
    elapsed: float = 0.0
    # Set by the run's speed-ups after it (api.arun: agent/speedups.py, agent/samples.py),
    # shown in --json when set; the store does not keep them (`plait show` has none).
    plan_cache: dict[str, Any] | None = None
    attempts: list[dict[str, Any]] | None = None
    savings: dict[str, Any] | None = None
    doubt: str | None = None  # why the run's own plan argues against its answer (doubts.py)

    @property
    def ok(self) -> bool:
        return self.status == DONE

    def __repr__(self) -> str:
        # Short on purpose: asyncio reprs a finished task's result, and a run may hold 100k tasks.
        return (
            f"RunResult(run_id={self.run_id!r}, status={self.status!r}, "
            f"answer={self.answer!r}, tasks={len(self.tasks)}, error={self.error!r})"
        )

    def task(self, task_id: int) -> TaskRecord:
        for t in self.tasks:
            if t.id == task_id:
                return t
        raise KeyError(task_id)

    def to_dict(self) -> dict[str, Any]:
        """The `--json` object: plain JSON values (a result that is not is shown as its repr)."""
        return to_jsonable_python(self._raw(), fallback=json_fallback, inf_nan_mode="null")  # type: ignore[no-any-return]

    def to_json(self, indent: int | None = None) -> str:
        return to_json(
            self._raw(), fallback=json_fallback, indent=indent, inf_nan_mode="null"
        ).decode()

    def _raw(self) -> dict[str, Any]:
        raw = self._recorded()
        for key in ("plan_cache", "attempts", "savings", "doubt"):
            value = getattr(self, key)
            if value is not None:
                raw[key] = value
        return raw

    def _recorded(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "answer": self.answer,
            "error": self.error,
            "replans": self.replans,
            "elapsed": _round(self.elapsed),
            "tasks": [t._raw() for t in self.tasks],
            "usage": {
                "prompt_tokens": self.usage.prompt_tokens,
                "completion_tokens": self.usage.completion_tokens,
                "total_tokens": self.usage.prompt_tokens + self.usage.completion_tokens,
                "calls": [
                    {
                        "role": c.role,
                        "model": c.model,
                        "prompt_tokens": c.usage.prompt_tokens,
                        "completion_tokens": c.usage.completion_tokens,
                        "started": _round(c.started),
                        "first_token": _round(c.first_token),
                        "finished": _round(c.finished),
                        "retries": c.retries,
                        "error": c.error,
                    }
                    for c in self.llm_calls
                ],
            },
        }


def finite(value: Any) -> Any:
    """`value` with every float that is not finite (NaN, ±Infinity) in it replaced by None,
    so that it can be written as strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def _round(t: float | None) -> float | None:
    return None if t is None else round(t, 6)


class Recorder:
    """Listens to a run's events and keeps what RunResult needs."""

    def __init__(self) -> None:
        self.run_id = ""
        self.tasks: dict[int, TaskRecord] = {}
        self.calls: dict[int, LLMCall] = {}
        self.usage = Usage()
        self.answer: str | None = None
        self.replans = 0
        # By event type (also the `Emitter`'s route to this listener).
        self.handlers: dict[type, Any] = {
            ev.TaskAdded: self._task_added,
            ev.TaskStarted: self._task_started,
            ev.TaskRetrying: self._task_retrying,
            ev.TaskFinished: self._task_finished,
            ev.LLMStarted: self._llm_started,
            ev.LLMToken: self._llm_token,
            ev.LLMRetrying: self._llm_retrying,
            ev.LLMFinished: self._llm_finished,
            ev.RunStarted: self._run_started,
            ev.Replanning: self._replanning,
            ev.Answered: self._answered,
        }

    def __call__(self, e: ev.Event) -> None:
        handler = self.handlers.get(type(e))
        if handler is not None:
            handler(e)

    def _task_added(self, e: ev.TaskAdded) -> None:
        task = e.task
        self.tasks[task.id] = TaskRecord(task.id, task.tool, task.arguments())

    def _task_started(self, e: ev.TaskStarted) -> None:
        rec = self.tasks[e.id]
        rec.status, rec.started, rec.attempts = RUNNING, e.t, 1

    def _task_retrying(self, e: ev.TaskRetrying) -> None:
        self.tasks[e.id].attempts += 1

    def _task_finished(self, e: ev.TaskFinished) -> None:
        rec = self.tasks[e.id]
        rec.status, rec.result, rec.error, rec.finished = e.status, e.result, e.error, e.t

    def _llm_started(self, e: ev.LLMStarted) -> None:
        self.calls[e.call] = LLMCall(e.role, e.model, e.t)

    def _llm_token(self, e: ev.LLMToken) -> None:
        call = self.calls[e.call]
        if call.first_token is None:
            call.first_token = e.t

    def _llm_retrying(self, e: ev.LLMRetrying) -> None:
        self.calls[e.call].retries += 1

    def _llm_finished(self, e: ev.LLMFinished) -> None:
        call = self.calls[e.call]
        call.finished, call.usage, call.error = e.t, e.usage, e.error
        self.usage = self.usage + e.usage

    def _run_started(self, e: ev.RunStarted) -> None:
        self.run_id = e.run_id

    def _replanning(self, e: ev.Replanning) -> None:
        self.replans += 1

    def _answered(self, e: ev.Answered) -> None:
        self.answer = e.answer

    def result(self, status: str, error: str | None, elapsed: float) -> RunResult:
        return RunResult(
            run_id=self.run_id,
            status=status,
            answer=self.answer,
            tasks=sorted(self.tasks.values(), key=lambda r: r.id),
            usage=self.usage,
            llm_calls=list(self.calls.values()),
            replans=self.replans,
            error=error,
            elapsed=elapsed,
        )
