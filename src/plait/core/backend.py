"""The execution-backend seam: where one tool call runs.

The scheduler decides *when* a call runs (inputs, limits, timeouts, retries, cancellation);
a backend decides only *where*. `local` runs it on the event loop or in a thread pool;
`ray` runs it as a Ray task or on a Ray actor. A backend turns its own failures into
plait's at this seam: the tool's exception as raised, `WorkerLost` when the worker died
under the call, so nothing above it catches a backend's exception types.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .tools import Tool


class Backend(Protocol):
    name: str

    async def call(self, tool: Tool, arguments: dict[str, Any]) -> Any:
        """Run one call and return its result. Cancelling the await stops the call where
        the backend can (a thread cannot be stopped; a Ray task can)."""

    async def aclose(self) -> None:
        """Wait for or stop what is still running, and let go of what was opened."""


class ToolRaised(Exception):
    """A tool raised a BaseException that is not an Exception (SystemExit, KeyboardInterrupt,
    GeneratorExit, its own CancelledError...): the tool's failure like any other, never the
    run's. Backends wrap such an exception in this where it would otherwise stop the loop."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(original)
        self.original = original


class InProcess:
    """Calls in this process: async tools on the loop, sync ones on asyncio's default threads.

    What a `Scheduler` given no backend uses. A run's session passes `backends.local`'s
    `LocalBackend` instead, whose daemon threads never keep the process alive after a run.
    """

    name = "in-process"

    async def call(self, tool: Tool, arguments: dict[str, Any]) -> Any:
        if tool.is_async:
            return await tool.invoke(arguments)
        result = await asyncio.to_thread(tool.invoke, arguments)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def aclose(self) -> None:
        pass
