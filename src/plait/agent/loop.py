"""The agent loop: planner ─stream─▶ parser ─tasks─▶ scheduler ─results─▶ joiner ─▶ answer | replan.

`execute_plan` runs a written plan; `Agent.answer` plans, runs and joins, replanning within
`max_replans`. Both feed one Scheduler, report through one event stream and return an
`Outcome`. Tasks are handed to the scheduler the moment the parser completes them, while the
planner is still streaming: that is LLMCompiler's task fetching unit, with no separate queue.

Every model call is one stream of text (`Agent._reply`), and everything about a call lives
inside it: its number, its events, the retries of a reply lost mid-stream (LLMError with
retryable=True, asked again with backoff; the stream then yields `AGAIN` and starts over,
and the planner does not dispatch twice a task the lost reply already dispatched), and the
drain of a reply its reader stopped early (read on, unused, for its usage report).

Resuming is replaying: the loop runs again from the start, with the replies a store kept
(`replies`, by call number) given back through the same stream instead of asking the model,
and the scheduler's journal restoring recorded tasks without running them. Given the same
replies the loop makes the same calls, so a resumed run picks up exactly where the log ends.

How the model is asked depends on what it can do (`Tactics`, given to the Agent, switch each
technique off for bench/answers.py): a model that scores text (llama.cpp in-process) makes
the plan's and the decision's choices among candidates (choose.py); one that follows a JSON
Schema writes the plan as JSON under the plan schema, its lookups limited to phrases of the
question, and the joiner's decision under a pattern; any other writes free text. The
joiner's reply is read strictly: a reply with no decision, or an echo of the instructions'
template, is a failed call, asked again up to `JOIN_RETRIES` times and never taken as the
answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass

from ..core import events as ev
from ..core.graph import DONE
from ..core.scheduler import Scheduler
from ..core.shared import backoff
from ..core.task import Task, result_text
from ..core.tools import Tools
from ..errors import PlaitError, PlanError
from ..llm.base import LLM, Delta, LLMError, Request, Scorer
from .choose import CALIBRATION, DecisionChooser, Earlier, PlanChooser, render, shapes
from .parse import PlanParser, parse_plan
from .prompts import (
    JOIN_SCHEMA,
    Decision,
    ask_again_turn,
    canonical,
    join_turn,
    joiner_messages,
    observations,
    parse_decision,
    planner_messages,
    render_call,
    replan_turn,
    select_examples,
)
from .schema import plan_schema
from .speculate import JoinStats, SpeculativeJoin

STOP = ("<END_OF_PLAN>",)
# A question's planner numbers its tasks 1, 2, 3…, each replan going on after its last, and
# never past PLANNER_IDS; the ids above are for live edits (`edit_floor`). So an edit made
# while the planner writes never takes the id of a task it has yet to write, in any plan,
# replan or resume, and `$N` in its plan always means its own task N.
PLANNER_IDS = 1_000_000
JOIN_RETRIES = 2  # joiner replies without a decision asked again, after the first
AGAIN = None  # what a reply stream yields when its reply was lost and is asked again

Source = Callable[[Request], AsyncIterator[Delta]]  # where a reply's deltas come from


@dataclass(frozen=True, slots=True)
class Tactics:
    """The techniques that help a small model, each on by default (off: for measuring)."""

    choose: bool = True  # score candidates where the model can (choose.py)
    ground: bool = True  # a Span parameter takes only phrases of the question (JSON plans)
    similar_examples: bool = True  # show the few-shot examples most like the question
    examples: int = 2  # how many of them
    strict_join: bool = True  # no decision is a failed call (else the reply is the answer)
    constrain_join: bool = True  # the joiner's decision under a pattern, where supported
    calibrate: bool = True  # chosen decisions: scores calibrated against a bare prompt


@dataclass(slots=True)
class RetryPolicy:
    """How lost LLM replies are retried: exponential backoff (core.shared.backoff), capped."""

    attempts: int = 4  # retries after the first try
    base: float = 0.25
    cap: float = 8.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.cap * 4)
        return backoff(self.base, attempt + 1, self.cap)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the loop concluded: an answer, or why there is none."""

    answer: str | None = None
    error: str | None = None


