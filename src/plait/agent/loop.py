"""The agent loop: planner ─stream─▶ parser ─tasks─▶ scheduler ─results─▶ joiner ─▶ answer | replan.

`execute_plan` runs a written plan; `answer_question` plans, runs and joins, replanning
within `max_replans`. Both feed one Scheduler and report through one event stream. Tasks are
handed to the scheduler the moment the parser completes them, while the planner is still
streaming: that is LLMCompiler's task fetching unit, with no separate queue.

An LLM reply that is lost mid-stream (LLMError with retryable=True) is asked for again with
backoff; tasks the lost reply already dispatched are not dispatched twice.

Resuming is replaying: the loop runs again from the start, with the replies a store kept
(`replies`, by call number) given back instead of asking the model, and the scheduler's
journal settling recorded tasks without running them. Given the same replies the loop makes
the same calls, so a resumed run picks up exactly where the log ends.

How the model is asked depends on what it can do (`Tactics` switches each technique off for
bench/answers.py): a model that scores text (llama.cpp in-process) makes the plan's and the
decision's choices among candidates (choose.py); one that follows a JSON Schema writes the
plan as JSON under the plan schema, its lookups limited to phrases of the question, and the
joiner's decision under a pattern; any other writes free text. The joiner's reply is read
strictly: a reply with no decision, or an echo of the instructions' template, is a failed
call, asked again up to `JOIN_RETRIES` times and never taken as the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from ..core import events as ev
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
    join_turn,
    observations,
    parse_decision,
    planner_messages,
    replan_turn,
    select_examples,
)
from .schema import plan_schema

STOP = ("<END_OF_PLAN>",)
JOIN_RETRIES = 2  # joiner replies without a decision asked again, after the first


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


TACTICS: contextvars.ContextVar[Tactics] = contextvars.ContextVar("plait_tactics")


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


class Outcome:
    """What the loop concluded: an answer, or why there is none."""

    def __init__(self) -> None:
        self.answer: str | None = None
        self.error: str | None = None


def prepare_plan(text: str, tools: Tools) -> list[Task]:
    """A written plan's tasks, each checked against its tool: PlanError before anything runs."""
    tasks = [tools.prepare(t) for t in parse_plan(text, tools=tools)]
    if not tasks:
        raise PlanError("the plan has no tasks")
    return tasks


