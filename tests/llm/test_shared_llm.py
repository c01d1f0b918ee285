"""SharedLLM (plait.llm.shared) on core/shared.SharedCalls: identical requests at temperature 0
go out once; a call that fails or is dropped passes to a waiter; scoring passes through.

Concurrency is arranged with events, never timings.
"""

from __future__ import annotations

import asyncio

import pytest

from plait.llm.base import Delta, LLMError, Request, Scorer, Usage
from plait.llm.shared import SharedLLM


class Gated:
    """A model whose every call streams "a", then waits for `release`, then "b"."""

    name = "gated"
    supports_json_schema = False

    def __init__(self) -> None:
        self.calls = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.fail_first = False

    async def stream(self, request: Request):
        self.calls += 1
        self.started.set()
        yield Delta("a")
        await self.release.wait()
        if self.fail_first and self.calls == 1:
            raise LLMError("lost", retryable=True)
        yield Delta("b", Usage(prompt_tokens=3, completion_tokens=2))


def ask(text: str = "q", temperature: float = 0.0) -> Request:
    return Request([{"role": "user", "content": text}], temperature=temperature)


async def reply(llm, request: Request) -> tuple[str, int]:
    text, tokens = "", 0
    async for d in llm.stream(request):
        text += d.text
        if d.usage is not None:
            tokens += d.usage.prompt_tokens + d.usage.completion_tokens
    return text, tokens


async def test_an_identical_request_in_flight_is_waited_for_and_sent_once():
    inner = Gated()
    llm = SharedLLM(inner)
    first = asyncio.create_task(reply(llm, ask()))
    await inner.started.wait()
    second = asyncio.create_task(reply(llm, ask()))
    await asyncio.sleep(0)  # the second finds the first in flight
    inner.release.set()
    assert await first == ("ab", 5)
    assert await second == ("ab", 0)  # the copy reports no usage: summed usage is what was spent
    assert await reply(llm, ask()) == ("ab", 0)  # a later one reads the kept reply
    assert (inner.calls, llm.requested, llm.made) == (1, 3, 1)
    assert await reply(llm, ask("other")) == ("ab", 5)
    assert inner.calls == 2


async def test_a_request_above_temperature_zero_is_always_sent():
    inner = Gated()
    inner.release.set()
    llm = SharedLLM(inner)
    for _ in range(2):
        assert await reply(llm, ask(temperature=0.7)) == ("ab", 5)
    assert (inner.calls, llm.made) == (2, 2)


async def test_a_failed_call_is_not_kept_and_its_waiter_asks_again():
    inner = Gated()
    inner.fail_first = True
    llm = SharedLLM(inner)
    first = asyncio.create_task(reply(llm, ask()))
    await inner.started.wait()
    second = asyncio.create_task(reply(llm, ask()))
    await asyncio.sleep(0)
    inner.release.set()
    with pytest.raises(LLMError):
        await first
    assert await second == ("ab", 5)  # it made the call itself, and paid for it
    assert inner.calls == 2 and llm.made == 2


async def test_a_caller_that_stops_reading_early_hands_the_call_to_a_waiter():
    inner = Gated()
    llm = SharedLLM(inner)
    stream = llm.stream(ask())
    assert (await anext(stream)).text == "a"
    waiter = asyncio.create_task(reply(llm, ask()))
    await asyncio.sleep(0)
    await stream.aclose()  # dropped after the first delta: no reply is kept
    inner.release.set()
    assert await waiter == ("ab", 5)
    assert inner.calls == 2


def test_scoring_passes_through_only_when_the_inner_model_scores():
    class Scoring(Gated):
        async def score(self, request, prefix, candidates):
            return [0.0] * len(candidates), Usage()

    assert not isinstance(SharedLLM(Gated()), Scorer)
    shared = SharedLLM(Scoring())
    assert isinstance(shared, Scorer) and shared.name == "gated"
