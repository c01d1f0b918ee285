"""Speculative tasks: start the calls a plan will most likely make while the planner thinks.

Speculative actions / PASTE, on plait's plans. A planner spends its time to first token and
its `Thought:` before it writes a task; calls it is sure to make can run meanwhile. Guesses
come from three places, each a `Guess` (a tool and its validated arguments):

- `from_template`: a matching plan-cache template's tasks that need no earlier result;
- `from_question`: each phrase of the question (its quoted strings, its names) for every
  pure tool that takes exactly one required string;
- `from_draft`: the tasks a cheap draft model's plan starts with (`draft_guesses` streams it
  and parses it as the planner's would be: never evaluated).

Only tools declared `pure=True` are ever speculated: their result depends on the arguments
alone and calling them has no effect, so a call nobody asked for harms nothing but time.

A `Speculator` starts each guess through the run's `SharedCalls` under the call's canonical
key (core/shared.py's `call_key`), the key the scheduler uses for a pure task: when the real
plan emits a task with the same tool and canonical arguments, the scheduler finds the call in
flight (or done) and adopts it, with no extra code. The plan's tasks are shown to `confirm`;
once the plan is complete, `settle` cancels the speculated calls it never confirmed. `watch`
does both from the run's own events (TaskAdded; the first planner call's LLMFinished).
Unconfirmed calls never appear in the run's results (they are not tasks) but are counted,
calls and seconds, in `SpeculationStats`. `aclose` leaves no speculated call behind.

This module decides what to speculate and keeps the account; running a call is the caller's
(`invoke`, which the scheduler's backend serves).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..core import events as ev
from ..core.backend import ToolRaised
from ..core.scheduler import from_signal
from ..core.shared import SharedCalls, call_key
from ..core.task import Task
from ..core.tools import Tool, Tools
from ..errors import PlaitError
from ..llm.base import LLM, Request
from .parse import PlanParser
from .schema import mark, question_spans

MAX_GUESSES = 8  # speculated calls per plan at most
_QUOTED = re.compile(r"\"([^\"\n]{1,200})\"|“([^”\n]{1,200})”|'([^'\n]{1,200})'(?!\w)")


@dataclass(frozen=True, slots=True)
class Guess:
    tool: str
    kwargs: dict[str, Any]  # validated, as the scheduler would call it
    key: str
    source: str  # "template", "question" or "draft"


def guess(tools: Tools, task: Task, source: str) -> Guess | None:
    """`task` as a guess: None unless its tool is pure, it needs no earlier result, and its
    arguments are valid."""
    tool = tools.get(task.tool)
    if tool is None or not tool.pure or task.deps:
        return None
    try:
        kwargs = tool.validate(tool.bind(task))
    except (PlaitError, ValueError):
        return None
    key = call_key(tool.name, kwargs)
    return None if key is None else Guess(tool.name, kwargs, key, source)


def from_template(tasks: Iterable[Task], tools: Tools) -> list[Guess]:
    return _unique(guess(tools, t, "template") for t in tasks)


def question_literals(question: str) -> list[str]:
    """The question's quoted strings, then its names (the maximal phrases of schema.py)."""
    quoted = [next(g for g in m.groups() if g) for m in _QUOTED.finditer(question)]
    return list(dict.fromkeys([*quoted, *question_spans(question)]))


def from_question(question: str, tools: Tools) -> list[Guess]:
    """Each literal of the question for each pure tool that takes one required string: the
    tools whose string is marked a phrase of the question (`Span`) if there are any, else
    all but those marked a formula."""
    single = [(t, m) for t in tools.values() if t.pure for m in [_one_string(t)] if m is not None]
    spans = [t for t, m in single if m == "question-span"]
    chosen = spans or [t for t, m in single if m != "formula"]
    return _unique(
        guess(tools, Task(0, t.name, (literal,)), "question")
        for literal in question_literals(question)
        for t in chosen
    )


def _one_string(tool: Tool) -> str | None:
    """The mark of the tool's one required parameter ("" if unmarked), if it is a string."""
    schema = tool.schema()
    required = schema.get("required", [])
    if len(required) != 1:
        return None
    prop = schema.get("properties", {}).get(required[0], {})
    if prop.get("type") != "string":
        return None
    return mark(prop) or ""


def from_draft(text: str, tools: Tools) -> list[Guess]:
    """The guesses in a draft plan's text: its tasks that need no earlier result, up to the
    first line that is no valid task."""
    parser = PlanParser((), tools)
    tasks: list[Task] = []
    try:
        tasks += parser.feed(text)
        tasks += parser.close()
    except PlaitError:
        pass
    return _unique(guess(tools, t, "draft") for t in tasks)


async def draft_guesses(
    llm: LLM, request: Request, tools: Tools, on_guess: Callable[[Guess], None]
) -> None:
    """Stream a draft model's plan and hand each task it starts with to `on_guess` as soon
    as its line is complete. A bad line or a failed call ends the draft, quietly."""
    parser = PlanParser((), tools)
    stream: AsyncIterator[Any] = llm.stream(request)
    with contextlib.suppress(PlaitError, Exception):
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            async for delta in stream:
                for task in parser.feed(delta.text):
                    g = guess(tools, task, "draft")
                    if g is not None:
                        on_guess(g)
                if parser.done:
                    return


def _unique(guesses: Iterable[Guess | None]) -> list[Guess]:
    seen: dict[str, Guess] = {}
    for g in guesses:
        if g is not None and g.key not in seen:
            seen[g.key] = g
    return list(seen.values())


