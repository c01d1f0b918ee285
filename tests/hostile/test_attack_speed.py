"""Adversarial pass on the speculative join and the cached plan's short join prompt (issue
18): a speculative joiner's call must end with the run however it ends, its decision be taken
only for the very plan and results it joined, and the accounting say what happened; a
cached plan's name slot takes one name, never a list."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

import plait
from plait.agent.loop import RetryPolicy
from plait.agent.parse import parse_plan
from plait.agent.prompts import JOINER_SYSTEM
from plait.agent.speculate import JoinStats, SpeculativeJoin
from plait.agent.templates import learn
from plait.core import events as ev
from plait.llm.base import Delta, LLMError, Request, Usage
from plait.llm.replay import ReplayLLM

from .test_speed2 import FINISH, PLAN, Model, cancel_and_check_nothing_is_left, joins, run, tools


async def test_a_run_cancelled_while_replaying_an_adopted_join_closes_its_stream() -> None:
    """The speculative join was adopted (the real plan is the draft's) and its reply is still
    streaming when the run is cancelled: its stream must be closed with the run, not left
    reading the model in a task nobody awaits."""
    log: list[str] = []
    model = Model(PLAN, None, [])  # the speculative joiner says "Thought: " and hangs
    replaying = asyncio.Event()

    def on_event(e: Any) -> None:
        if isinstance(e, ev.LLMToken) and e.call == 2:
            replaying.set()  # the run reads the adopted reply as its joiner call

    draft = PLAN.replace("<END_OF_PLAN>", "")
    task = asyncio.create_task(run(model, draft, log, on_event=on_event))
    async with asyncio.timeout(30):
        await replaying.wait()
    await cancel_and_check_nothing_is_left(task, model)


class CutModel(Model):
    """A speculative joiner whose stream stops mid-answer with a CancelledError of its own
    (a client that gave up, not a cancel of the run)."""

    async def speculative(self) -> AsyncIterator[Delta]:
        self.gate.set()
        yield Delta("Thought: done.\nAction: Finish(the Eif")
        raise asyncio.CancelledError


async def test_a_speculative_reply_cut_by_its_own_cancel_is_not_adopted() -> None:
    """Cut short, the reply is no reply (asked after the plan, it would have ended the run
    with that error): taking it would answer "the Eif" with exit 0 (a cut Finish( is kept as
    cut at max tokens)."""
    log: list[str] = []
    model = CutModel(PLAN, None, [FINISH])
    result = await run(model, PLAN.replace("<END_OF_PLAN>", ""), log)
    assert result.status == "done", result.error
    assert result.answer == "the Eiffel Tower"
    assert model.roles() == ["planner", "short", "joiner"]
    assert joins(result) == (1, 0, 1)


class LostAfterAdoption(Model):
    """A speculative joiner whose reply is lost (a retryable error) once the run has adopted
    it: the joiner's answer then comes from a new call."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.adopted = asyncio.Event()

    async def speculative(self) -> AsyncIterator[Delta]:
        self.gate.set()
        yield Delta("Thought: ")
        async with asyncio.timeout(30):
            await self.adopted.wait()
        raise LLMError("connection reset", retryable=True)


async def test_an_adopted_join_lost_and_asked_again_is_not_counted_used() -> None:
    """savings.speculated_joins must say what happened: the speculative call gave no reply
    the run used (its retry did), so it was wasted, not used."""
    log: list[str] = []
    model = LostAfterAdoption(PLAN, None, [FINISH])

    def on_event(e: Any) -> None:
        if isinstance(e, ev.LLMToken) and e.call == 2:
            model.adopted.set()

    draft = PLAN.replace("<END_OF_PLAN>", "")
    result = await run(model, draft, log, on_event=on_event, retry=RetryPolicy(base=0.0))
    assert result.status == "done", result.error
    assert result.answer == "the Eiffel Tower"
    assert model.roles() == ["planner", "short", "joiner"]
    assert joins(result) == (1, 0, 1)


async def test_a_discarded_join_counts_the_seconds_it_ran_not_those_it_waited() -> None:
    """A speculative join that finished its reply, then waited for the plan and was
    discarded, cost its model only the time it ran (as speculated calls count theirs)."""
    now = [0.0]
    stats = JoinStats()
    ended = asyncio.Event()

    class Quick:
        name = "quick"
        supports_json_schema = False

        async def stream(self, request: Request) -> AsyncIterator[Delta]:
            now[0] = 2.0  # the reply took 2 s
            yield Delta("Thought: x\nAction: Finish(y)", usage=Usage(50, 5))
            ended.set()

    join = SpeculativeJoin(Quick(), Request([]), [], {}, stats, clock=lambda: now[0])  # type: ignore[arg-type]
    async with asyncio.timeout(30):
        await ended.wait()
    while not join.finished:
        await asyncio.sleep(0)
    now[0] = 10.0  # the plan it joined turned out another, 8 s later
    await join.discard()
    assert (stats.wasted, stats.wasted_seconds, stats.wasted_tokens) == (1, 2.0, 55)


class Crash(Exception):
    """The process dies here (a SIGKILL, as far as the run log can tell)."""


class CrashMidReplay(Model):
    """The speculative joiner's reply is adopted, then the process dies while it streams."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.adopted = asyncio.Event()

    async def speculative(self) -> AsyncIterator[Delta]:
        self.gate.set()
        yield Delta("Thought: both")
        async with asyncio.timeout(30):
            await self.adopted.wait()
        raise Crash


async def test_resume_after_dying_in_an_adopted_join_asks_the_joiner_again(tmp_path) -> None:
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    log: list[str] = []
    model = CrashMidReplay(PLAN, None, [])

    def on_event(e: Any) -> None:
        if isinstance(e, ev.LLMToken) and e.call == 2:
            model.adopted.set()

    draft = PLAN.replace("<END_OF_PLAN>", "")
    with pytest.raises(Crash):
        await run(model, draft, log, store=store, run_id="r1", on_event=on_event)
    again = ReplayLLM([FINISH])
    result = await plait.aresume("r1", tools=tools(log), store=store, model=again)
    assert result.status == "done", result.error
    assert result.answer == "the Eiffel Tower"
    assert again.count == 1  # the planner's reply replayed, the joiner asked again
    assert log.count("Eiffel Tower") == 1 and log.count("compare") == 1  # nothing run twice


def test_a_name_slot_takes_no_list_of_names() -> None:
    """ "the Eiffel Tower, Big Ben or the Statue of Liberty" filled the first name slot with
    "Eiffel Tower, Big Ben": the cached plan for two landmarks searched one query for two
    and its joiner compared two of three, with no planner call to notice (as "Eiffel Tower
    and Big Ben" and "Tower & Bridge" are already refused)."""
    plan = '1. search("Eiffel Tower")\n2. search("Statue of Liberty")\n3. compare($1, $2)\n'
    ask = "Which is taller, the {} or the {}?"
    t = learn(ask.format("Eiffel Tower", "Statue of Liberty"), parse_plan(plan))
    assert t is not None and t.slots == [("name", 2), ("name", 3)]
    assert t.fit(ask.format("Big Ben", "Tokyo Skytree")) == ["Big Ben", "Tokyo Skytree"]
    assert t.fit(ask.format("Eiffel Tower, Big Ben", "Statue of Liberty")) is None
    assert t.fit(ask.format("Big Ben", "Tokyo Skytree, Burj Khalifa")) is None


class RefusesAtOnce(Model):
    """A model whose stream() raises as it is called (a plain function, not a generator:
    LLM.stream need only return an iterator), for the speculative join's request."""

    def stream(self, request: Request) -> AsyncIterator[Delta]:
        if request.messages[0]["content"] == JOINER_SYSTEM and not self.joins_asked():
            self.asked.append(("short", request))
            self.gate.set()
            raise LLMError("429 too many requests", retryable=True)
        return super().stream(request)


async def test_a_speculative_join_whose_call_raises_at_once_is_not_adopted() -> None:
    """The call raised before its stream began: the join was taken as still streaming,
    adopted, and its replay waited forever (the run hung)."""
    log: list[str] = []
    model = RefusesAtOnce(PLAN, None, [FINISH])
    async with asyncio.timeout(30):  # a failsafe: the defect hangs
        result = await run(model, PLAN.replace("<END_OF_PLAN>", ""), log)
    assert result.status == "done", result.error
    assert result.answer == "the Eiffel Tower"
    assert model.roles() == ["planner", "short", "joiner"]
    assert joins(result) == (1, 0, 1)
