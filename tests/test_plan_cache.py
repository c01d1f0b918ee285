"""A cached run's join (agent/loop.py): a plan no planner call of the run wrote is joined on a
short prompt of its own, the same again on resume; a replan still goes to the planner; a
joiner that fails (the model, not the plan) is no miss of the template."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

import plait
from plait.agent.prompts import JOINER_SYSTEM, PLANNER_SYSTEM
from plait.agent.templates import TemplateCache
from plait.llm.base import Delta, LLMError, Request, Usage
from plait.llm.replay import ReplayLLM
from plait.stores.memory import MemoryStore
from speedtools import PLAN, Q1, Q2, make_tools

FINISH = "Thought: done.\nAction: Finish({})"
PLANNER_START = PLANNER_SYSTEM.split("\n")[0][:40]


async def taught(tools: list[plait.Tool], **kw: object) -> None:
    """Teach the cache Q1's plan (a planned run: its joiner on the planner's conversation)."""
    llm = ReplayLLM([PLAN, FINISH.format("Eiffel")])
    first = await plait.arun(Q1, tools=tools, model=llm, plan_cache=kw.pop("cache", True), **kw)  # type: ignore[arg-type]
    assert first.status == "done" and first.to_dict()["plan_cache"]["learned"]
    # The normal path is unchanged: the joiner continues the planner's conversation.
    assert llm.calls[1].messages[:2] == llm.calls[0].messages
    assert llm.calls[1].messages[0]["content"].startswith(PLANNER_START)


async def test_a_cached_plan_is_joined_on_a_short_prompt_of_its_own() -> None:
    tools = make_tools()
    cache = TemplateCache.for_tools(plait.Tools(tools))
    await taught(tools, cache=cache)
    llm = ReplayLLM([FINISH.format("Burj")])
    result = await plait.arun(Q2, tools=tools, model=llm, plan_cache=cache)
    assert result.status == "done", result.error
    assert result.answer == "Burj"
    [sent] = llm.calls
    assert [m["role"] for m in sent.messages] == ["system", "user"]
    assert sent.messages[0]["content"] == JOINER_SYSTEM  # no planner instructions, no examples
    user = sent.messages[1]["content"]
    assert user.startswith(f"Question: {Q2}\n")
    # The plan as canonical task lines, each followed by its result.
    assert "1. search(query='Burj Khalifa')\nObservation: Burj Khalifa: 120 m" in user
    assert "3. compare(a='$1', b='$2')\nObservation: " in user
    assert "<END_OF_PLAN>" not in user and "join()" not in user
    assert PLANNER_START not in str(sent.messages)


async def test_a_replan_after_a_cached_plan_asks_the_planner_on_its_conversation() -> None:
    tools = make_tools()
    cache = TemplateCache.for_tools(plait.Tools(tools))
    await taught(tools, cache=cache)
    replan = "Thought: not enough.\nAction: Replan(look again)"
    again = '5. search("Burj Khalifa height")\n6. join()\n<END_OF_PLAN>'
    llm = ReplayLLM([replan, again, FINISH.format("B")])
    result = await plait.arun(Q2, tools=tools, model=llm, plan_cache=cache)
    assert result.status == "done", result.error
    joiner, planner, last = llm.calls
    assert joiner.messages[0]["content"] == JOINER_SYSTEM
    # The planner is asked as today: its instructions, the cached plan, the join, the Replan.
    assert planner.messages[0]["content"].startswith(PLANNER_START)
    assert planner.messages[1]["content"] == f"Question: {Q2}"
    assert "search(query='Burj Khalifa')" in planner.messages[2]["content"]
    assert {"role": "assistant", "content": replan} in planner.messages
    # The join after a replan is a planned one: on the conversation (affinity).
    assert last.messages[: len(planner.messages)] == planner.messages


async def test_a_resumed_cached_run_sends_its_joiner_the_same_prompt(tmp_path) -> None:
    tools = make_tools()
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    await taught(tools, store=store)
    whole = ReplayLLM([FINISH.format("Burj")])
    await plait.arun(Q2, tools=tools, model=whole, plan_cache=True, store=store, run_id="a")

    class Stop(Exception):
        pass

    class Dies(ReplayLLM):
        async def stream(self, request: Request) -> AsyncIterator[Delta]:
            raise Stop
            yield Delta("")

    with pytest.raises(Stop):
        await plait.arun(Q2, tools=tools, model=Dies([]), plan_cache=True, store=store, run_id="b")
    llm = ReplayLLM([FINISH.format("Burj")])
    result = await plait.aresume("b", tools=tools, store=store, model=llm)
    assert result.status == "done", result.error
    assert [c.messages for c in llm.calls] == [whole.calls[0].messages]


async def test_a_joiner_that_fails_is_no_miss_of_the_template() -> None:
    """A model outage (LLMError after its retries) once counted as a miss: two of them
    dropped a good template."""
    tools = make_tools()
    cache = TemplateCache.for_tools(plait.Tools(tools), MemoryStore(), max_misses=2)
    await taught(tools, cache=cache)

    class Down(ReplayLLM):
        async def stream(self, request: Request) -> AsyncIterator[Delta]:
            raise LLMError("503 from the server", retryable=False)
            yield Delta("")

    for _ in range(3):
        result = await plait.arun(Q2, tools=tools, model=Down([]), plan_cache=cache)
        assert result.status != "done"
        assert result.to_dict()["plan_cache"]["hit"] is True
        assert result.to_dict()["plan_cache"]["missed"] is False
    assert cache.stats.misses == 0 and cache.stats.dropped == 0
    llm = ReplayLLM([FINISH.format("Burj")])  # the template is still there: no planner
    result = await plait.arun(Q2, tools=tools, model=llm, plan_cache=cache)
    assert result.answer == "Burj" and llm.count == 1


async def test_a_decision_chosen_by_score_keeps_the_conversation(monkeypatch) -> None:
    """A scoring model's decision was calibrated on the run's conversation: a cached plan
    does not change what it is chosen after."""
    from plait.agent.choose import DecisionChooser

    tools = make_tools()
    cache = TemplateCache.for_tools(plait.Tools(tools))
    await taught(tools, cache=cache)
    asked: list[Request] = []
    chosen = DecisionChooser.stream

    def stream(self: DecisionChooser, request: Request) -> AsyncIterator[Delta]:
        asked.append(request)
        return chosen(self, request)

    monkeypatch.setattr(DecisionChooser, "stream", stream)

    class Scores:
        name = "scores"
        supports_json_schema = False

        async def score(
            self, request: Request, prefix: str, candidates: Sequence[str]
        ) -> tuple[list[float], Usage]:
            return [0.0] + [-10.0] * (len(candidates) - 1), Usage(10, 1)

        async def stream(self, request: Request) -> AsyncIterator[Delta]:
            raise LLMError("a scoring model is not asked to generate")
            yield Delta()  # pragma: no cover

    result = await plait.arun(Q2, tools=tools, model=Scores(), plan_cache=cache)
    assert result.to_dict()["plan_cache"]["hit"] is True
    [request] = asked
    assert request.messages[0]["content"] != JOINER_SYSTEM
    assert request.messages[1]["content"] == f"Question: {Q2}"
    assert "search(query='Burj Khalifa')" in request.messages[2]["content"]
