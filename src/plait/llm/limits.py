"""Per-endpoint adaptive concurrency: an AIMD limiter, shared by every client of one endpoint.

A batch of runs must neither flood a rate-limited API nor idle a local server. So each
endpoint (an OpenAI-compatible base URL) gets one `AIMDLimiter`, shared by all the
`OpenAILLM` instances that talk to it, which bounds the calls in flight:

- success: additive increase, `limit += increase / limit` (about +1 per window of calls);
- overload (429, 503, a server saying it is busy): multiplicative decrease,
  `limit *= decrease`, at most once per window: only a call that started after the last
  decrease can cause the next one, so one burst of 429s halves the limit once, not to 1;
- a Retry-After also holds back new calls to the endpoint until it has passed;
- always within [min_limit, max_limit]. `adaptive=False` makes it a fixed limit.

Time and sleeping are injected (`clock`, `sleep`) so tests drive it with fakes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

__all__ = ["AIMDLimiter", "LimitConfig", "Slot", "limiter_for", "reset_limiters"]


@dataclass(frozen=True, slots=True)
class LimitConfig:
    max_limit: int = 16
    initial: float = 4.0
    min_limit: int = 1
    increase: float = 1.0
    decrease: float = 0.5
    adaptive: bool = True


class Slot:
    """One admitted call. Report how it went; an unreported slot counts as neither."""

    __slots__ = ("epoch", "outcome", "retry_after")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.outcome: str | None = None
        self.retry_after: float | None = None

    def ok(self) -> None:
        self.outcome = "ok"

    def overloaded(self, retry_after: float | None = None) -> None:
        self.outcome = "overload"
        self.retry_after = retry_after


class AIMDLimiter:
    def __init__(
        self,
        config: LimitConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.config = config or LimitConfig()
        c = self.config
        if not 1 <= c.min_limit <= c.max_limit:
            raise ValueError("need 1 <= min_limit <= max_limit")
        self.limit = float(min(max(c.initial, c.min_limit), c.max_limit))
        if not c.adaptive:
            self.limit = float(c.max_limit)
        self.in_flight = 0
        self.epoch = 0  # bumped by each decrease
        self.blocked_until = 0.0
        self.decreases = 0
        self._clock = clock
        self._sleep = sleep
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def capacity(self) -> int:
        return max(int(self.limit), self.config.min_limit)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[Slot]:
        await self.acquire()
        s = Slot(self.epoch)
        try:
            yield s
        finally:
            self.release(s)

    async def acquire(self) -> None:
        while True:
            wait = self.blocked_until - self._clock()
            if wait > 0:
                await self._sleep(wait)
                continue
            if self.in_flight < self.capacity and not self._waiters:
                self.in_flight += 1
                return
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            except BaseException:
                if fut in self._waiters:
                    self._waiters.remove(fut)
                elif fut.done() and not fut.cancelled():
                    self._wake()  # we were handed a turn we will not use: pass it on
                raise
            if self.in_flight < self.capacity:
                self.in_flight += 1
                return

    def release(self, slot: Slot) -> None:
        self.in_flight -= 1
        if slot.outcome == "ok":
            self.on_success()
        elif slot.outcome == "overload":
            self.on_overload(slot.epoch, slot.retry_after)
        self._wake()

    def on_success(self) -> None:
        c = self.config
        if c.adaptive:
            self.limit = min(float(c.max_limit), self.limit + c.increase / max(self.limit, 1.0))

    def on_overload(self, epoch: int, retry_after: float | None = None) -> None:
        c = self.config
        if retry_after is not None and retry_after > 0:
            self.blocked_until = max(self.blocked_until, self._clock() + retry_after)
        if c.adaptive and epoch == self.epoch:
            self.limit = max(float(c.min_limit), self.limit * c.decrease)
            self.epoch += 1
            self.decreases += 1

    def _wake(self) -> None:
        free = self.capacity - self.in_flight
        while free > 0 and self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                free -= 1


_limiters: dict[str, AIMDLimiter] = {}


def _key(base_url: str | None) -> str:
    return (base_url or "https://api.openai.com/v1").rstrip("/").lower()


def limiter_for(base_url: str | None, config: LimitConfig | None = None) -> AIMDLimiter:
    """The limiter of an endpoint; the first client to ask configures it."""
    key = _key(base_url)
    limiter = _limiters.get(key)
    if limiter is None:
        limiter = _limiters[key] = AIMDLimiter(config)
    elif config is not None and config != limiter.config:
        limiter.config = config
        limiter.limit = min(max(limiter.limit, config.min_limit), config.max_limit)
        if not config.adaptive:
            limiter.limit = float(config.max_limit)
    return limiter


def reset_limiters() -> None:
    """Forget every endpoint's state (tests)."""
    _limiters.clear()