def prepare_plan(text: str, tools: Tools) -> list[Task]:
    """A written plan's tasks, each checked against its tool: PlanError before anything runs."""
    tasks = [tools.prepare(t) for t in parse_plan(text, tools=tools)]
    if not tasks:
        raise PlanError("the plan has no tasks")
    return tasks


def edit_floor(written: str | None, tools: Tools) -> int:
    """The highest id a run's own body may give a task: a written plan's highest, or
    PLANNER_IDS for a question's planner (`written` None). A live edit without an id of its
    own takes the next above this and above every id in the graph; one with an id at or
    below it, not yet in the graph, would take one the plan or the planner may still add."""
    if written is None:
        return PLANNER_IDS
    return max((task.id for task in parse_plan(written, tools=tools)), default=0)


async def execute_plan(
    tasks: list[Task], scheduler: Scheduler, defined: Mapping[int, Task] | None = None
) -> Outcome:
    """Run a whole written plan, prepared by `prepare_plan`: its answer is the last task's
    result, if every task succeeded (the plan's and its live edits'). Resuming, `defined`
    holds what the run's log defined: the edits of earlier sessions go back in after the
    plan, as they were (`put_back_edits`)."""
    for i, task in enumerate(tasks, 1):
        scheduler.add(task, checked=True)
        if i % 32 == 0:
            # Let dispatched tasks run while the rest are added: they start sooner, and a
            # huge plan never holds all its coroutines in memory at once.
            await asyncio.sleep(0)
    if defined:
        put_back_edits(scheduler, defined, max((t.id for t in tasks), default=0))
    await scheduler.wait()
    nodes = scheduler.graph.nodes
    if all(n.status == DONE for n in nodes.values()):
        return Outcome(result_text(nodes[tasks[-1].id].result))
    return Outcome()


def put_back_edits(scheduler: Scheduler, defined: Mapping[int, Task], above: int) -> None:
    """Resuming: add the live edits an earlier session took (the `defined` tasks with ids
    above `above`, the run's own), each once the tasks it reads are in the graph again, so
    the graph, the result and the joiner have them as that session did; the journal
    restores what they settled. One its tool now refuses stays where it is: in the log,
    and in `plait show`."""
    nodes = scheduler.graph.nodes
    waiting = sorted(i for i in defined if i > above and i not in nodes)
    while waiting:  # again while one goes back: an edit may read one of a higher id
        ready = [i for i in waiting if defined[i].deps <= nodes.keys()]
        for task_id in ready:
            with contextlib.suppress(PlanError):
                scheduler.add(defined[task_id])
        if not ready:
            break
        waiting = [i for i in waiting if i not in ready]  # a refused one tried once


