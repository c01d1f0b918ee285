"""Shared calls (plait.core.shared): equal calls of a pure tool run once; impure ones never merge.

Concurrency is arranged with events, never timings.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from decimal import Decimal

import pytest

import plait
from plait.agent.parse import parse_plan
from plait.core.scheduler import Scheduler
from plait.core.shared import SharedCalls, call_key
from plait.core.tools import Tools, tool

LIMIT = 5


def test_call_key_is_canonical():
    assert call_key("search", {"q": "x", "n": 1}) == call_key("search", {"n": 1, "q": "x"})
    assert call_key("search", {"q": "x"}) != call_key("lookup", {"q": "x"})
    assert call_key("search", {"q": ["a", {"b": 1, "a": 2}]}) == call_key(
        "search", {"q": ("a", {"a": 2, "b": 1})}
    )
    assert call_key("search", {"q": object()}) is None  # no JSON form: never merged


def test_call_key_never_merges_values_of_different_types_with_one_json_form():
    # pydantic writes b"abc" and "abc" alike, {1: x} and {"1": x} alike, Decimal("1.5")
    # and "1.5" alike: a pure tool given one must never be answered with the other's result.
    pairs = [
        (b"abc", "abc"),
        ({1: "x"}, {"1": "x"}),
        (Decimal("1.5"), "1.5"),
        ([b"a"], ["a"]),
        ({"k": b"v"}, {"k": "v"}),
    ]
    for a, b in pairs:
        assert call_key("f", {"q": a}) != call_key("f", {"q": b}), (a, b)
    assert call_key("f", {"q": True}) != call_key("f", {"q": 1})
    assert call_key("f", {"q": 1}) != call_key("f", {"q": 1.0})


async def test_equal_pure_calls_run_once_and_impure_ones_every_time():
    ran: Counter[str] = Counter()

    @tool(pure=True)
    def search(query: str, limit: int = 3) -> str:
        ran["search", query] += 1
        return f"found {query}"

    @tool
    def fetch(url: str) -> str:
        ran["fetch", url] += 1
        return url

    plan = (
        '1. search("x")\n2. search(query="x", limit=3)\n3. search("y")\n'
        '4. fetch("u")\n5. fetch("u")\n6. search("$1")\n'
    )
    result = await plait.aexecute(plan, tools=[search, fetch])
    assert result.status == "done"
    assert [t.result for t in result.tasks] == [
        "found x", "found x", "found y", "u", "u", "found found x"
    ]  # fmt: skip
    assert ran == {("search", "x"): 1, ("search", "y"): 1, ("fetch", "u"): 2,
                   ("search", "found x"): 1}  # fmt: skip


async def test_a_call_in_flight_is_waited_for_not_repeated():
    started, release = asyncio.Event(), asyncio.Event()
    calls = 0

    @tool(pure=True)
    async def slow(x: int) -> int:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return x * 10

    shared = SharedCalls()
    async with Scheduler(Tools([slow]), lambda e: None, time.perf_counter, shared=shared) as s:
        for task in parse_plan("1. slow(4)\n2. slow(4)\n3. slow(x=4)\n"):
            s.add(task)
        async with asyncio.timeout(LIMIT):
            await started.wait()
        await asyncio.sleep(0)  # let the other two reach the call
        release.set()
        await s.wait()
    assert s.results == {1: 40, 2: 40, 3: 40}
    assert calls == 1
    assert (shared.requested, shared.executed) == (3, 1)


async def test_a_failure_is_not_kept_and_a_retry_asks_again():
    attempts = 0

    @tool(pure=True, retries=1, retry_backoff=0)
    def flaky(x: int) -> int:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("first call fails")
        return x

    result = await plait.aexecute("1. flaky(1)\n2. flaky(1)\n", tools=[flaky])
    assert result.status == "done"
    assert [t.result for t in result.tasks] == [1, 1]
    assert attempts == 2


async def test_cancelling_the_caller_that_runs_the_call_hands_it_to_a_waiter():
    started = asyncio.Event()
    runs = 0

    @tool(pure=True)
    async def slow(x: int) -> int:
        nonlocal runs
        runs += 1
        started.set()
        await asyncio.sleep(0 if runs > 1 else LIMIT * 10)
        return x

    async with Scheduler(Tools([slow]), lambda e: None, time.perf_counter) as s:
        for task in parse_plan("1. slow(7)\n2. slow(7)\n"):
            s.add(task)
        async with asyncio.timeout(LIMIT):
            await started.wait()
            await asyncio.sleep(0)
            s.cancel(1)
            await s.wait()
    assert {i: n.status for i, n in s.graph.nodes.items()} == {1: "cancelled", 2: "done"}
    assert s.results[2] == 7
    assert runs == 2


@pytest.mark.parametrize("size", [1, 2])
async def test_only_the_last_size_results_are_kept(size):
    shared = SharedCalls(size=size)

    async def value(v: int) -> int:
        return v

    for key in ("a", "b", "a"):
        await shared.call(key, lambda: value(1))
    assert shared.executed == (3 if size == 1 else 2)


# -- backoff: one helper for task retries and LLM retries ----------------------------------


def test_backoff_doubles_each_attempt_within_its_jitter_and_honours_the_cap(monkeypatch):
    from plait.core import shared

    for jitter, factor in ((0.0, 0.5), (0.999999, 1.499999)):
        monkeypatch.setattr(shared.random, "random", lambda j=jitter: j)
        waits = [shared.backoff(0.1, n) for n in (1, 2, 3)]
        assert waits == pytest.approx([0.1 * factor, 0.2 * factor, 0.4 * factor])
        assert shared.backoff(0.1, 10, cap=1.0) == 1.0


def test_llm_retries_wait_by_the_same_backoff(monkeypatch):
    from plait.agent.loop import RetryPolicy
    from plait.core import shared

    monkeypatch.setattr(shared.random, "random", lambda: 0.5)  # the jitter's middle: ×1
    policy = RetryPolicy(base=0.25, cap=8.0)
    assert [policy.delay(a, None) for a in range(7)] == [0.25, 0.5, 1, 2, 4, 8, 8]
    assert policy.delay(0, retry_after=3.0) == 3.0  # what the server asked for, as before
