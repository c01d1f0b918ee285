"""Shared calls: a pure tool called with equal arguments runs once (Halo's shared sub-work).

The key is the tool's name and its validated arguments as canonical JSON (sorted keys), so
`search(query="x")` and `search("x")` are one call. A caller that finds the call in flight
waits for it; one that comes later reads the result. Failures are not kept: every waiter
of a failed call sees the error, and its own retries ask again. Only tools declared
`pure=True` are ever merged.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from pydantic_core import to_json


def call_key(tool: str, arguments: dict[str, Any]) -> str | None:
    """The call's identity, or None when its arguments have no JSON form (never merged)."""
    try:
        return tool + ":" + to_json(_sorted(arguments)).decode()
    except Exception:
        return None


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [_sorted(v) for v in value]
    return value


class CallCache(Protocol):
    """Where results outlive the process (a batch's run store); see `StoredCalls`."""

    async def get(self, key: str) -> tuple[bool, Any]: ...

    async def put(self, key: str, value: Any) -> None: ...


class SharedCalls:
    """Results of pure calls, by key: in flight, or done (the last `size` kept in memory;
    with a `cache`, all of them there too, so a resumed batch does not call again)."""

    def __init__(self, size: int = 100_000, cache: CallCache | None = None) -> None:
        self.size = size
        self.cache = cache
        self.requested = 0  # calls asked for
        self.executed = 0  # calls that ran
        self._done: OrderedDict[str, Any] = OrderedDict()
        self._flying: dict[str, asyncio.Future[Any]] = {}

    async def call(self, key: str, run: Callable[[], Awaitable[Any]]) -> Any:
        self.requested += 1
        while True:
            if key in self._done:
                self._done.move_to_end(key)
                return self._done[key]
            flying = self._flying.get(key)
            if flying is None:
                break
            try:
                return await asyncio.shield(flying)  # a waiter's cancel leaves the call be
            except _Abandoned:
                continue  # its owner was cancelled: one of the waiters runs it now
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._flying[key] = future
        try:
            found, value = (False, None) if self.cache is None else await self.cache.get(key)
            if not found:
                self.executed += 1
                value = await run()
                if self.cache is not None and not getattr(value, "kept", False):
                    await self.cache.put(key, value)
        except BaseException as e:
            future.set_exception(_Abandoned() if isinstance(e, asyncio.CancelledError) else e)
            future.exception()  # retrieved: no "never retrieved" warning if nobody waits
            raise
        finally:
            del self._flying[key]
        future.set_result(value)
        if getattr(value, "kept", False):
            return value  # a Remote pins cluster memory: share it in flight only, never keep it
        self._done[key] = value
        if len(self._done) > self.size:
            self._done.popitem(last=False)
        return value


class _Abandoned(Exception):
    """The call's owner was cancelled before it finished."""
