"""Equal calls made once (`SharedCalls`: the first caller of a key makes the call, callers
meanwhile wait for it, later ones read its result): pure tool calls, and identical LLM requests
(llm/shared.py). Failures are not kept: waiters see the error, retries ask again. And `backoff`,
the wait before a task's or an LLM's retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from pydantic import BaseModel
from pydantic_core import to_json


def backoff(base: float, attempt: int, cap: float = float("inf")) -> float:
    """Seconds before retry `attempt` (1, 2, …): `base` doubled each time, jittered ×0.5–1.5."""
    return min(cap, base * 2 ** (attempt - 1) * (0.5 + random.random()))


def call_key(tool: str, arguments: dict[str, Any]) -> str | None:
    """The tool's name and arguments as canonical JSON (`f(q="x")` and `f("x")` are one call;
    a tuple is its list), or None (never merged) when a value has no one JSON form. Any other
    type (bytes, an Enum, a date, a model) is tagged with its name: b"abc" is not "abc"."""
    try:
        return tool + ":" + to_json(_canonical(arguments)).decode()
    except Exception:
        return None


def _canonical(value: Any) -> Any:
    kind = type(value)
    if kind in (list, tuple):
        return [_canonical(v) for v in value]
    if kind is dict and all(type(k) is str for k in value):  # a "\0" key is a tag's: escaped
        return {"\0" * k.startswith("\0") + k: _canonical(value[k]) for k in sorted(value)}
    if kind in (str, int, float, bool, type(None)):
        return value
    if isinstance(value, BaseModel):
        inner = _canonical(dict(value))  # its fields and extras
    elif (inner := to_json(value).decode())[:1] in "[{":  # JSON loses its items' types
        raise TypeError(f"{kind.__name__} has no one JSON form")
    return {"\0": [f"{kind.__module__}.{kind.__qualname__}", inner]}  # the value's type tag


class CallCache(Protocol):
    """Where results outlive the process (a batch's run store; see batch.StoredCalls)."""

    async def get(self, key: str) -> tuple[bool, Any]: ...
    async def put(self, key: str, value: Any) -> None: ...


class SharedCalls:
    """Results by key: in flight, or done (the last `size` kept; with a `cache`, all of them
    there too, so a resumed batch does not call again). A waiter's cancel leaves a call be."""

    def __init__(self, size: int = 100_000, cache: CallCache | None = None) -> None:
        self.size = size
        self.cache = cache
        self.requested = self.executed = 0  # `call`s asked for, and run
        self._done: OrderedDict[str, Any] = OrderedDict()
        self._flying: dict[str, asyncio.Future[Any]] = {}

    async def call(self, key: str, run: Callable[[], Awaitable[Any]]) -> Any:
        self.requested += 1
        found, value = await self.claim(key)
        if found:
            return value
        try:
            found, value = (False, None) if self.cache is None else await self.cache.get(key)
            if not found:
                self.executed += 1
                value = await run()
                if self.cache is not None and not getattr(value, "kept", False):
                    await self.cache.put(key, value)
        except BaseException as e:
            self.fail(key, None if isinstance(e, asyncio.CancelledError) else e)
            raise
        self.finish(key, value, keep=not getattr(value, "kept", False))  # a Remote: in flight only
        return value

    async def claim(self, key: str) -> tuple[bool, Any]:
        """(True, result), or (False, None): make the call, then `finish` or `fail` the key."""
        while key not in self._done:
            if (flying := self._flying.get(key)) is None:
                self._flying[key] = asyncio.get_running_loop().create_future()
                return False, None
            with contextlib.suppress(_Abandoned):  # one of the waiters makes it now
                return True, await asyncio.shield(flying)
        self._done.move_to_end(key)
        return True, self._done[key]

    def finish(self, key: str, value: Any, keep: bool = True) -> None:
        self._flying.pop(key).set_result(value)
        if keep:
            self._done[key] = value
            if len(self._done) > self.size:
                self._done.popitem(last=False)

    def fail(self, key: str, error: BaseException | None = None) -> None:
        """Waiters see `error`; with None (the caller gave up) one of them calls again."""
        (future := self._flying.pop(key)).set_exception(error or _Abandoned())
        future.exception()  # retrieved: no "never retrieved" warning if nobody waits


class _Abandoned(Exception):
    pass