class Agent:
    """One question: plan, run, join; replan until an answer or `max_replans` is spent."""

    def __init__(
        self,
        llm: LLM,
        scheduler: Scheduler,
        emit: ev.Listener,
        clock: Callable[[], float],
        *,
        run_id: str,
        max_replans: int = 2,
        examples: str | None = None,
        retry: RetryPolicy | None = None,
        replies: dict[int, ev.LLMFinished] | None = None,
        defined: dict[int, Task] | None = None,
        tactics: Tactics | None = None,
        cached_plan: bool = False,
    ) -> None:
        self.llm = llm
        # The first plan was given (the plan cache's), not written by a planner call of this
        # run: its join is a short prompt of its own (`_short_join`), not the planner's
        # conversation, whose prefix no call of the run has evaluated.
        self.cached_plan = cached_plan
        self.replies = replies or {}
        # Tasks as an earlier session dispatched them. A reply lost mid-stream and asked
        # again may define an id differently from the tasks it had already dispatched; the
        # kept reply is the second one, so on replay the dispatched definitions win.
        self.defined = defined or {}
        self.scheduler = scheduler
        self.emit = emit
        self.clock = clock
        self.run_id = run_id
        self.max_replans = max_replans
        self.examples = examples
        self.retry = retry or RetryPolicy()
        self.tactics = tactics or Tactics()
        self.drain = 1.0  # seconds to keep reading a reply after it gave all we needed
        self._conversation: list[dict[str, str]] = []  # every call extends this prefix
        self._reported: set[int] = set()  # tasks whose results the conversation shows
        self._calls = 0
        self._question = ""
        self._choosing = False  # this run's plans are chosen among candidates
        self._round = 0  # 0: the first plan
        self._joining = False  # the current round's join has begun
        self._planned = False  # the current round's plan is complete
        # The joiner's own view of the conversation while its join is short: its prompt,
        # then what the conversation gained from the index on (the reply, any ask-again).
        self._view: tuple[list[dict[str, str]], int] | None = None
        self._early: SpeculativeJoin | None = None  # a speculative join of the first plan

    async def answer(self, question: str) -> Outcome:
        self._question = question
        try:
            return await self._answer(question)
        finally:
            await self._discard_early()

    async def _answer(self, question: str) -> Outcome:
        reason: str | None = None
        error = "no answer"
        for round_ in range(self.max_replans + 1):
            self._round, self._joining, self._planned = round_, False, False
            if round_:
                await self._discard_early()
                self.emit(ev.Replanning(self.clock(), round_, reason or ""))
            try:
                invalid = await self._plan(question, reason)
                self._planned = True
                if self._early is not None and self._early.calls != self._plan_calls():
                    await self._discard_early()  # another plan: no need to wait for its tasks
                await self.scheduler.wait()
                decision = None if invalid is not None else await self._decide(question)
            except LLMError as e:
                return Outcome(error=f"{self.llm.name}: {e}")
            if invalid is not None:
                self.emit(ev.PlanInvalid(self.clock(), invalid))
                reason = f"the previous plan could not be run: {invalid}. Write a valid plan"
                error = f"invalid plan: {invalid}"
                continue
            if isinstance(decision, Outcome):
                return decision  # the joiner gave no decision
            assert decision is not None
            if decision.action == "finish":
                self.emit(ev.Answered(self.clock(), decision.text))
                return Outcome(decision.text)
            reason = decision.text or "the joiner asked for a new plan"
            times = "once" if round_ == 0 else f"{round_ + 1} times"
            error = f"the joiner asked for a new plan {times}: {reason}"
        return Outcome(error=error)

    async def _decide(self, question: str) -> Decision | Outcome:
        """The joiner's decision, asked again while a reply holds none; the run's Outcome
        (why there is no answer) if it never held one."""
        reply = await self._join(question)
        decision = parse_decision(reply)
        if not self.tactics.strict_join:
            return decision or Decision("finish", reply.strip())
        asked = 1
        while decision is None and asked <= JOIN_RETRIES:
            self._conversation = [*self._conversation, ask_again_turn()]
            reply = await self._join_call()
            decision = parse_decision(reply)
            asked += 1
        if decision is None:
            excerpt = " ".join(reply.split())[:120] or "(empty)"
            return Outcome(
                error=f"the joiner gave no decision in {asked} replies; the last: {excerpt}"
            )
        return decision

    # planner ---------------------------------------------------------------------------

    def _unreported(self) -> str:
        """Observations of the tasks the conversation has not shown yet."""
        nodes = [n for i, n in self.scheduler.graph.nodes.items() if i not in self._reported]
        self._reported.update(n.task.id for n in nodes)
        return observations([(n.task, n.status, n.result, n.error) for n in nodes])

    async def _plan(self, question: str, reason: str | None) -> str | None:
        """Stream one plan into the scheduler; return the plan's error, if it had one."""
        tools = self.scheduler.tools
        known = set(self.scheduler.graph.nodes)
        next_id = max((i for i in known if i <= PLANNER_IDS), default=0) + 1  # edits' ignored
        request, source = self._planner_request(question, reason, next_id)
        call = self._next_call()
        kept = self.replies.get(call)
        added: set[int] = set()

        def dispatch(tasks: Iterable[Task]) -> None:
            for task in tasks:
                if task.id in added:
                    continue  # dispatched by a reply that was lost and asked again
                if kept is not None:
                    task = self.defined.get(task.id, task)
                if task.id < next_id:
                    raise PlanError(f"task id {task.id} must be {next_id} or more", line=task.line)
                if task.id > PLANNER_IDS:
                    raise PlanError(
                        f"task id {task.id} is past {PLANNER_IDS}: ids above are live edits'",
                        line=task.line,
                    )
                self.scheduler.add(task)
                added.add(task.id)

        parser = PlanParser(known, tools)
        read: list[str] = []
        try:
            async with contextlib.aclosing(self._reply(call, "planner", request, source)) as reply:
                async for text in reply:
                    if text is AGAIN:
                        parser, read = PlanParser(known, tools), []
                        continue
                    read.append(text)
                    dispatch(parser.feed(text))
                    if parser.done:
                        break
            dispatch(parser.close())
        except PlanError as e:
            self._edits_again()
            return str(e)
        finally:
            # The reply as the run used it; a kept one whole, as its first session said it.
            self._say(kept.text if kept is not None else "".join(read))
        self._edits_again()
        if not added and not parser.joined:
            return "the plan has no tasks and no join()"
        return None

    def _edits_again(self) -> None:
        """Resuming: put back the live edits an earlier session took (ids above PLANNER_IDS)."""
        put_back_edits(self.scheduler, self.defined, PLANNER_IDS)

    def _planner_request(
        self, question: str, reason: str | None, next_id: int
    ) -> tuple[Request, Source | None]:
        """The planner's request (the conversation extended by its turn), and where its reply
        comes from: a candidate planner where the model scores, else the model itself."""
        tools = self.scheduler.tools
        chooser = self._plan_chooser(question, next_id)
        json_form = self.llm.supports_json_schema and chooser is None
        if not self._conversation:
            shots = self.examples
            if shots and self.tactics.similar_examples:
                shots = select_examples(shots, question, self.tactics.examples)
            self._conversation = planner_messages(
                question, tools, examples=shots, json_form=json_form, compact=chooser is not None
            )
        else:
            turn = replan_turn(reason or "", self._unreported(), next_id)
            self._conversation = [*self._conversation, turn]
        schema = None
        if json_form:
            grounded = question if self.tactics.ground else None
            schema = plan_schema(tools, next_id, question=grounded)
        request = Request(
            self._conversation,
            stop=() if json_form else STOP,
            json_schema=schema,
            session=self.run_id,
        )
        return request, chooser.stream if chooser is not None else None

    def _scorer(self) -> Scorer | None:
        return self.llm if self.tactics.choose and isinstance(self.llm, Scorer) else None

    def _plan_chooser(self, question: str, next_id: int) -> PlanChooser | None:
        """A candidate planner, if the model scores and some tool can be called at once."""
        scorer = self._scorer()
        if scorer is None:
            return None
        tools = self.scheduler.tools
        known = shapes(tools)
        earlier = [
            Earlier(
                n.task.id,
                n.task.tool,
                known[n.task.tool].returns,
                render(n.task.tool, [*n.task.args, *n.task.kwargs.values()]),
            )  # a new plan may take any result and phrase again, but repeats no call
            for n in self.scheduler.graph.nodes.values()
            if n.status == DONE and n.task.tool in known
        ]
        chooser = PlanChooser(scorer, tools, question, next_id, earlier)
        if not self._conversation:  # the first plan decides how the run plans
            self._choosing = any(chooser.arguments(shape) for shape in known.values())
        # If no tool can start a plan, the model plans freely.
        return chooser if self._choosing else None

    # joiner ----------------------------------------------------------------------------

    async def _join(self, question: str) -> str:
        """The round's join. The conversation always gains the join turn and the reply (a
        replan after it reads as ever); what the joiner is sent is that conversation, or,
        for the first plan when no planner call of this run wrote it (a cached plan, a
        speculative join adopted), a short prompt of its own (`joiner_messages`), unless
        the decision is chosen by score."""
        self._joining = True
        self._conversation = [
            *self._conversation,
            join_turn(question, self._unreported()),
        ]
        self._view = None
        source: Source | None = None
        # A model whose decision is chosen by score keeps the conversation: its choice was
        # calibrated there (choose.py).
        short_allowed = self._scorer() is None
        if self._round == 0 and short_allowed and (self.cached_plan or self._early is not None):
            short = self._short_join()
            early, self._early = self._early, None
            if early is not None and self._adoptable(early, short):
                source = early.adopt()
            elif early is not None:
                await early.discard()
            if source is not None or self.cached_plan:
                self._view = (short, len(self._conversation))
            if early is not None and source is not None:
                try:
                    return await self._join_call(source)
                finally:  # read, or the run stopped: its stream ends with the call
                    await early.discard()
        return await self._join_call(source)

    def _short_join(self) -> list[dict[str, str]]:
        """The first plan's own join prompt: the question, its tasks (canonical) and results."""
        tools = self.scheduler.tools
        nodes = sorted(self.scheduler.graph.nodes.values(), key=lambda n: n.task.id)
        return joiner_messages(
            self._question,
            [(canonical(n.task, tools), n.status, n.result, n.error) for n in nodes],
        )

    def join_early(self, tasks: list[Task], results: dict[int, object], stats: JoinStats) -> None:
        """Speculative join: a guessed first plan (a draft's) and all its speculated results
        are in, so start its joiner now, on the short prompt built from them. `_join` adopts
        it if the real plan's tasks and results are the same (so is the prompt), and else
        discards it. Not for a model whose decision is chosen among candidates (the choice
        reads the run's graph), nor once the first join has begun."""
        if self._early is not None or self._round or self._joining:
            return
        if self._scorer() is not None:
            return
        tools = self.scheduler.tools
        rows = [(canonical(t, tools), DONE, results[t.id], None) for t in tasks]
        calls = [render_call(t) for t, *_ in rows]
        if self._planned and calls != self._plan_calls():
            return  # the real plan is complete, and it is another
        request = self._join_request(joiner_messages(self._question, rows), session=None)
        texts = {t.id: result_text(results[t.id]) for t in tasks}
        self._early = SpeculativeJoin(self.llm, request, calls, texts, stats)

    def _plan_calls(self) -> list[str]:
        """The run's tasks so far as canonical calls, in order."""
        tools = self.scheduler.tools
        nodes = sorted(self.scheduler.graph.nodes.values(), key=lambda n: n.task.id)
        return [render_call(canonical(n.task, tools)) for n in nodes]

    def _adoptable(self, early: SpeculativeJoin, short: list[dict[str, str]]) -> bool:
        """Whether the speculative join joined this very plan: the same prompt (tasks and
        results), every task done with the result it was given, and no failed call."""
        nodes = self.scheduler.graph.nodes
        return (
            not early.failed
            and early.request.messages == short
            and set(nodes) == set(early.results)
            and all(
                n.status == DONE and result_text(n.result) == early.results[i]
                for i, n in nodes.items()
            )
        )

    async def _discard_early(self) -> None:
        early, self._early = self._early, None
        if early is not None:
            await early.discard()

    def _join_request(self, messages: list[dict[str, str]], session: str | None) -> Request:
        schema = None
        if self._scorer() is None and self.tactics.constrain_join and self.llm.supports_json_schema:
            schema = JOIN_SCHEMA
        return Request(messages, json_schema=schema, session=session)

    async def _join_call(self, source: Source | None = None) -> str:
        """Ask the joiner once (its reply read whole) and say its reply in the conversation;
        from `source` if given (an adopted speculative join)."""
        scorer = self._scorer()
        if source is None and scorer is not None:
            source = self._decision_chooser(scorer).stream
        messages = self._conversation
        if self._view is not None:
            short, since = self._view
            messages = [*short, *self._conversation[since:]]
        request = self._join_request(messages, session=self.run_id)
        read: list[str] = []
        call = self._next_call()
        async with contextlib.aclosing(self._reply(call, "joiner", request, source)) as reply:
            async for text in reply:
                if text is AGAIN:
                    read = []
                else:
                    read.append(text)
        said = "".join(read)
        self._say(said)
        return said

    def _decision_chooser(self, scorer: Scorer) -> DecisionChooser:
        """The joiner's decision chosen among candidates built from the run's results."""
        nodes = list(self.scheduler.graph.nodes.values())
        consumed = {d for n in nodes for d in n.task.deps}
        # The plan's outputs are the results no later task took.
        outputs = [n.result for n in nodes if n.status == DONE and n.task.id not in consumed]
        texts = [n.result for n in nodes if n.status == DONE and isinstance(n.result, str)]
        failures = [
            f"task {n.task.id} {n.task.tool} {n.status}: {n.error}"
            for n in nodes
            if n.status != DONE
        ]
        return DecisionChooser(
            scorer,
            outputs,
            failures,
            texts,
            question=self._question,
            calibration=CALIBRATION if self.tactics.calibrate else 0.0,
        )

    def _say(self, text: str) -> None:
        """Record the model's reply as its turn in the run's conversation."""
        self._conversation = [*self._conversation, {"role": "assistant", "content": text}]

    # one model call: one stream of text ------------------------------------------------

    def _next_call(self) -> int:
        """The number of the run's next model call: what a kept reply is found by."""
        self._calls += 1
        return self._calls

    async def _reply(
        self, call: int, role: str, request: Request, source: Source | None = None
    ) -> AsyncGenerator[str | None]:
        """Model call `call` as one stream of text: the reply kept for it (resuming), or
        asked from `source` (the model by default) and retried while lost.

        Yields the reply's text as it arrives, and `AGAIN` when a lost reply is asked again
        (the reader starts over; what it already acted on stays done). A reader that stops
        early has what it needs: the rest of the reply is still read for up to `drain`
        seconds, unused, so the server's usage report (sent last) is not lost. Every call
        reports LLMStarted and one LLMFinished, whose text is the reply as the reader took it.
        """
        kept = self.replies.get(call)
        if kept is not None:
            self.emit(ev.LLMStarted(self.clock(), call, role, self.llm.name, True))
            try:
                # Line by line, as it streamed: a bad line later on must not take the tasks
                # before it along (the first session dispatched them before reaching it).
                for line in kept.text.splitlines(keepends=True):
                    yield line
            finally:
                self.emit(ev.LLMFinished(self.clock(), call, kept.usage, None, kept.text, True))
            await asyncio.sleep(0)
            return
        self.emit(ev.LLMStarted(self.clock(), call, role, self.llm.name))
        usage = ev.Usage()
        read: list[str] = []
        attempt = 0
        backoff: float | None = None
        stopped = False  # the reader stopped reading: it had the whole reply it used
        while True:
            try:
                if backoff is not None:  # the reply was lost: ask again, from the start
                    await asyncio.sleep(backoff)
                    read = []
                    yield AGAIN
                stream = (source or self.llm.stream)(request)
                async with contextlib.aclosing(stream):  # type: ignore[type-var]
                    try:
                        async for delta in stream:
                            if delta.usage is not None:
                                usage = delta.usage
                            if delta.text:
                                self.emit(ev.LLMToken(self.clock(), call, delta.text))
                                read.append(delta.text)
                                yield delta.text
                    except GeneratorExit:
                        stopped = True
                        usage = await self._drain(call, stream, usage)
                        raise
            except LLMError as e:
                if not e.retryable or attempt >= self.retry.attempts:
                    self.emit(ev.LLMFinished(self.clock(), call, usage, str(e)))
                    raise
                backoff = self.retry.delay(attempt, e.retry_after)
                attempt += 1
                self.emit(ev.LLMRetrying(self.clock(), call, attempt, str(e), backoff))
                continue
            except BaseException as e:
                if stopped or isinstance(e, GeneratorExit):
                    # The reply stands as read, even if a cancel cut the drain after it short:
                    # the run acted on it, so a resume must replay it, not ask again.
                    self.emit(ev.LLMFinished(self.clock(), call, usage, None, "".join(read)))
                else:
                    cancelled = isinstance(e, asyncio.CancelledError)
                    error = "cancelled" if cancelled else f"{type(e).__name__}: {e}"
                    self.emit(ev.LLMFinished(self.clock(), call, usage, error))
                raise
            self.emit(ev.LLMFinished(self.clock(), call, usage, None, "".join(read)))
            return

    async def _drain(self, call: int, stream: AsyncIterator[Delta], usage: ev.Usage) -> ev.Usage:
        """Read the rest of a reply for up to `drain` seconds, unused: its usage report."""
        with contextlib.suppress(TimeoutError, LLMError):
            async with asyncio.timeout(self.drain):
                async for delta in stream:
                    if delta.usage is not None:
                        usage = delta.usage
                    if delta.text:
                        self.emit(ev.LLMToken(self.clock(), call, delta.text))
        return usage


__all__ = [
    "AGAIN",
    "PLANNER_IDS",
    "Agent",
    "Outcome",
    "PlaitError",
    "RetryPolicy",
    "Tactics",
    "Task",
    "edit_floor",
    "execute_plan",
    "prepare_plan",
    "put_back_edits",
]
