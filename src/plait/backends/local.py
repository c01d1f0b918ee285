"""The default backend: async tools on the event loop, sync tools on daemon threads.

Threads share the GIL, so CPU-bound pure-Python tools run one at a time here; that is
what the `ray` backend is for. A thread cannot be interrupted: a cancelled or timed-out
sync call is reported at once and its thread is *abandoned*: it no longer counts against
`max_threads` (so blocked calls never starve the pool) and its late result is dropped.

The threads are plait's own daemon threads, not a `ThreadPoolExecutor`'s: that pool's
threads are joined when the interpreter exits, so one call blocked forever would keep the
process alive after its run ended, Ctrl-C and SIGTERM included. Closing the backend joins
the threads still serving it and gives abandoned calls `ABANDON_GRACE` seconds to finish;
one that does not is left to die with the process, and a warning names its tool.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.backend import ToolRaised

if TYPE_CHECKING:
    from ..core.tools import Tool

ABANDON_GRACE = 0.5  # seconds an abandoned sync call gets to finish when the backend closes
log = logging.getLogger("plait")


class LocalBackend:
    name = "local"

    def __init__(self, max_threads: int = 32) -> None:
        self.max_threads = max_threads
        self._threads: ToolThreads | None = None

    async def call(self, tool: Tool, arguments: dict[str, Any]) -> Any:
        if tool.is_async:
            return await tool.invoke(arguments)
        if self._threads is None:
            self._threads = ToolThreads(self.max_threads)
        result = await self._threads.run(tool.name, tool.invoke, arguments)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def aclose(self) -> None:
        if self._threads is not None:
            threads, self._threads = self._threads, None
            await asyncio.shield(asyncio.to_thread(threads.close, ABANDON_GRACE))


class _Call:
    """One sync call: run on a worker thread, its outcome handed to the loop's future."""

    __slots__ = ("abandoned", "args", "context", "fn", "future", "loop", "name", "thread")

    def __init__(
        self,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
    ) -> None:
        self.name = name
        self.fn = fn
        self.args = args
        self.context = contextvars.copy_context()  # so the tool sees current_task()
        self.loop = loop
        self.future = future
        self.abandoned = False
        self.thread: threading.Thread | None = None

    def run(self) -> None:
        try:
            value = self.context.run(self.fn, *self.args)
        except Exception as e:
            self._deliver(self.future.set_exception, e)
        except BaseException as e:  # SystemExit & co: no signal lands in this thread
            self._deliver(self.future.set_exception, ToolRaised(e))
        else:
            self._deliver(self.future.set_result, value)

    def _deliver(self, setter: Callable[[Any], None], value: Any) -> None:
        if self.abandoned:
            return  # nobody waits: the call timed out or was cancelled
        with contextlib.suppress(RuntimeError):  # a closed loop: the run it served is over
            self.loop.call_soon_threadsafe(_settle, self.future, setter, value)


def _settle(future: asyncio.Future[Any], setter: Callable[[Any], None], value: Any) -> None:
    if not future.done():
        setter(value)


class ToolThreads:
    """Daemon worker threads for sync calls: at most `max_threads` serve calls at once;
    idle ones are reused; an abandoned call's thread retires when its call returns."""

    def __init__(self, max_threads: int) -> None:
        self.max_threads = max_threads
        self._work: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._workers: set[threading.Thread] = set()  # serving, counted against the limit
        self._abandoned: dict[threading.Thread, str] = {}  # running an abandoned call: tool
        self._queued = 0  # calls put and not yet taken
        self._idle = 0  # workers waiting for a call (or just started)
        self._count = 0

    async def run(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        call = _Call(name, fn, args, loop, loop.create_future())
        with self._lock:
            self._work.put(call)
            self._queued += 1
            self._grow()
        try:
            return await call.future
        except asyncio.CancelledError:
            self._abandon(call)
            raise

    def _grow(self) -> None:
        """Start a worker if a queued call would otherwise wait while under the limit."""
        if self._queued > self._idle and len(self._workers) < self.max_threads:
            self._count += 1
            thread = threading.Thread(
                target=self._serve, name=f"plait-tool-{self._count}", daemon=True
            )
            self._workers.add(thread)
            self._idle += 1
            thread.start()

    def _abandon(self, call: _Call) -> None:
        with self._lock:
            call.abandoned = True
            thread = call.thread
            if thread is not None and thread in self._workers:
                self._workers.discard(thread)
                self._abandoned[thread] = call.name
                self._grow()  # its place serves the queue now

    def _serve(self) -> None:
        me = threading.current_thread()
        while True:
            call = self._work.get()
            if call is None:
                return
            with self._lock:
                self._queued -= 1
                self._idle -= 1
                if call.abandoned:  # cancelled before it started: never run it
                    self._idle += 1
                    continue
                call.thread = me
            call.run()
            with self._lock:
                call.thread = None
                if me not in self._workers:  # its call was abandoned while it ran
                    self._abandoned.pop(me, None)
                    return
                self._idle += 1

    def close(self, grace: float) -> None:
        """Stop the workers (joined), and wait up to `grace` seconds for abandoned calls;
        warn about those still running: they are left to die with the process."""
        with self._lock:
            workers = list(self._workers)
            abandoned = dict(self._abandoned)
        for _ in workers:
            self._work.put(None)
        for thread in workers:
            thread.join()
        for thread in abandoned:
            thread.join(grace)
        stuck = sorted(name for thread, name in abandoned.items() if thread.is_alive())
        if stuck:
            names = ", ".join(sorted(set(stuck)))
            log.warning(
                "plait: warning: %d sync tool call%s (%s) still running after %s task "
                "ended; left to stop with the process",
                len(stuck),
                "" if len(stuck) == 1 else "s",
                names,
                "its" if len(stuck) == 1 else "their",
            )
