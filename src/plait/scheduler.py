"""The scheduler: pure dataflow over a Graph, inside one structured-concurrency scope.

There is no loop here that polls or steps. Adding a task dispatches it if its inputs are
done; a task that finishes dispatches the dependents it made ready, from its own coroutine,
at once. So a fast branch never waits for a slow one (LangGraph's supersteps do), and the
planner's tasks start while it is still writing.

Every task runs as a child of one `asyncio.TaskGroup`; leaving `async with Scheduler(...)`
waits for or cancels all of them and for the threads of sync tools, so nothing a run started
outlives it. Sync tools run in a thread pool the scheduler owns; a thread cannot be
interrupted, so a sync tool that times out is reported failed at once and its thread is
joined when the scope closes. Give long sync work a `timeout` that it honours itself, or
make it async.
"""

from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

from . import events as ev
from .errors import PlanError
from .graph import CANCELLED, Graph, GraphError, Node
from .plan import Task, dependencies, resolve
from .tools import Tool, Tools


class Scheduler:
    """Runs tasks as soon as their inputs exist, under per-tool limits.

    Use as `async with Scheduler(tools, emit, clock) as s:` then `s.add(task)`, `s.cancel(id)`,
    `await s.wait()`. `add` and `cancel` are the live-edit API; replanning uses them too.
    """

    def __init__(
        self,
        tools: Tools,
        emit: ev.Listener,
        clock: Callable[[], float],
        *,
        max_threads: int = 32,
    ) -> None:
        self.tools = tools
        self.graph = Graph()
        self._emit = emit
        self._clock = clock
        self._max_threads = max_threads
        self._pool: ThreadPoolExecutor | None = None
        self._limits: dict[str, asyncio.Semaphore] = {
            t.name: asyncio.Semaphore(t.max_concurrency)
            for t in tools.values()
            if t.max_concurrency
        }
        self._running: dict[int, asyncio.Task[None]] = {}
        self._group: asyncio.TaskGroup | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    async def __aenter__(self) -> Scheduler:
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._group is not None
        if et is not None:
            self.cancel_all()
        try:
            if et is None or issubclass(et, asyncio.CancelledError):
                await self._group.__aexit__(et, e, tb)
            else:  # the body failed: children are cancelled; re-raise its error unwrapped
                await self._group.__aexit__(None, None, None)
        finally:
            self._group = None
            if self._pool is not None:
                pool, self._pool = self._pool, None
                await asyncio.shield(asyncio.to_thread(pool.shutdown, True, cancel_futures=True))

    # the edit API --------------------------------------------------------------------

    def add(self, task: Task, *, checked: bool = False) -> Node:
        """Add a task (checked against its tool first); it starts now if its inputs are done.

        Raises PlanError for a task that can never run; the graph is then unchanged.
        `checked=True` skips the check for a task `Tools.prepare` already returned.
        """
        if not checked:
            if not task.deps and (task.args or task.kwargs):
                # Tasks built by hand name their inputs only through references.
                refs = (*task.args, *task.kwargs.values())
                task.deps = dependencies(task.id, refs, self.graph.nodes, task.line)
            task = self.tools.prepare(task)
        try:
            node = self.graph.add(task)
        except GraphError as e:
            raise PlanError(str(e), line=task.line) from None
        self._emit(ev.TaskAdded(self._clock(), task))
        self._idle.clear()
        if node.status == "ready":
            self._dispatch(node)
        elif node.status != "pending":
            self._settled([node])
        return node

    def cancel(self, task_id: int) -> list[int]:
        """Cancel a task and everything that depends on it; return the ids cancelled."""
        try:
            nodes = self.graph.cancel(task_id)
        except GraphError as e:
            raise PlanError(str(e)) from None
        for node in nodes:
            running = self._running.pop(node.task.id, None)
            if running is not None:
                running.cancel()
        self._settled(nodes)
        return [n.task.id for n in nodes]

    def cancel_all(self) -> None:
        for task_id, node in list(self.graph.nodes.items()):
            if node.status not in ("done", "failed", "skipped", "cancelled"):
                self.cancel(task_id)

    async def wait(self) -> None:
        """Until every task added so far has settled."""
        await self._idle.wait()

    @property
    def results(self) -> dict[int, Any]:
        return self.graph.results

    # dataflow ------------------------------------------------------------------------

    def _dispatch(self, node: Node) -> None:
        assert self._group is not None, "use the scheduler inside `async with`"
        task_id = node.task.id
        self._running[task_id] = self._group.create_task(self._run(node))

    async def _run(self, node: Node) -> None:
        task = node.task
        tool = self.tools[task.tool]
        limit = self._limits.get(tool.name)
        try:
            if limit is None:
                outcome = await self._attempts(node, tool)
            else:
                async with limit:
                    outcome = await self._attempts(node, tool)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if node.status == CANCELLED and current is not None and current.cancelling() == 1:
                current.uncancel()
                return  # an edit cancelled just this task; already reported
            raise
        self._running.pop(task.id, None)
        ok, value = outcome
        if ok:
            ready = self.graph.finish(task.id, value)
            self._emit(ev.TaskFinished(self._clock(), task.id, "done", value))
            for dep in ready:
                self._dispatch(dep)
        else:
            self._emit(ev.TaskFinished(self._clock(), task.id, "failed", None, value))
            self._settled(self.graph.fail(task.id, value))
        if self.graph.open == 0:
            self._idle.set()

    async def _attempts(self, node: Node, tool: Tool) -> tuple[bool, Any]:
        task = node.task
        self.graph.start(task.id)
        self._emit(ev.TaskStarted(self._clock(), task.id, task.tool))
        attempt = 0
        while True:
            try:
                return True, await self._call(tool, task)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                error = _describe(e, tool)
                if attempt >= tool.retries:
                    return False, error
            attempt += 1
            self._emit(ev.TaskRetrying(self._clock(), task.id, attempt, error))
            await asyncio.sleep(tool.retry_backoff * 2 ** (attempt - 1) * (0.5 + random.random()))

    async def _call(self, tool: Tool, task: Task) -> Any:
        kwargs = task.kwargs
        if task.deps:
            kwargs = resolve(kwargs, self.graph.results)
        kwargs = tool.validate(kwargs)
        if tool.timeout is None:
            return await self._invoke(tool, kwargs)
        async with asyncio.timeout(tool.timeout):
            return await self._invoke(tool, kwargs)

    async def _invoke(self, tool: Tool, kwargs: dict[str, Any]) -> Any:
        if tool.is_async:
            return await tool.invoke(kwargs)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._max_threads, thread_name_prefix="plait-tool")
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._pool, tool.invoke, kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    def _settled(self, nodes: list[Node]) -> None:
        """Report nodes that settled without running (skipped or cancelled)."""
        t = self._clock()
        for n in nodes:
            self._emit(ev.TaskFinished(t, n.task.id, n.status, None, n.error))
        if self.graph.open == 0:
            self._idle.set()


def _describe(e: BaseException, tool: Tool) -> str:
    if isinstance(e, TimeoutError) and tool.timeout is not None:
        return f"timed out after {tool.timeout:g}s"
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