async def execute_plan(tasks: list[Task], scheduler: Scheduler, outcome: Outcome) -> None:
    """Run a whole written plan, prepared by `prepare_plan`."""
    for i, task in enumerate(tasks, 1):
        scheduler.add(task, checked=True)
        if i % 32 == 0:
            # Let dispatched tasks run while the rest are added: they start sooner, and a
            # huge plan never holds all its coroutines in memory at once.
            await asyncio.sleep(0)
    await scheduler.wait()
    # The answer of a written plan is its last task's result, if every task succeeded.
    if all(n.status == "done" for n in scheduler.graph.nodes.values()):
        outcome.answer = result_text(scheduler.graph.nodes[tasks[-1].id].result)


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
    ) -> None:
        self.llm = llm
        self.replies = replies or {}
        # Tasks as an earlier session dispatched them. A reply lost mid-stream and asked
        # again may define an id differently from the tasks it had already dispatched; the
        # kept reply is the second one, so on replay the dispatched definitions win.
        self.defined = defined or {}
        self._replaying = False
        self.scheduler = scheduler
        self.emit = emit
        self.clock = clock
        self.run_id = run_id
        self.max_replans = max_replans
        self.examples = examples
        self.retry = retry or RetryPolicy()
        self.tactics = TACTICS.get(Tactics())
        self.drain = 1.0  # seconds to keep reading a reply after it gave all we needed
        self._conversation: list[dict[str, str]] = []  # every call extends this prefix
        self._reported: set[int] = set()  # tasks whose results the conversation shows
        self._calls = 0
        self._question = ""
        self._choosing = False  # this run's plans are chosen among candidates

    async def answer(self, question: str, outcome: Outcome) -> None:
        self._question = question
        reason: str | None = None
        for round_ in range(self.max_replans + 1):
            if round_:
                self.emit(ev.Replanning(self.clock(), round_, reason or ""))
            try:
                error = await self._plan(question, reason)
                await self.scheduler.wait()
                decision = None if error is not None else await self._decide(question, outcome)
            except LLMError as e:
                outcome.error = f"{self.llm.name}: {e}"
                return
            if error is not None:
                self.emit(ev.PlanInvalid(self.clock(), error))
                reason = f"the previous plan could not be run: {error}. Write a valid plan"
                outcome.error = f"invalid plan: {error}"
                continue
            if decision is None:
                return  # outcome.error says why
            if decision.action == "finish":
                outcome.answer, outcome.error = decision.text, None
                self.emit(ev.Answered(self.clock(), decision.text))
                return
            reason = decision.text or "the joiner asked for a new plan"
            times = "once" if round_ == 0 else f"{round_ + 1} times"
            outcome.error = f"the joiner asked for a new plan {times}: {reason}"
        if outcome.error is None:
            outcome.error = "no answer"

    async def _decide(self, question: str, outcome: Outcome) -> Decision | None:
        """The joiner's decision, asked again while a reply holds none; None if it never did."""
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
            outcome.error = f"the joiner gave no decision in {asked} replies; the last: {excerpt}"
        return decision

    # planner ---------------------------------------------------------------------------

    def _unreported(self) -> str:
        """Observations of the tasks the conversation has not shown yet."""
        nodes = [n for i, n in self.scheduler.graph.nodes.items() if i not in self._reported]
        self._reported.update(n.task.id for n in nodes)
        return observations([(n.task, n.status, n.result, n.error) for n in nodes])

    async def _plan(self, question: str, reason: str | None) -> str | None:
        """Stream one plan into the scheduler; return the plan's error, if it had one."""
        graph = self.scheduler.graph
        known = set(graph.nodes)
        next_id = max(known, default=0) + 1
        chooser = self._plan_chooser(question, next_id)
        json_form = self.llm.supports_json_schema and chooser is None
        if not self._conversation:
            shots = self.examples
            if shots and self.tactics.similar_examples:
                shots = select_examples(shots, question, self.tactics.examples)
            self._conversation = planner_messages(
                question,
                self.scheduler.tools,
                examples=shots,
                json_form=json_form,
                compact=chooser is not None,
            )
        else:
            turn = replan_turn(reason or "", self._unreported(), next_id)
            self._conversation = [*self._conversation, turn]
        request = Request(
            self._conversation,
            stop=() if json_form else STOP,
            json_schema=plan_schema(
                self.scheduler.tools,
                next_id,
                question=question if self.tactics.ground else None,
            )
            if json_form
            else None,
            session=self.run_id,
        )
        added: set[int] = set()
        parser = PlanParser(known, self.scheduler.tools)
        reply: list[str] = []

        def restart() -> None:
            nonlocal parser
            parser = PlanParser(known, self.scheduler.tools)

        def on_text(text: str) -> bool:
            for task in parser.feed(text):
                if task.id in added:
                    continue  # dispatched by a reply that was lost and retried
                if self._replaying:
                    task = self.defined.get(task.id, task)
                if task.id < next_id:
                    raise PlanError(f"task id {task.id} must be {next_id} or more", line=task.line)
                self.scheduler.add(task)
                added.add(task.id)
            return parser.done

        try:
            try:
                source = chooser.stream if chooser is not None else None
                await self._complete("planner", request, on_text, restart, reply, source)
                on_text("")
                for task in parser.close():
                    if task.id not in added:
                        if self._replaying:
                            task = self.defined.get(task.id, task)
                        self.scheduler.add(task)
                        added.add(task.id)
            finally:
                self._say("".join(reply))
        except PlanError as e:
            return str(e)
        if not added and not parser.joined:
            return "the plan has no tasks and no join()"
        return None

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
            if n.status == "done" and n.task.tool in known
        ]
        chooser = PlanChooser(scorer, tools, question, next_id, earlier)
        if not self._conversation:  # the first plan decides how the run plans
            self._choosing = any(chooser.arguments(shape) for shape in known.values())
        # If no tool can start a plan, the model plans freely.
        return chooser if self._choosing else None

    async def _join(self, question: str) -> str:
        self._conversation = [
            *self._conversation,
            join_turn(question, self._unreported()),
        ]
        return await self._join_call()

    async def _join_call(self) -> str:
        parts: list[str] = []
        scorer = self._scorer()
        source: Callable[[Request], AsyncIterator[Delta]] | None = None
        schema = None
        if scorer is not None:
            nodes = list(self.scheduler.graph.nodes.values())
            consumed = {d for n in nodes for d in n.task.deps}
            # The plan's outputs are the results no later task took.
            outputs = [n.result for n in nodes if n.status == "done" and n.task.id not in consumed]
            texts = [n.result for n in nodes if n.status == "done" and isinstance(n.result, str)]
            failures = [
                f"task {n.task.id} {n.task.tool} {n.status}: {n.error}"
                for n in nodes
                if n.status != "done"
            ]
            source = DecisionChooser(
                scorer,
                outputs,
                failures,
                texts,
                question=self._question,
                calibration=CALIBRATION if self.tactics.calibrate else 0.0,
            ).stream
        elif self.tactics.constrain_join and self.llm.supports_json_schema:
            schema = JOIN_SCHEMA
        request = Request(self._conversation, json_schema=schema, session=self.run_id)
        await self._complete("joiner", request, lambda text: False, lambda: None, parts, source)
        reply = "".join(parts)
        self._say(reply)
        return reply

    def _say(self, text: str) -> None:
        """Record the model's reply as its turn in the run's conversation."""
        self._conversation = [*self._conversation, {"role": "assistant", "content": text}]

    # one LLM call, with retries --------------------------------------------------------

    async def _complete(
        self,
        role: str,
        request: Request,
        on_text: Callable[[str], bool],
        restart: Callable[[], None],
        reply: list[str],
        source: Callable[[Request], AsyncIterator[Delta]] | None = None,
    ) -> None:
        """Stream a reply into `on_text` (True when it needs no more), retrying lost replies.

        `reply` collects the text `on_text` was given: the reply as the run used it. After
        `on_text` is satisfied the rest of the reply is still read for up to `drain` seconds,
        unused, so the server's usage report (sent last) is not lost.
        """
        self._calls += 1
        call = self._calls
        kept = self.replies.get(call)
        self._replaying = kept is not None  # until the next call: the plan's close() too
        if kept is not None:
            await self._replay(call, role, kept, on_text, reply)
            return
        self.emit(ev.LLMStarted(self.clock(), call, role, self.llm.name))
        usage = ev.Usage()
        attempt = 0

        def text() -> str:
            return "".join(reply)

        while True:
            try:
                stream = (source or self.llm.stream)(request)
                satisfied = False
                async with contextlib.aclosing(stream):  # type: ignore[type-var]
                    async for delta in stream:
                        if delta.usage is not None:
                            usage = delta.usage
                        if delta.text:
                            self.emit(ev.LLMToken(self.clock(), call, delta.text))
                            reply.append(delta.text)
                            if on_text(delta.text):
                                satisfied = True
                                break
                    if satisfied:
                        with contextlib.suppress(TimeoutError, LLMError):
                            async with asyncio.timeout(self.drain):
                                async for delta in stream:
                                    if delta.usage is not None:
                                        usage = delta.usage
                                    if delta.text:
                                        self.emit(ev.LLMToken(self.clock(), call, delta.text))
                self.emit(ev.LLMFinished(self.clock(), call, usage, None, text()))
                return
            except LLMError as e:
                if not e.retryable or attempt >= self.retry.attempts:
                    self.emit(ev.LLMFinished(self.clock(), call, usage, str(e)))
                    raise
                delay = self.retry.delay(attempt, e.retry_after)
                attempt += 1
                self.emit(ev.LLMRetrying(self.clock(), call, attempt, str(e), delay))
                await asyncio.sleep(delay)
                reply.clear()
                restart()
            except PlanError:
                # The reply arrived; it is the plan that is wrong (reported as PlanInvalid).
                self.emit(ev.LLMFinished(self.clock(), call, usage, None, text()))
                raise
            except BaseException as e:
                self.emit(ev.LLMFinished(self.clock(), call, usage, f"{type(e).__name__}: {e}"))
                raise

    async def _replay(
        self,
        call: int,
        role: str,
        kept: ev.LLMFinished,
        on_text: Callable[[str], bool],
        reply: list[str],
    ) -> None:
        """Give back a reply an earlier session received, as if the model had just sent it."""
        self.emit(ev.LLMStarted(self.clock(), call, role, self.llm.name, True))
        reply.append(kept.text)
        try:
            # Line by line, as it streamed: a bad line later on must not take the tasks
            # before it along (the first session dispatched them before reaching it).
            for line in kept.text.splitlines(keepends=True):
                if on_text(line):
                    break
        finally:
            self.emit(ev.LLMFinished(self.clock(), call, kept.usage, None, kept.text, True))
        await asyncio.sleep(0)


__all__ = [
    "TACTICS",
    "Agent",
    "Outcome",
    "PlaitError",
    "RetryPolicy",
    "Tactics",
    "Task",
    "execute_plan",
    "prepare_plan",
]
