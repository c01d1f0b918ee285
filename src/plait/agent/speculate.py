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
from ..core.task import Task, resolve
from ..core.tools import Tool, Tools
from ..errors import PlaitError
from ..llm.base import LLM, Delta, Request
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
    llm: LLM,
    request: Request,
    tools: Tools,
    on_guess: Callable[[Guess], None],
    on_plan: Callable[[list[Task]], None] | None = None,
) -> None:
    """Stream a draft model's plan and hand each task it starts with to `on_guess` as soon
    as its line is complete, and the whole plan to `on_plan` if it ends with join(). A bad
    line or a failed call ends the draft, quietly."""
    parser = PlanParser((), tools)
    written: list[Task] = []
    stream: AsyncIterator[Any] = llm.stream(request)
    with contextlib.suppress(PlaitError, Exception):
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            async for delta in stream:
                for task in parser.feed(delta.text):
                    written.append(task)
                    g = guess(tools, task, "draft")
                    if g is not None:
                        on_guess(g)
                if parser.done:
                    break
        written += parser.close()
        if on_plan is not None and parser.joined and written:
            on_plan(written)


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
    joins: JoinStats = field(default_factory=lambda: JoinStats())

    def to_dict(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "used": self.used,
            "wasted": self.wasted,
            "wasted_seconds": round(self.wasted_seconds, 6),
            "by_source": dict(self.by_source),
        }


