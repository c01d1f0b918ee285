"""Typed events: the one record of a run that results, traces, stores and UIs all read.

Every state change is emitted once, as one of these, with `t` in seconds since the run
started. Nothing else keeps its own bookkeeping: `RunResult` and the Chrome trace are views
built from this stream (see `plait.runs.result.Recorder` and `plait.runs.trace`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .task import Task


@dataclass(slots=True)
class Usage:
    """Tokens an LLM call used, as the server reported them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )


@dataclass(slots=True)
class RunStarted:
    t: float
    run_id: str
    question: str | None = None
    resumed: bool = False  # the run continues from its store


@dataclass(slots=True)
class TaskAdded:
    t: float
    task: Task
    restored: bool = False  # settled in an earlier session: its result comes from the store


@dataclass(slots=True)
class TaskStarted:
    t: float
    id: int
    tool: str


@dataclass(slots=True)
class TaskRetrying:
    t: float
    id: int
    attempt: int
    error: str


@dataclass(slots=True)
class TaskFinished:
    """A task settled: status is done, failed, skipped or cancelled."""

    t: float
    id: int
    status: str
    result: Any = None
    error: str | None = None
    restored: bool = False  # read from the store, not run again


@dataclass(slots=True)
class LLMStarted:
    t: float
    call: int
    role: str  # planner or joiner
    model: str
    restored: bool = False  # the reply comes from the store, not the model


@dataclass(slots=True)
class LLMToken:
    t: float
    call: int
    text: str


@dataclass(slots=True)
class LLMRetrying:
    """The reply was lost (cut stream, 429, 5xx…) and is asked for again after `delay`."""

    t: float
    call: int
    attempt: int
    error: str
    delay: float


@dataclass(slots=True)
class LLMFinished:
    """`text` is the reply as the run used it (what resume replays instead of asking again)."""

    t: float
    call: int
    usage: Usage = field(default_factory=Usage)
    error: str | None = None
    text: str = ""
    restored: bool = False


@dataclass(slots=True)
class PlanInvalid:
    """The planner wrote something that cannot run; it is shown the error and asked again."""

    t: float
    error: str


@dataclass(slots=True)
class Replanning:
    t: float
    round: int
    reason: str


@dataclass(slots=True)
class Answered:
    t: float
    answer: str


@dataclass(slots=True)
class RunFinished:
    t: float
    # The run's `plait.RunResult`: a view built from these events (run/result.py), so the core
    # names no type of the layer above it.
    result: Any


TaskEvent = TaskAdded | TaskStarted | TaskRetrying | TaskFinished
LLMEvent = LLMStarted | LLMToken | LLMRetrying | LLMFinished
Event = RunStarted | TaskEvent | LLMEvent | PlanInvalid | Replanning | Answered | RunFinished
Listener = Callable[[Event], None]


class Emitter:
    """Fans each event out to listeners, synchronously and in order. A listener with a
    `handlers` map (event type -> function) gets only those types, straight to the function."""

    __slots__ = ("_routes", "listeners")

    def __init__(self, *listeners: Listener | None) -> None:
        self.listeners = tuple(f for f in listeners if f is not None)
        self._routes: dict[type, tuple[Listener, ...]] = {}

    def __call__(self, event: Event) -> None:
        route = self._routes.get(type(event))
        if route is None:
            route = self._routes[type(event)] = self._route(type(event))
        for f in route:
            f(event)

    def _route(self, kind: type) -> tuple[Listener, ...]:
        route = []
        for f in self.listeners:
            handlers = getattr(f, "handlers", None)
            if handlers is None:
                route.append(f)
            elif kind in handlers:
                route.append(handlers[kind])
        return tuple(route)
