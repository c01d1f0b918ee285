"""The three speed-ups through `plait.arun`: plan cache, speculation, parallel samples."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

import plait
from plait.agent.templates import TemplateCache
from plait.llm.base import Delta, Request, Usage
from plait.llm.replay import ReplayLLM
from plait.stores.memory import MemoryStore
from speedtools import PLAN, Q1, Q2, make_tools

FINISH = "Thought: done.\nAction: Finish({})"


class Stop(Exception):
    """The process dies under the run (as far as the run can tell)."""


# -- plan cache ------------------------------------------------------------------------


async def test_a_question_of_a_learned_shape_skips_the_planner() -> None:
    log: list[str] = []
    tools = make_tools(log)
    cache = TemplateCache.for_tools(plait.Tools(tools), MemoryStore())
    first = await plait.arun(
        Q1, tools=tools, model=ReplayLLM([PLAN, FINISH.format("Eiffel")]), plan_cache=cache
    )
    assert first.status == "done"
    assert first.to_dict()["plan_cache"]["hit"] is False
    assert first.to_dict()["plan_cache"]["learned"] is True
    llm = ReplayLLM([FINISH.format("Burj")])  # one reply: the joiner's; no planner call
    second = await plait.arun(Q2, tools=tools, model=llm, plan_cache=cache)
    assert second.status == "done", second.error
    assert second.answer == "Burj"
    data = second.to_dict()
    assert data["plan_cache"]["hit"] is True
    assert data["plan_cache"]["slots"] == ["Burj Khalifa", "Tokyo Skytree"]
    assert data["savings"]["planner_calls_skipped"] == 1
    assert llm.count == 1
    assert [q for q in log if q != "compare"][-2:] == ["Burj Khalifa", "Tokyo Skytree"]


async def test_without_the_flag_nothing_is_cached_or_shown() -> None:
    tools = make_tools([])
    result = await plait.arun(Q1, tools=tools, model=ReplayLLM([PLAN, FINISH.format("x")]))
    data = result.to_dict()
    assert "plan_cache" not in data
    assert data["savings"]["planner_calls_skipped"] == 0


async def test_a_replan_after_a_cached_plan_counts_a_miss_and_asks_the_planner() -> None:
    tools = make_tools([])
    cache = TemplateCache.for_tools(plait.Tools(tools), max_misses=2)
    await plait.arun(Q1, tools=tools, model=ReplayLLM([PLAN, FINISH.format("E")]), plan_cache=cache)
    replan = "Thought: not enough.\nAction: Replan(look again)"
    again = '5. search("Burj Khalifa")\n6. join()\n<END_OF_PLAN>'
    for _ in range(2):
        llm = ReplayLLM([replan, again, FINISH.format("B")])
        result = await plait.arun(Q2, tools=tools, model=llm, plan_cache=cache)
        assert result.status == "done"
        assert result.to_dict()["plan_cache"] == {
            "hit": True,
            "template": 0,
            "slots": ["Burj Khalifa", "Tokyo Skytree"],
            "missed": True,
            "learned": False,
        }
        assert llm.count == 3  # the joiner, the planner, the joiner
    # Dropped after two misses: the planner is asked again.
    llm = ReplayLLM([PLAN, FINISH.format("B")])
    result = await plait.arun(Q2, tools=tools, model=llm, plan_cache=cache)
    assert result.to_dict()["plan_cache"]["hit"] is False
    assert cache.stats.dropped == 1


async def test_a_cached_plan_resumes_from_the_store_without_the_planner(tmp_path) -> None:
    """The cached plan is kept with the run: a resume gives it back, not a planner call."""
    tools = make_tools([])
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    await plait.arun(
        Q1, tools=tools, model=ReplayLLM([PLAN, FINISH.format("E")]), plan_cache=True, store=store
    )

    class Dies(ReplayLLM):
        async def stream(self, request: Request) -> AsyncIterator[Delta]:
            raise Stop
            yield Delta("")

    with pytest.raises(Stop):
        await plait.arun(Q2, tools=tools, model=Dies([]), plan_cache=True, store=store, run_id="r2")
    llm = ReplayLLM([FINISH.format("Burj")])
    result = await plait.aresume("r2", tools=tools, store=store, model=llm)
    assert result.status == "done", result.error
    assert llm.count == 1


# -- speculation -------------------------------------------------------------------------


class Gated:
    """A planner that writes nothing until `gate` is set (its long thought)."""

    def __init__(self, replies: list[str], gate: asyncio.Event) -> None:
        self.inner = ReplayLLM(replies)
        self.gate = gate
        self.name = "gated"
        self.supports_json_schema = False

    async def stream(self, request: Request) -> AsyncIterator[Delta]:
        if self.inner.count == 0:
            async with asyncio.timeout(30):  # a failsafe: a broken speculation fails, not hangs
                await self.gate.wait()
        async for d in self.inner.stream(request):
            yield d


async def test_a_drafted_call_runs_while_the_planner_thinks_and_the_plan_adopts_it() -> None:
    entered = asyncio.Event()
    calls: list[str] = []

    @plait.tool(pure=True)
    async def search(query: str) -> str:
        calls.append(query)
        entered.set()  # the planner may go on only once this call is running
        return f"{query}: 330 m"

    @plait.tool
    async def notify(text: str) -> str:  # impure: never speculated
        calls.append(f"notify {text}")
        return "sent"

    plan = '1. search("Eiffel Tower")\n2. notify($1)\n3. join()\n<END_OF_PLAN>'
    draft = ReplayLLM(['1. search("Eiffel Tower")\n2. notify("x")\n3. search("Paris")\n'])
    planner = Gated([plan, FINISH.format("330 m")], entered)
    result = await plait.arun(
        "How tall is the Eiffel Tower?", tools=[search, notify], model=planner, draft_model=draft
    )
    assert result.status == "done", result.error
    assert calls.count("Eiffel Tower") == 1  # speculated, then adopted: run once
    assert "notify x" not in calls  # an impure tool's drafted call never ran
    assert [t.tool for t in result.tasks] == ["search", "notify"]  # Paris is no task
    spec = result.to_dict()["savings"]["speculated_calls"]
    assert (spec["started"], spec["used"], spec["wasted"]) == (2, 1, 1)


async def test_a_wrong_speculation_is_cancelled_and_counted() -> None:
    running = asyncio.Event()
    cancelled: list[str] = []

    @plait.tool(pure=True)
    async def search(query: str) -> str:
        if query == "wrong":
            running.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(query)
                raise
        return f"{query}: 1 m"

    plan = '1. search("right")\n2. join()\n<END_OF_PLAN>'
    planner = Gated([plan, FINISH.format("1 m")], running)
    result = await plait.arun(
        "How tall is it?",
        tools=[search],
        model=planner,
        draft_model=ReplayLLM(['1. search("wrong")\n']),
    )
    assert result.status == "done"
    assert cancelled == ["wrong"]
    assert [t.args for t in result.tasks] == [{"query": "right"}]
    spec = result.to_dict()["savings"]["speculated_calls"]
    assert (spec["used"], spec["wasted"]) == (0, 1)


# -- samples -----------------------------------------------------------------------------


class Warm:
    """Answers at temperature 0 at once; an attempt sampled warmer streams until cancelled,
    and says when its stream was closed."""

    def __init__(self) -> None:
        self.name = "warm"
        self.supports_json_schema = False
        self.closed = 0
        self.started = 0
        self.both_warm = asyncio.Event()  # the two warm attempts are streaming

    async def stream(self, request: Request) -> AsyncIterator[Delta]:
        planner = request.stop != ()
        if request.temperature == 0:
            if not planner:
                await self.both_warm.wait()  # answer only once the others are mid-stream
            # The answer is the search's ("x: 10 m"): one its plan backs, so it may stop the vote.
            text = '1. search("x")\n2. join()\n' if planner else "Action: Finish(10 m)"
            yield Delta(text)
            yield Delta("", Usage(10, 5))
            return
        self.started += 1
        if self.started == 2:
            self.both_warm.set()
        try:
            while True:
                yield Delta("Thought: hmm ")
                await asyncio.sleep(0)
        finally:
            self.closed += 1


async def test_samples_stop_at_agreement_closing_the_other_attempts_streams() -> None:
    llm = Warm()
    result = await plait.arun(
        "How tall?", tools=make_tools([]), model=llm, samples=3, agree=1, temperature=0
    )
    assert result.answer == "10 m"
    data = result.to_dict()
    assert [a["cut_short"] for a in data["attempts"]] == [False, True, True]
    assert data["savings"]["attempts_cut_short"] == 2
    assert data["savings"]["decided_by"] == "only one"
    assert llm.started == 2
    assert llm.closed == 2  # both warm streams were closed


async def test_samples_share_pure_calls_and_vote() -> None:
    log: list[str] = []

    class Same:
        name = "same"
        supports_json_schema = False

        async def stream(self, request: Request) -> AsyncIterator[Delta]:
            planner = request.stop != ()
            yield Delta('1. search("x")\n2. join()\n' if planner else "Action: Finish(42 m)")

    result = await plait.arun("How tall?", tools=make_tools(log), model=Same(), samples=3)
    assert result.answer == "42 m"
    assert log == ["x"]  # three attempts, one call
    assert len(result.to_dict()["attempts"]) == 3


def test_bad_sample_counts_are_refused() -> None:
    with pytest.raises(plait.PlaitError, match="agree must be between 1 and samples"):
        plait.run("q", tools=make_tools([]), model=ReplayLLM([]), samples=2, agree=3)