@dataclass(slots=True)
class JoinStats:
    """Speculative joins in a run: started, adopted as the run's joiner call, and wasted
    (cancelled: the plan or its results differed, or it failed), with what those cost."""

    speculated: int = 0
    used: int = 0
    wasted: int = 0
    wasted_seconds: float = 0.0
    wasted_tokens: int = 0  # as the model reported them (0 for a stream cut before its end)

    def to_dict(self) -> dict[str, Any]:
        return {
            "speculated": self.speculated,
            "used": self.used,
            "wasted": self.wasted,
            "wasted_seconds": round(self.wasted_seconds, 6),
            "wasted_tokens": self.wasted_tokens,
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
    result: Any = None  # what it returned (when it ended and did not fail)


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
        # A whole guessed plan (`start_plan`): its tasks by id, arguments named; the flight
        # of each task once started; the ids the real plan wrote alike.
        self._plan: dict[int, Task] = {}
        self._plan_keys: dict[int, str] = {}
        self._plan_confirmed: set[int] = set()
        self._plan_runner: asyncio.Task[None] | None = None
        # Called with the guessed plan's tasks and all their results, once all are in.
        self.on_whole: Callable[[list[Task], dict[int, Any]], None] | None = None

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
            self._launch(g)

    def _launch(self, g: Guess) -> _Flight | None:
        """Start one guess (or find it started); None if it may not be."""
        if g.key in self._flights:
            return self._flights[g.key]
        tool = self.tools.get(g.tool)
        if len(self._flights) >= self.max_guesses or tool is None or not tool.pure:
            return None  # a guess is made only for a pure tool, but check again
        task = asyncio.create_task(self._run(tool, g), name=f"plait-speculate-{g.tool}")
        flight = self._flights[g.key] = _Flight(g, task, self.clock())
        self.stats.started += 1
        self.stats.by_source[g.source] = self.stats.by_source.get(g.source, 0) + 1
        return flight

    # a whole guessed plan ----------------------------------------------------------------

    def start_plan(self, tasks: Sequence[Task], source: str = "draft") -> None:
        """Speculate a whole guessed plan (a draft's, which ended with join()): each task,
        those that take earlier results on the speculated results, and once every result
        is in, hand the plan and its results to `on_whole` (the speculative join). Only a
        plan of pure tools within `max_guesses`; once the real plan is complete, only the
        tasks it confirmed go on."""
        if self.over or self._plan or not tasks or len(tasks) > self.max_guesses:
            return
        prepared: dict[int, Task] = {}
        for t in tasks:
            tool = self.tools.get(t.tool)
            if tool is None or not tool.pure or t.id in prepared:
                return
            try:
                prepared[t.id] = self.tools.prepare(t)
            except PlaitError:
                return
        if any(d not in prepared or d >= i for i, t in prepared.items() for d in t.deps):
            return
        self._plan = prepared
        self._plan_runner = asyncio.create_task(self._run_plan(source), name="plait-speculate-plan")

    def _signature(self, task: Task) -> tuple[Any, ...] | None:
        """What makes a plan's task the same as a guessed one: id, tool, named arguments as
        written (references unresolved), dependencies."""
        try:
            bound = self.tools.prepare(task)
        except PlaitError:
            return None
        key = call_key(bound.tool, bound.kwargs)
        return None if key is None else (bound.id, key, tuple(sorted(bound.deps)))

    async def _run_plan(self, source: str) -> None:
        loop = asyncio.get_running_loop()
        ended: dict[int, asyncio.Future[tuple[bool, Any]]] = {
            i: loop.create_future() for i in self._plan
        }

        async def one(tid: int, task: Task) -> None:
            ok, value = False, None
            try:
                results: dict[int, Any] = {}
                for d in task.deps:
                    dep_ok, results[d] = await ended[d]
                    if not dep_ok:
                        return
                tool = self.tools[task.tool]
                kwargs = resolve(task.kwargs, results, task.deps) if task.deps else task.kwargs
                kwargs = tool.validate(kwargs)
                key = call_key(tool.name, kwargs)
                if key is None or (self.over and tid not in self._plan_confirmed):
                    return  # the real plan is complete and wrote no such task
                flight = self._launch(Guess(tool.name, kwargs, key, source))
                if flight is None:
                    return
                self._plan_keys[tid] = key
                if tid in self._plan_confirmed:
                    self._confirm_flight(flight)
                await asyncio.wait([flight.task])
                if flight.failed or flight.task.cancelled():
                    return
                ok, value = True, flight.result
            except (PlaitError, ValueError, TypeError):
                return
            finally:
                ended[tid].set_result((ok, value))

        await asyncio.gather(*(one(i, t) for i, t in self._plan.items()))
        outcomes = [f.result() for f in ended.values()]
        if self.on_whole is not None and all(ok for ok, _ in outcomes):
            results = {i: v for i, (_, v) in zip(self._plan, outcomes, strict=True)}
            self.on_whole(list(self._plan.values()), results)

    def _confirm_plan(self, task: Task) -> None:
        """The real plan wrote `task`: if it is the guessed plan's task of that id, with
        every task it takes confirmed too, its speculated call (started or yet to start,
        on the same results) is the one the plan's task will adopt."""
        guessed = self._plan.get(task.id)
        if guessed is None or not all(d in self._plan_confirmed for d in task.deps):
            return
        mine = self._signature(guessed)
        if mine is None or mine != self._signature(task):
            return
        self._plan_confirmed.add(task.id)
        key = self._plan_keys.get(task.id)
        if key is not None and task.deps:
            self._confirm_flight(self._flights[key])

    def _confirm_flight(self, flight: _Flight) -> None:
        if flight.confirmed or flight.failed:
            return
        if flight.settled:  # counted wasted when the plan completed: it is used after all
            self.stats.wasted -= 1
            self.stats.wasted_seconds -= (flight.ended or self.clock()) - flight.started
        flight.confirmed = flight.settled = True
        self.stats.used += 1

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
                value = await self.shared.call(flight_key, call)
            else:
                async with limit:
                    value = await self.shared.call(flight_key, call)
            flight = self._flights.get(flight_key)
            if flight is not None:
                flight.result = value
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
        self._confirm_plan(task)
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
        if self._plan_runner is not None:
            self._plan_runner.cancel()
            with contextlib.suppress(BaseException):
                await self._plan_runner
        for flight in self._flights.values():
            if not flight.task.done():
                flight.task.cancel()
        for flight in self._flights.values():
            with contextlib.suppress(BaseException):
                await flight.task


class SpeculativeJoin:
    """A joiner call started before the plan it joins is complete (the speculative join,
    agent/loop.py's `join_early`): its reply is read into a buffer as it streams, and
    `replay` hands it on, as if asked now, when the run adopts it; `discard` closes its
    stream and counts it wasted."""

    def __init__(
        self,
        llm: LLM,
        request: Request,
        calls: list[str],
        results: dict[int, str],
        stats: JoinStats,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.llm = llm
        self.request = request
        self.calls = calls  # the plan it joins, as canonical calls
        self.results = results  # each task's result as text: what the join was given
        self.stats = stats
        self.clock = clock
        self.started = clock()
        self.deltas: list[Delta] = []
        self.error: BaseException | None = None
        self.finished = False
        self.ended: float | None = None  # when its stream ended
        self._counted = False  # counted used or wasted
        self._changed = asyncio.Event()
        stats.speculated += 1
        self._task = asyncio.create_task(self._read(llm), name="plait-speculative-join")

    async def _read(self, llm: LLM) -> None:
        try:
            # Asked inside the try: a model may raise as it is called (LLM.stream need only
            # return an iterator), and a join not `finished` would be adopted and awaited.
            stream: AsyncIterator[Delta] = llm.stream(self.request)
            async with contextlib.aclosing(stream):  # type: ignore[type-var]
                async for delta in stream:
                    self.deltas.append(delta)
                    self._changed.set()
        except Exception as e:
            self.error = e
        except asyncio.CancelledError as e:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # closed: discarded, or done with
            # The model's stream raised it itself: the reply is cut, not whole (asked after
            # the plan, this call would have failed the run), so it is never adopted as one.
            self.error = e
        finally:
            self.finished = True
            self.ended = self.clock()
            self._changed.set()

    @property
    def failed(self) -> bool:
        return self.error is not None

    def adopt(self) -> Callable[[Request], AsyncIterator[Delta]]:
        """The run takes this call as its joiner's: a source for `Agent._reply` that gives
        the reply (read so far, then as it comes) the first time it is asked, and asks
        `self`'s model again (a retry) after that. Counted used once its reply was read
        (or the reader had what it needed), wasted if it failed: the retry answered."""
        first = [True]

        def source(request: Request) -> AsyncIterator[Delta]:
            if first[0]:
                first[0] = False
                return self._replay()
            return self.llm.stream(request)

        return source

    async def _replay(self) -> AsyncIterator[Delta]:
        i = 0
        try:
            while True:
                while i < len(self.deltas):
                    yield self.deltas[i]
                    i += 1
                if self.finished:
                    if self.error is not None:
                        raise self.error
                    return
                self._changed.clear()
                await self._changed.wait()
        finally:
            self._count(used=self.error is None)

    async def discard(self) -> None:
        """Done with it: close its stream (its reading task ends here, even when the run is
        being cancelled) and count it wasted (its time and tokens), unless the run read its
        reply as adopted (`_replay` counted it used)."""
        self._task.cancel()
        await asyncio.wait([self._task])
        self._count(used=False)

    def _count(self, used: bool) -> None:
        """Count it once: used, or wasted with the time its stream ran and its tokens."""
        if self._counted:
            return
        self._counted = True
        if used:
            self.stats.used += 1
            return
        self.stats.wasted += 1
        self.stats.wasted_seconds += (self.ended or self.clock()) - self.started
        usage = [d.usage for d in self.deltas if d.usage is not None]
        if usage:
            self.stats.wasted_tokens += usage[-1].prompt_tokens + usage[-1].completion_tokens
