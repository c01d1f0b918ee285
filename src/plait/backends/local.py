"""The default backend: async tools on the event loop, sync tools in a thread pool.

Threads share the GIL, so CPU-bound pure-Python tools run one at a time here; that is
what the `ray` backend is for. A thread cannot be interrupted: a cancelled or timed-out
sync call is reported at once, and its thread is joined when the backend closes.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..tools import Tool


class LocalBackend:
    name = "local"

    def __init__(self, max_threads: int = 32) -> None:
        self.max_threads = max_threads
        self._pool: ThreadPoolExecutor | None = None

    async def call(self, tool: Tool, arguments: dict[str, Any]) -> Any:
        if tool.is_async:
            return await tool.invoke(arguments)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.max_threads, thread_name_prefix="plait-tool")
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()  # so the tool sees current_task()
        result = await loop.run_in_executor(self._pool, context.run, tool.invoke, arguments)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def aclose(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await asyncio.shield(asyncio.to_thread(pool.shutdown, True, cancel_futures=True))
