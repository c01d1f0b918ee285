"""The speculative join (agent/loop.py `join_early`, agent/speculate.py `SpeculativeJoin`):
a draft's whole plan is speculated, its joiner started on the speculated results, and the
run adopts that call when the real plan and its results are the same; otherwise the call's
stream is closed and counted wasted. Ordering is proved by handshakes, never by sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import plait
from plait.agent.prompts import JOINER_SYSTEM
from plait.core import events as ev
from plait.llm.base import Delta, LLMError, Request, Usage
from plait.llm.replay import ReplayLLM
from speedtools import PLAN, make_tools
from speedtools import Q1 as Q

# The same tasks as a draft writes them: keywords, no thought (the same canonical calls).
DRAFT = (
    '1. search(query="Eiffel Tower")\n'
    '2. search("Statue of Liberty")\n'
    "3. compare(a=$1, b=$2)\n"
    "4. join()\n"
)
FINISH = "Thought: done.\nAction: Finish(the Eiffel Tower)"
REPLAN = "Thought: not enough.\nAction: Replan(look up Paris too)"


Reply = Callable[[Request], AsyncIterator[Delta]]


async def say(text: str) -> AsyncIterator[Delta]:
    for line in text.splitlines(keepends=True):
        yield Delta(line)
    yield Delta("", usage=Usage(100, 10))


class Routed:
    """A model that answers by role: the planner (its prompt is the planner's), the
    speculative or short joiner (JOINER_SYSTEM) and the joiner on the run's conversation.
    The planner writes nothing until `gate` is set; each role's requests are kept."""

    name = "routed"
    supports_json_schema = False

    def __init__(self, plans: list[str], short: list[Reply], joins: list[str]) -> None:
        self.plans, self.short, self.joins = plans, short, joins
        self.gate = asyncio.Event()
        self.asked: dict[str, list[Request]] = {"planner": [], "short": [], "joiner": []}

    def stream(self, request: Request) -> AsyncIterator[Delta]:
        first = request.messages[0]["content"]
        if first == JOINER_SYSTEM:
            self.asked["short"].append(request)
            return self.short.pop(0)(request)
        if "Now decide, for the question" in request.messages[-1]["content"] or (
            "That reply holds no decision" in request.messages[-1]["content"]
        ):
            self.asked["joiner"].append(request)
            return say(self.joins.pop(0))
        self.asked["planner"].append(request)
        return self.plan()

    async def plan(self) -> AsyncIterator[Delta]:
        if not self.asked["planner"][1:]:  # the first plan waits for the handshake
            async with asyncio.timeout(30):  # a failsafe: a broken test fails, not hangs
                await self.gate.wait()
        async for d in say(self.plans.pop(0)):
            yield d


def replying(text: str, model: Routed) -> Reply:
    """A speculative joiner that lets the planner go on once it is asked, then replies."""

    def reply(request: Request) -> AsyncIterator[Delta]:
        model.gate.set()
        return say(text)

    return reply


async def arun(model: Routed, draft: str, log: list[str], **kw: Any) -> tuple[Any, list[Any]]:
    events: list[Any] = []
    result = await plait.arun(
        Q,
        tools=make_tools(log),
        model=model,
        draft_model=ReplayLLM([draft]),
        on_event=events.append,
        **kw,
    )
    return result, events


async def test_an_adopted_speculative_join_is_the_runs_one_joiner_call() -> None:
    log: list[str] = []
    model = Routed([PLAN], [], [])
    model.short = [replying(FINISH, model)]
    result, events = await arun(model, DRAFT, log)
    assert result.status == "done", result.error
    assert result.answer == "the Eiffel Tower"
    assert len(model.asked["short"]) == 1 and model.asked["joiner"] == []  # called once
    assert log.count("Eiffel Tower") == 1 and log.count("compare") == 1  # adopted, run once
    # What the joiner was sent: its own prompt, the question and the canonical tasks.
    sent = model.asked["short"][0].messages
    assert sent[0]["content"] == JOINER_SYSTEM
    assert f"Question: {Q}" in sent[1]["content"]
    assert "3. compare(a='$1', b='$2')" in sent[1]["content"]
    # As if the joiner was called after the plan: its events, in order, with its text.
    started = [e for e in events if isinstance(e, ev.LLMStarted)]
    assert [(e.call, e.role) for e in started] == [(1, "planner"), (2, "joiner")]
    finished = {e.call: e for e in events if isinstance(e, ev.LLMFinished)}
    assert events.index(started[1]) > events.index(finished[1])
    assert finished[2].text == FINISH and finished[2].error is None
    assert finished[2].usage == Usage(100, 10)
    savings = result.to_dict()["savings"]
    assert savings["speculated_joins"]["speculated"] == 1
    assert savings["speculated_joins"]["used"] == 1
    assert savings["speculated_joins"]["wasted"] == 0
    assert savings["speculated_calls"]["used"] == 3  # compare($1, $2) too, on their results


async def test_another_plan_closes_the_speculative_join_and_counts_it() -> None:
    closed = asyncio.Event()

    def hangs(request: Request) -> AsyncIterator[Delta]:
        async def stream() -> AsyncIterator[Delta]:
            model.gate.set()
            try:
                yield Delta("Thought: ")
                await asyncio.Event().wait()
            finally:
                closed.set()

        return stream()

    log: list[str] = []
    model = Routed([PLAN], [hangs], [FINISH])
    draft = DRAFT.replace("Statue of Liberty", "Big Ben")
    result, _ = await arun(model, draft, log)
    assert result.status == "done", result.error
    assert closed.is_set()  # its stream was closed
    assert len(model.asked["joiner"]) == 1  # the joiner asked after the plan, as ever
    # On the run's conversation (the planner's prefix): the normal path, unchanged.
    assert model.asked["joiner"][0].messages[0] == model.asked["planner"][0].messages[0]
    joins = result.to_dict()["savings"]["speculated_joins"]
    assert (joins["speculated"], joins["used"], joins["wasted"]) == (1, 0, 1)
    assert {"query": "Big Ben"} not in [t.args for t in result.tasks]


async def test_a_replan_from_the_speculative_joiner_goes_to_the_planner() -> None:
    log: list[str] = []
    again = '5. search("Paris")\n6. join()\n<END_OF_PLAN>'
    model = Routed([PLAN, again], [], [FINISH])
    model.short = [replying(REPLAN, model)]
    result, events = await arun(model, DRAFT, log)
    assert result.status == "done", result.error
    assert [e.reason for e in events if isinstance(e, ev.Replanning)] == ["look up Paris too"]
    replan = model.asked["planner"][1].messages
    # The planner's own conversation, with the join turn and the adopted reply in it.
    assert replan[0] == model.asked["planner"][0].messages[0]
    assert {"role": "assistant", "content": REPLAN} in replan
    assert "look up Paris too" in replan[-1]["content"]
    assert result.to_dict()["savings"]["speculated_joins"]["used"] == 1
    assert log.count("Paris") == 1


async def test_a_speculative_joiner_that_fails_is_not_adopted() -> None:
    def fails(request: Request) -> AsyncIterator[Delta]:
        async def stream() -> AsyncIterator[Delta]:
            model.gate.set()
            raise LLMError("server gone", retryable=False)
            yield Delta("")

        return stream()

    log: list[str] = []
    model = Routed([PLAN], [fails], [FINISH])
    result, events = await arun(model, DRAFT, log)
    assert result.status == "done", result.error
    assert result.answer == "the Eiffel Tower"
    assert len(model.asked["joiner"]) == 1  # asked as ever, after the plan
    assert not [e for e in events if isinstance(e, ev.LLMFinished) and e.error]
    joins = result.to_dict()["savings"]["speculated_joins"]
    assert (joins["used"], joins["wasted"]) == (0, 1)


async def test_an_adopted_join_is_replayed_by_resume(tmp_path) -> None:
    """The adopted reply is in the run log as call 2: a resume replays it."""

    class Stop(Exception):
        pass

    store = f"sqlite:///{tmp_path / 'runs.db'}"
    log: list[str] = []
    model = Routed([PLAN], [], [])
    model.short = [replying(REPLAN, model)]
    first_plan = Routed.plan

    async def plan_then_die() -> AsyncIterator[Delta]:
        if model.asked["planner"][1:]:
            raise Stop  # the replanner's call: the process dies here
        async for d in first_plan(model):
            yield d

    model.plan = plan_then_die  # type: ignore[method-assign]
    with pytest.raises(Stop):
        await arun(model, DRAFT, log, store=store, run_id="r1")
    again = ReplayLLM(['5. search("Paris")\n6. join()\n<END_OF_PLAN>', FINISH])
    result = await plait.aresume("r1", tools=make_tools(log), store=store, model=again)
    assert result.status == "done", result.error
    assert again.count == 2  # the replanner and the last joiner: calls 1 and 2 replayed
    assert len(model.asked["short"]) == 1
