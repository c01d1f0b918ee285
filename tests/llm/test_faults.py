"""Runs through a real fault-injecting proxy in front of the real server finish correctly."""

from __future__ import annotations

from typing import Any

import pytest
from faultproxy import FaultProxy
from llamaserver import EXAMPLE_TOOLS

import plait
from plait.agent.loop import RetryPolicy
from plait.core import events as ev

pytestmark = pytest.mark.real_llm
QUESTIONS = [
    "How tall is the Eiffel Tower?",
    "How tall is the Statue of Liberty?",
    "How much taller is the Eiffel Tower than the Statue of Liberty?",
    "When was the Eiffel Tower completed?",
    "What is 330 minus 93?",
]
# the server form of response_format up front, so no fallback request eats a scripted fault
MODEL = "openai:smollm2?schema=json_object"
RUNS = 10  # on 2 busy cores a run takes several seconds; the proxy still faults ~20%
FAST_RETRY = RetryPolicy(attempts=8, base=0.05, cap=0.5)


async def test_runs_survive_injected_faults(server: str) -> None:
    from plait.runs.loading import load_tools

    tools = load_tools(EXAMPLE_TOOLS)
    events: list[Any] = []
    with FaultProxy(server.removesuffix("/v1"), rate=0.2, seed=7) as proxy:
        url = proxy.url + "/v1"
        results = []
        for i in range(RUNS):  # one after another: the server runs one request at a time
            results.append(await plait.arun(
                QUESTIONS[i % len(QUESTIONS)], tools=tools, model=MODEL, base_url=url,
                retry=FAST_RETRY, on_event=events.append,
            ))  # fmt: skip
        stats = dict(proxy.stats)
    # Every run ends with a result and no LLM call lost for good. (Whether the 135M model
    # answers is its own business: a run may end "failed" by the joiner asking to replan
    # until the budget is spent, faults or not; never by a fault.)
    for r in results:
        assert not [c.error for c in r.llm_calls if c.error], (r.status, r.error)
        model_said = ("no answer", "invalid plan", "the joiner asked", "the joiner gave no")
        assert r.status == "done" or r.error.startswith(model_said), r.error
        assert r.tasks
        for t in r.tasks:  # correct results: what the tool gives for those arguments
            if t.status == "done" and t.tool == "search":
                assert t.result == await tools["search"].fn(**t.args)
    injected = sum(stats.get(k, 0) for k in ("drop", "500", "429", "truncate"))
    assert injected > 0, stats
    retries = [e for e in events if isinstance(e, ev.LLMRetrying)]
    assert retries, stats
    assert sum(c.retries for r in results for c in r.llm_calls) == len(retries)


async def test_truncated_plan_is_not_dispatched_twice(server: str) -> None:
    calls: list[str] = []

    @plait.tool
    async def search(query: str) -> str:
        """Look up one fact; returns a sentence."""
        calls.append(query)
        return f"{query}: 42 metres."

    # the first planner reply is cut just after its first task object closed
    with FaultProxy(server.removesuffix("/v1"), rate=0.0,
                    script=[("truncate_after", r"\}\s*\}\s*,")]) as proxy:  # fmt: skip
        events: list[Any] = []
        result = await plait.arun("How tall is the Eiffel Tower?", tools=[search],
                                  model=MODEL, base_url=proxy.url + "/v1",
                                  retry=FAST_RETRY, on_event=events.append)  # fmt: skip
        assert proxy.stats["cut"] == 1, (proxy.stats, result)
    retried = [e for e in events if isinstance(e, ev.LLMRetrying) and e.call == 1]
    assert retried, "the planner's stream was cut and asked again"
    added_before_cut = [e for e in events if isinstance(e, ev.TaskAdded)
                        and e.t < retried[0].t]  # fmt: skip
    assert added_before_cut, "a task was dispatched before the cut"
    ids = [t.id for t in result.tasks]
    assert len(ids) == len(set(ids))
    assert len(calls) == len([t for t in result.tasks if t.status in ("done", "failed")])
    # the task the cut reply had dispatched ran once: the retried reply's copy was dropped
    first = added_before_cut[0].task.id
    assert [e.id for e in events if isinstance(e, ev.TaskStarted)].count(first) == 1
    assert not [e for e in events if isinstance(e, ev.PlanInvalid)], "no duplicate-id error"
