"""PrefixOrdered: at most `slots` calls in flight; the next one shares the longest prefix."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from plait.llm.base import Delta, Request
from plait.llm.prefix import PrefixOrdered, common_prefix


@given(st.text(alphabet="ab", max_size=40), st.text(alphabet="ab", max_size=40))
def test_common_prefix_matches_the_obvious_loop(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    assert common_prefix(a, b) == n


class Gated:
    """An LLM whose calls end when the test says so; it records the order they started."""

    name = "gated"
    supports_json_schema = False

    def __init__(self) -> None:
        self.started: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.running = 0
        self.most = 0

    async def stream(self, request: Request):
        key = request.messages[-1]["content"]
        self.started.append(key)
        self.running += 1
        self.most = max(self.most, self.running)
        gate = self.gates.setdefault(key, asyncio.Event())
        try:
            await gate.wait()
            yield Delta(key)
        finally:
            self.running -= 1


def call(text: str, system: str = "S") -> Request:
    return Request([{"role": "system", "content": system}, {"role": "user", "content": text}])


async def drain(llm, request):
    return "".join([d.text async for d in llm.stream(request)])


async def settle():
    for _ in range(10):
        await asyncio.sleep(0)


async def finish(inner: Gated, key: str) -> None:
    inner.gates.setdefault(key, asyncio.Event()).set()
    await settle()


async def run_order(order: str) -> list[str]:
    inner = Gated()
    llm = PrefixOrdered(inner, slots=1, order=order)
    first = asyncio.create_task(drain(llm, call("planner: q1", "PLAN")))
    await settle()
    others = []
    for text, system in [("join: q9", "JOIN"), ("planner: q2", "PLAN"), ("planner: q3", "PLAN")]:
        others.append(asyncio.create_task(drain(llm, call(text, system))))
        await settle()
    for key in ["planner: q1", *inner.gates.keys()]:
        await finish(inner, key)
    for key in ["join: q9", "planner: q2", "planner: q3"]:
        await finish(inner, key)
    await asyncio.wait_for(asyncio.gather(first, *others), 5)
    assert inner.most == 1
    return inner.started


async def test_arrival_order_is_first_come_first_served():
    assert await run_order("arrival") == ["planner: q1", "join: q9", "planner: q2", "planner: q3"]


async def test_prefix_order_sends_the_calls_sharing_the_last_prefix_first():
    assert await run_order("prefix") == ["planner: q1", "planner: q2", "planner: q3", "join: q9"]


async def test_slots_bound_calls_in_flight_and_a_cancelled_waiter_frees_nothing_it_lacks():
    inner = Gated()
    llm = PrefixOrdered(inner, slots=2)
    tasks = [asyncio.create_task(drain(llm, call(f"c{i}"))) for i in range(5)]
    await settle()
    assert inner.running == 2
    tasks[4].cancel()  # still waiting: cancelling it must not free or take a slot
    await settle()
    for i in range(4):
        await finish(inner, f"c{i}")
    done = await asyncio.gather(*tasks[:4])
    assert done == ["c0", "c1", "c2", "c3"]
    assert inner.most == 2 and tasks[4].cancelled()
    await asyncio.sleep(llm.linger * 2)  # freed slots are held that long for a follow-up
    assert sorted(llm._free) == [0, 1]


async def test_a_freed_slot_waits_briefly_for_the_call_that_extends_its_prompt():
    inner = Gated()
    llm = PrefixOrdered(inner, slots=1, linger=5.0)  # long: the test decides when it comes
    planner = call("q1")
    first = asyncio.create_task(drain(llm, planner))
    await settle()
    queued = asyncio.create_task(drain(llm, call("q2")))  # another run's call, waiting
    await settle()
    await finish(inner, "q1")
    assert await first == "q1"
    # q1's run comes back (its tools took a moment) with a prompt extending q1's.
    joiner = Request([*planner.messages, {"role": "assistant", "content": "plan"},
                      {"role": "user", "content": "q1 results"}])  # fmt: skip
    follow = asyncio.create_task(drain(llm, joiner))
    await settle()
    llm.linger = 0.01  # no need to hold the slot long after this
    await finish(inner, "q1 results")
    await finish(inner, "q2")
    await asyncio.wait_for(asyncio.gather(follow, queued), 5)
    assert inner.started == ["q1", "q1 results", "q2"]
    arrival = PrefixOrdered(Gated(), order="arrival")
    assert arrival.linger == 0  # the baseline holds nothing
