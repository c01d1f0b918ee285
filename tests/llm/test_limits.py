"""The AIMD limiter, driven with a fake clock and fake sleep: no timing asserts."""

from __future__ import annotations

import asyncio

import pytest

from plait.llm.limits import AIMDLimiter, LimitConfig, Slot, limiter_for


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def make(**kw: object) -> tuple[AIMDLimiter, FakeTime]:
    t = FakeTime()
    return AIMDLimiter(LimitConfig(**kw), clock=t.clock, sleep=t.sleep), t  # type: ignore[arg-type]


def test_additive_increase_is_bounded() -> None:
    lim, _ = make(max_limit=6, initial=2)
    for _ in range(200):
        lim.on_success()
    assert lim.limit == 6


def test_additive_increase_is_about_one_per_window() -> None:
    lim, _ = make(max_limit=100, initial=4)
    for _ in range(4):
        lim.on_success()
    assert 4.9 < lim.limit < 5.1


def test_multiplicative_decrease_once_per_window_and_floor() -> None:
    lim, _ = make(max_limit=16, initial=16)
    epoch = lim.epoch
    for _ in range(5):  # a burst of 429s from calls of one window halves once
        lim.on_overload(epoch)
    assert lim.limit == 8
    lim.on_overload(lim.epoch)
    assert lim.limit == 4
    for _ in range(10):
        lim.on_overload(lim.epoch)
    assert lim.limit == 1  # never below min_limit


def test_fixed_limit_when_not_adaptive() -> None:
    lim, _ = make(max_limit=3, adaptive=False)
    lim.on_overload(lim.epoch)
    lim.on_success()
    assert lim.limit == 3


async def test_bounds_calls_in_flight() -> None:
    lim, _ = make(max_limit=2, initial=2, adaptive=False)
    peak = 0
    gate = asyncio.Event()

    async def call() -> None:
        nonlocal peak
        async with lim.slot() as s:
            peak = max(peak, lim.in_flight)
            await gate.wait()
            s.ok()

    tasks = [asyncio.create_task(call()) for _ in range(6)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert lim.in_flight == 2
    gate.set()
    await asyncio.gather(*tasks)
    assert peak == 2 and lim.in_flight == 0


async def test_overload_shrinks_and_retry_after_holds_new_calls() -> None:
    lim, t = make(max_limit=8, initial=8)
    async with lim.slot() as s:
        s.overloaded(retry_after=3.0)
    assert lim.limit == 4
    async with lim.slot() as s:  # waits out the Retry-After on the fake clock
        s.ok()
    assert t.slept == [3.0]


async def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    lim, _ = make(max_limit=1, initial=1, adaptive=False)
    await lim.acquire()
    waiter = asyncio.create_task(lim.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    lim.release(Slot(lim.epoch))
    assert lim.in_flight == 0
    await asyncio.wait_for(lim.acquire(), 1)


def test_one_limiter_per_endpoint() -> None:
    a = limiter_for("http://127.0.0.1:1/v1/")
    b = limiter_for("http://127.0.0.1:1/v1")
    c = limiter_for("http://127.0.0.1:2/v1")
    assert a is b and a is not c


def test_openai_clients_share_the_endpoint_limiter() -> None:
    from plait.llm.openai import OpenAILLM

    x = OpenAILLM("m", base_url="http://127.0.0.1:9/v1")
    y = OpenAILLM.from_spec("other?max_concurrency=4", base_url="http://127.0.0.1:9/v1")
    assert x.limiter is y.limiter
    assert y.limiter.config.max_limit == 4
