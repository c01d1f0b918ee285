"""PrefixOrdered: queued LLM calls go out in the order that keeps prompt prefixes cached.

A batch's calls share long prefixes (the planner's system prompt, tools and examples; each
run's own conversation so far). A server keeps the KV cache of what a slot ran last, so the
next request on that slot pays only for what differs. In arrival order, a planner call, then
another run's joiner, then another planner… each evicts the last one's prefix. Here at most
`slots` calls are in flight, and when a slot frees up, the waiting call whose prompt shares
the longest prefix with what that slot ran last goes next (BatchLLM's and Halo's
prefix-aware scheduling); ties go in arrival order. `order="arrival"` is the same gate in
plain FIFO order: the baseline the bench compares against.

A run's next call (its joiner, after its tools) extends the prompt its last call just ran,
but it arrives a moment after that call ends, when the slot would already have gone to
another run. So in prefix order a freed slot is held for `linger` seconds for a call that
extends what it just ran (Continuum pins a program's cache across its tool calls the same
way); if none comes, the slot goes to the queue.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from .base import LLM, Delta, Request, Wrapper


def prompt_text(request: Request) -> str:
    return "".join(f"\x00{m.get('role', '')}\x00{m.get('content', '')}" for m in request.messages)


def common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix, by binary search over C-speed slice compares."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass(order=True)
class _Waiter:
    arrival: int
    text: str = field(compare=False)
    turn: asyncio.Future[int] = field(compare=False)  # resolves to the slot it may use


class PrefixOrdered(Wrapper):
    """The gate; scoring passes through ungated (an in-process model serialises its calls)."""

    def __init__(
        self, llm: LLM, *, slots: int = 1, order: str = "prefix", linger: float = 0.05
    ) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        if order not in ("prefix", "arrival"):
            raise ValueError("order must be 'prefix' or 'arrival'")
        super().__init__(llm)
        self.order = order
        self._free = list(range(slots))
        self._last = [""] * slots  # the prompt each slot ran last
        self._waiting: list[_Waiter] = []
        self._arrivals = itertools.count()
        self.linger = linger if order == "prefix" else 0.0
        self._held: dict[int, asyncio.TimerHandle] = {}  # freed slots kept for a follow-up

    async def stream(self, request: Request) -> AsyncIterator[Delta]:
        text = prompt_text(request)
        slot = await self._acquire(text)
        try:
            async for delta in self.llm.stream(request):
                yield delta
        finally:
            self._release(slot, text)

    async def _acquire(self, text: str) -> int:
        for slot in list(self._held):
            if text.startswith(self._last[slot]):  # the follow-up the slot was held for
                self._held.pop(slot).cancel()
                return slot
        if self._free and not self._waiting:
            return self._pick_slot(text)
        loop = asyncio.get_running_loop()
        waiter = _Waiter(next(self._arrivals), text, loop.create_future())
        self._waiting.append(waiter)
        try:
            return await waiter.turn
        except asyncio.CancelledError:
            if waiter.turn.done() and not waiter.turn.cancelled():
                self._release(waiter.turn.result(), "")  # granted as it was cancelled
            else:
                self._waiting.remove(waiter)
            raise

    def _pick_slot(self, text: str) -> int:
        """The free slot whose last prompt shares most with `text`."""
        best = max(self._free, key=lambda s: common_prefix(self._last[s], text))
        self._free.remove(best)
        return best

    def _release(self, slot: int, text: str) -> None:
        if text:
            self._last[slot] = text
            if self.linger > 0:
                loop = asyncio.get_running_loop()
                self._held[slot] = loop.call_later(self.linger, self._unhold, slot)
                return
        self._free.append(slot)
        self._dispatch()

    def _unhold(self, slot: int) -> None:
        if self._held.pop(slot, None) is not None:
            self._free.append(slot)
            self._dispatch()

    def _dispatch(self) -> None:
        while self._free and self._waiting:
            if self.order == "arrival":
                waiter = min(self._waiting)
                chosen = self._pick_slot(waiter.text)
            else:
                # The waiting call and free slot that share the longest prefix; then arrival.
                pairs = [(w, s) for w in self._waiting for s in self._free]
                waiter, chosen = max(
                    pairs, key=lambda p: (common_prefix(self._last[p[1]], p[0].text), -p[0].arrival)
                )
                self._free.remove(chosen)
            self._waiting.remove(waiter)
            waiter.turn.set_result(chosen)