@dataclass(slots=True)
class SpeculationStats:
    """What speculation did in a run: calls started, used by the plan, and wasted."""

    started: int = 0
    used: int = 0  # confirmed by a task of the plan: adopted in flight or as a result
    wasted: int = 0  # never confirmed: cancelled, or finished for nothing
    wasted_seconds: float = 0.0  # time those spent running
    by_source: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "used": self.used,
            "wasted": self.wasted,
            "wasted_seconds": round(self.wasted_seconds, 6),
            "by_source": dict(self.by_source),
        }


@dataclass(slots=True)
class _Flight:
    guess: Guess
    task: asyncio.Task[None]
    started: float
    ended: float | None = None
    confirmed: bool = False
    settled: bool = False  # counted as used or wasted
    failed: bool = False  # it raised (a task confirming it later calls again: wasted)


Invoke = Callable[[Tool, dict[str, Any]], Awaitable[Any]]


class Speculator:
    """One run's speculated calls (see the module docstring). Use as `async with`."""

    def __init__(
        self,
        tools: Tools,
        shared: SharedCalls,
        invoke: Invoke,
        *,
        limits: Mapping[str, asyncio.Semaphore] | None = None,
        max_guesses: int = MAX_GUESSES,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.tools = tools
        self.shared = shared
        self.invoke = invoke
        self.limits = limits or {}
        self.max_guesses = max_guesses
        self.clock = clock
        self.stats = SpeculationStats()
        self._flights: dict[str, _Flight] = {}
        self._planner_call: int | None = None
        self.over = False  # settled: the plan is complete, nothing more is speculated

    async def __aenter__(self) -> Speculator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def start(self, guesses: Sequence[Guess] | Guess) -> None:
        """Start each guess not started yet, within `max_guesses`; only pure tools, and
        nothing once the plan is complete."""
        if self.over:
            return
        for g in [guesses] if isinstance(guesses, Guess) else guesses:
            if g.key in self._flights or len(self._flights) >= self.max_guesses:
                continue
            tool = self.tools.get(g.tool)
            if tool is None or not tool.pure:
                continue  # never: a guess is made only for a pure tool, but check again
            task = asyncio.create_task(self._run(tool, g), name=f"plait-speculate-{g.tool}")
            self._flights[g.key] = _Flight(g, task, self.clock())
            self.stats.started += 1
            self.stats.by_source[g.source] = self.stats.by_source.get(g.source, 0) + 1

    async def _run(self, tool: Tool, g: Guess) -> None:
        flight_key = g.key

        async def call() -> Any:
            try:
                if tool.timeout is None:
                    return await self.invoke(tool, g.kwargs)
                async with asyncio.timeout(tool.timeout):
                    return await self.invoke(tool, g.kwargs)
            except Exception:
                raise
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # settled, or the run is stopping
                raise ToolRaised(asyncio.CancelledError()) from None
            except BaseException as e:
                if from_signal(e):
                    raise  # a real Ctrl-C or SIGTERM: the run stops, as it would without us
                # The tool's SystemExit or the like is its failure, as the scheduler makes it
                # (a task adopting this call sees it); raised here it would stop the loop.
                raise ToolRaised(e) from None

        try:
            limit = self.limits.get(tool.name)
            # The tool's limit is taken outside the shared call: a plan's task holding it
            # while waiting for this call would otherwise wait for itself.
            if limit is None:
                await self.shared.call(flight_key, call)
            else:
                async with limit:
                    await self.shared.call(flight_key, call)
        except Exception:
            # A failure is not kept: a task of the plan that had not adopted the call yet
            # calls again itself, so the call was of no use to it.
            flight = self._flights.get(flight_key)
            if flight is not None:
                flight.failed = True
        finally:
            flight = self._flights.get(flight_key)
            if flight is not None:
                flight.ended = self.clock()

    def confirm(self, task: Task) -> bool:
        """The plan emitted `task`: True if it is a speculated call (which the scheduler
        will adopt through the shared calls)."""
        g = guess(self.tools, task, "plan")
        flight = self._flights.get(g.key) if g is not None else None
        if flight is None or flight.confirmed or flight.settled or flight.failed:
            return False
        flight.confirmed = True
        self.stats.used += 1
        return True

    @property
    def in_flight(self) -> list[Guess]:
        return [f.guess for f in self._flights.values() if not f.task.done()]

    def settle(self) -> None:
        """The plan is complete: cancel the calls it never confirmed and count them (their
        time up to now). `aclose` waits for them to stop."""
        self.over = True
        now = self.clock()
        for flight in self._flights.values():
            if flight.settled:
                continue
            flight.settled = True
            if flight.confirmed:
                continue
            if not flight.task.done():
                flight.task.cancel()
            self.stats.wasted += 1
            self.stats.wasted_seconds += (flight.ended or now) - flight.started

    def watch(self, event: object) -> None:
        """A listener for the run's events: each task the plan adds is shown to `confirm`,
        and the end of the first planner call settles the speculation."""
        if isinstance(event, ev.TaskAdded):
            if not event.restored:
                self.confirm(event.task)
        elif isinstance(event, ev.LLMStarted):
            if event.role == "planner" and self._planner_call is None:
                self._planner_call = event.call
        elif isinstance(event, ev.LLMFinished) and event.call == self._planner_call:
            self.settle()

    async def aclose(self) -> None:
        """Settle, and wait until no speculated call is running (confirmed ones have been
        awaited by their tasks by now)."""
        self.settle()
        for flight in self._flights.values():
            if not flight.task.done():
                flight.task.cancel()
        for flight in self._flights.values():
            with contextlib.suppress(BaseException):
                await flight.task
