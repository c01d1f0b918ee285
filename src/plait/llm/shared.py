"""SharedLLM: identical requests at temperature 0 are sent once (a batch's shared LLM calls).

At temperature 0 a request's reply is a function of the request, so a second identical one
need not be paid for: a caller that finds it in flight waits for it and gets the whole reply
as one delta; a later one reads it. The call that ran reports the usage; the copies report
none, so summed usage is what was spent. Requests with any temperature above 0 pass through.
Errors are not kept: the next identical request asks again. The waiting and keeping is
core/shared.py's SharedCalls, which pure tool calls share too.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from ..core.shared import SharedCalls
from .base import LLM, Delta, Request, Usage, Wrapper


class SharedLLM(Wrapper):
    def __init__(self, llm: LLM, size: int = 10_000) -> None:
        super().__init__(llm)
        self.requested = 0
        self.made = 0
        self._replies = SharedCalls(size)  # by request: claim, finish or fail, as it streams

    async def stream(self, request: Request) -> AsyncIterator[Delta]:
        self.requested += 1
        if request.temperature > 0:
            self.made += 1
            async for delta in self.llm.stream(request):
                yield delta
            return
        key = _key(request)
        found, text = await self._replies.claim(key)
        if found:
            yield Delta(text, Usage())
            return
        self.made += 1
        parts: list[str] = []
        complete = False
        try:
            async for delta in self.llm.stream(request):
                parts.append(delta.text)
                yield delta
            complete = True
        finally:
            if complete:
                self._replies.finish(key, "".join(parts))
            else:  # failed, or the caller stopped reading early: a waiter asks again
                self._replies.fail(key)


def _key(request: Request) -> str:
    return json.dumps(
        [request.messages, request.stop, request.json_schema, request.max_tokens],
        sort_keys=True,
        ensure_ascii=False,
    )
