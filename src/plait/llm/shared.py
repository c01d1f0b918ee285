"""SharedLLM: identical requests at temperature 0 are sent once (a batch's shared LLM calls).

At temperature 0 a request's reply is a function of the request, so a second identical one
need not be paid for: a caller that finds it in flight waits for it and gets the whole reply
as one delta; a later one reads it. The call that ran reports the usage; the copies report
none, so summed usage is what was spent. Requests with any temperature above 0 pass through.
Errors are not kept: the next identical request asks again.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable

from .base import LLM, Delta, Request, Usage


class SharedLLM:
    # Present only when the wrapped model scores (llm.base.Scorer): scoring passes through.
    score: Callable[..., Awaitable[tuple[list[float], Usage]]]

    def __init__(self, llm: LLM, size: int = 10_000) -> None:
        self.llm = llm
        inner_score = getattr(llm, "score", None)
        if inner_score is not None:
            self.score = inner_score
        self.name = llm.name
        self.supports_json_schema = llm.supports_json_schema
        self.size = size
        self.requested = 0
        self.made = 0
        self._done: OrderedDict[str, str] = OrderedDict()
        self._flying: dict[str, asyncio.Future[str]] = {}

    async def stream(self, request: Request) -> AsyncIterator[Delta]:
        self.requested += 1
        if request.temperature > 0:
            self.made += 1
            async for delta in self.llm.stream(request):
                yield delta
            return
        key = _key(request)
        while True:
            if key in self._done:
                self._done.move_to_end(key)
                yield Delta(self._done[key], Usage())
                return
            flying = self._flying.get(key)
            if flying is None:
                break
            try:
                text = await asyncio.shield(flying)
            except Exception:
                continue  # the call it waited for failed or was dropped: ask again
            yield Delta(text, Usage())
            return
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._flying[key] = future
        self.made += 1
        parts: list[str] = []
        complete = False
        try:
            async for delta in self.llm.stream(request):
                parts.append(delta.text)
                yield delta
            complete = True
        finally:
            del self._flying[key]
            if complete:
                text = "".join(parts)
                future.set_result(text)
                self._done[key] = text
                if len(self._done) > self.size:
                    self._done.popitem(last=False)
            else:  # failed, or the caller stopped reading early: waiters ask again
                future.set_exception(_Dropped())
                future.exception()


class _Dropped(Exception):
    pass


def _key(request: Request) -> str:
    return json.dumps(
        [request.messages, request.stop, request.json_schema, request.max_tokens],
        sort_keys=True,
        ensure_ascii=False,
    )
