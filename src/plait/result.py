"""RunResult: what a run returns, built only from its events.

Its `to_dict()` is exactly the `--json` object the CLI prints; both are views of the event
stream recorded by `Recorder`, never a second bookkeeping path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic_core import to_jsonable_python

from . import events as ev
from .events import Usage


@dataclass(slots=True)
class TaskRecord:
    id: int
    tool: str
    args: Any
    status: str = "pending"
    result: Any = None
    error: str | None = None
    started: float | None = None
    finished: float | None = None
    attempts: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tool": self.tool,
            "args": _jsonable(self.args),
            "status": self.status,
            "result": _jsonable(self.result),
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

    @property
    def ok(self) -> bool:
        return self.status == "done"

    def task(self, task_id: int) -> TaskRecord:
        for t in self.tasks:
            if t.id == task_id:
                return t
        raise KeyError(task_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "answer": self.answer,
            "error": self.error,
            "replans": self.replans,
            "elapsed": _round(self.elapsed),
            "tasks": [t.to_dict() for t in self.tasks],
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

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kwargs)


def _round(t: float | None) -> float | None:
    return None if t is None else round(t, 6)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return to_jsonable_python(value, fallback=repr)


class Recorder:
    """Listens to a run's events and keeps what RunResult needs."""

    def __init__(self) -> None:
        self.run_id = ""
        self.tasks: dict[int, TaskRecord] = {}
        self.calls: dict[int, LLMCall] = {}
        self.usage = Usage()
        self.answer: str | None = None
        self.replans = 0

    def __call__(self, e: ev.Event) -> None:
        match e:
            case ev.TaskAdded(task=task):
                self.tasks[task.id] = TaskRecord(task.id, task.tool, task.arguments())
            case ev.TaskStarted(t=t, id=i):
                rec = self.tasks[i]
                rec.status = "running"
                rec.started = t
                rec.attempts = 1
            case ev.TaskRetrying(id=i):
                self.tasks[i].attempts += 1
            case ev.TaskFinished(t=t, id=i, status=status, result=result, error=error):
                rec = self.tasks[i]
                rec.status, rec.result, rec.error, rec.finished = status, result, error, t
            case ev.LLMStarted(t=t, call=c, role=role, model=model):
                self.calls[c] = LLMCall(role, model, t)
            case ev.LLMToken(t=t, call=c):
                call = self.calls[c]
                if call.first_token is None:
                    call.first_token = t
            case ev.LLMRetrying(call=c):
                self.calls[c].retries += 1
            case ev.LLMFinished(t=t, call=c, usage=usage, error=error):
                call = self.calls[c]
                call.finished, call.usage, call.error = t, usage, error
                self.usage = self.usage + usage
            case ev.RunStarted(run_id=run_id):
                self.run_id = run_id
            case ev.Replanning():
                self.replans += 1
            case ev.Answered(answer=answer):
                self.answer = answer
            case _:
                pass

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
