"""Hostile drafts and questions against the speculative join and the cached run's join: a
speculative joiner's decision must only ever be taken for the very plan and results it
joined (else a confident answer to another plan), never leave a stream open, and a cached
plan's template must not be lost to a model outage nor filled with a word for a name."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

import plait
from plait.agent.prompts import ASK_AGAIN, JOINER_SYSTEM
from plait.agent.templates import TemplateCache
from plait.core import events as ev
from plait.llm.base import Delta, Request
from plait.llm.replay import ReplayLLM

Q = "Which is taller, the Eiffel Tower or the Statue of Liberty?"
PLAN = (
    '1. search("Eiffel Tower")\n'
    '2. search("Statue of Liberty")\n'
    "3. compare($1, $2)\n"
    "4. join()\n<END_OF_PLAN>"
)
FINISH = "Thought: done.\nAction: Finish(the Eiffel Tower)"


def tools(log: list[str]) -> list[plait.Tool]:
    @plait.tool(pure=True)
    async def search(query: str) -> str:
        log.append(query)
        if query == "broken":
            raise RuntimeError("search is down")
        return f"{query}: {len(query) * 10} m"

    @plait.tool(pure=True)
    def compare(a: str, b: str) -> str:
        log.append("compare")
        return a if len(a) >= len(b) else b

    @plait.tool
    def notify(text: str) -> str:  # impure: never speculated
        log.append(f"notify {text}")
        return "sent"

    return [search, compare, notify]


async def say(text: str) -> AsyncIterator[Delta]:
    for line in text.splitlines(keepends=True):
        yield Delta(line)


class Model:
    """The planner waits (its thought) until a speculative join is asked or `gate` is set
    otherwise; a speculative (short) join replies `short`, or hangs until closed."""

    name = "hostile"
    supports_json_schema = False

    def __init__(self, plan: str, short: str | None, joins: list[str]) -> None:
        self.plan, self.short, self.joins = plan, short, joins
        self.gate = asyncio.Event()
        self.closed = asyncio.Event()
        self.asked: list[tuple[str, Request]] = []

    def stream(self, request: Request) -> AsyncIterator[Delta]:
        first = request.messages[0]["content"]
        last = request.messages[-1]["content"]
        if first == JOINER_SYSTEM and len(request.messages) == 2 and not self.joins_asked():
            self.asked.append(("short", request))
            return self.speculative()
        if "Now decide" in last or last == ASK_AGAIN:
            self.asked.append(("joiner", request))
            return say(self.joins.pop(0))
        self.asked.append(("planner", request))
        return self.planner()

    def joins_asked(self) -> bool:
        return any(role != "planner" for role, _ in self.asked)

    async def speculative(self) -> AsyncIterator[Delta]:
        self.gate.set()
        try:
            if self.short is None:
                yield Delta("Thought: ")
                await asyncio.Event().wait()
            async for d in say(self.short or ""):
                yield d
        finally:
            self.closed.set()

    async def planner(self) -> AsyncIterator[Delta]:
        async with asyncio.timeout(30):  # a failsafe: a broken test fails, not hangs
            await self.gate.wait()
        async for d in say(self.plan):
            yield d

    def roles(self) -> list[str]:
        return [role for role, _ in self.asked]


async def run(model: Model, draft: str, log: list[str], **kw: Any) -> Any:
    return await plait.arun(Q, tools=tools(log), model=model, draft_model=ReplayLLM([draft]), **kw)


async def cancel_and_check_nothing_is_left(task: asyncio.Task[Any], model: Any) -> None:
    """Cancel a run mid-speculation: it ends cancelled, the model's speculative stream was
    closed, and no speculation task outlives it."""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert model.closed.is_set()
    names = {t.get_name() for t in asyncio.all_tasks()}
    assert not {n for n in names if n.startswith("plait-spec")}


def joins(result: Any) -> tuple[int, int, int]:
    j = result.to_dict()["savings"]["speculated_joins"]
    return j["speculated"], j["used"], j["wasted"]


async def test_the_same_calls_numbered_otherwise_are_another_plan() -> None:
    """The draft's plan computes the same thing with its ids swapped: its joiner saw other
    references, so its decision is not taken (the calls themselves are still adopted)."""
    log: list[str] = []
    draft = (
        '1. search("Statue of Liberty")\n2. search("Eiffel Tower")\n3. compare($2, $1)\n4. join()\n'
    )
    model = Model(PLAN, "Thought: x\nAction: Finish(a speculative answer)", [FINISH])
    result = await run(model, draft, log)
    assert result.answer == "the Eiffel Tower"
    assert model.roles() == ["planner", "short", "joiner"]
    assert joins(result) == (1, 0, 1)
    assert log.count("Eiffel Tower") == 1  # the speculated searches are adopted all the same


async def test_a_real_plan_with_one_more_task_is_another_plan() -> None:
    log: list[str] = []
    more = PLAN.replace("4. join()", '4. search("Big Ben")\n5. join()')
    draft = PLAN.replace("<END_OF_PLAN>", "")
    model = Model(more, None, [FINISH])
    result = await run(model, draft, log)
    assert result.answer == "the Eiffel Tower"
    assert model.closed.is_set()  # the hanging speculative stream was closed
    assert joins(result) == (1, 0, 1)


async def test_an_impure_task_in_the_draft_means_no_speculative_join() -> None:
    log: list[str] = []
    plan = '1. search("Eiffel Tower")\n2. notify($1)\n3. join()\n<END_OF_PLAN>'
    model = Model(plan, FINISH, [FINISH])
    model.gate.set()  # no speculative join will let the planner go
    result = await run(model, plan.replace("<END_OF_PLAN>", ""), log)
    assert result.status == "done", result.error
    assert model.roles() == ["planner", "joiner"]
    assert log.count("notify Eiffel Tower: 120 m") == 1  # run once, by the plan only
    assert joins(result) == (0, 0, 0)


@pytest.mark.parametrize(
    "draft",
    [
        # no join() at the end
        '1. search("Eiffel Tower")\n2. search("Statue of Liberty")\n3. compare($1, $2)\n',
        '1. search("broken")\n2. compare($1, $1)\n3. join()\n',  # a speculated call fails
        '1. search("Eiffel Tower")\n2. compare($1, $3)\n3. join()\n',  # a reference ahead
        "".join(f'{i}. search("q{i}")\n' for i in range(1, 11)) + "11. join()\n",  # too many
        '1. search("Eiffel Tower")\n2. nosuchtool($1)\n3. join()\n',
    ],
)
async def test_no_whole_draft_plan_no_speculative_join(draft: str) -> None:
    log: list[str] = []
    model = Model(PLAN, FINISH, [FINISH])
    model.gate.set()
    result = await run(model, draft, log)
    assert result.status == "done", result.error
    assert result.answer == "the Eiffel Tower"
    assert "short" not in model.roles()
    assert joins(result) == (0, 0, 0)


async def test_an_adopted_reply_with_no_decision_is_asked_again_on_the_short_prompt() -> None:
    log: list[str] = []
    model = Model(PLAN, "I think it is the tower.", [FINISH])
    result = await run(model, PLAN.replace("<END_OF_PLAN>", ""), log)
    assert result.answer == "the Eiffel Tower"
    assert model.roles() == ["planner", "short", "joiner"]
    short, again = model.asked[1][1], model.asked[2][1]
    assert again.messages[:2] == short.messages  # the joiner's own prompt, not the planner's
    assert again.messages[2] == {"role": "assistant", "content": "I think it is the tower."}
    assert again.messages[-1]["content"] == ASK_AGAIN
    assert joins(result) == (1, 1, 0)


async def test_a_run_cancelled_during_a_speculative_join_closes_it() -> None:
    log: list[str] = []
    model = Model(PLAN, None, [])
    model.planner = lambda: hang(model)  # type: ignore[method-assign]

    async def hang(m: Model) -> AsyncIterator[Delta]:
        await asyncio.Event().wait()
        yield Delta("")

    task = asyncio.create_task(run(model, PLAN.replace("<END_OF_PLAN>", ""), log))
    async with asyncio.timeout(30):
        await model.gate.wait()  # the speculative join is asked
    await cancel_and_check_nothing_is_left(task, model)


async def test_replayed_events_of_an_adopted_join_are_those_of_a_call() -> None:
    log: list[str] = []
    model = Model(PLAN, FINISH, [])
    events: list[Any] = []
    result = await run(model, PLAN.replace("<END_OF_PLAN>", ""), log, on_event=events.append)
    assert result.answer == "the Eiffel Tower"
    tokens = "".join(e.text for e in events if isinstance(e, ev.LLMToken) and e.call == 2)
    assert tokens == FINISH
    assert [e.call for e in events if isinstance(e, ev.LLMStarted)] == [1, 2]


async def test_a_word_is_never_a_cached_plan_s_name() -> None:
    """A name slot once took "And": the cached plan would search("And")."""
    log: list[str] = []
    cache = TemplateCache.for_tools(plait.Tools(tools(log)))
    llm = ReplayLLM([PLAN, FINISH])
    await plait.arun(Q, tools=tools(log), model=llm, plan_cache=cache)
    other = "Which is taller, the And or the Statue of Liberty?"
    plan = PLAN.replace("Eiffel Tower", "And")
    llm = ReplayLLM([plan, FINISH])
    result = await plait.arun(other, tools=tools(log), model=llm, plan_cache=cache)
    assert result.to_dict()["plan_cache"]["hit"] is False
    assert llm.count == 2  # planned
