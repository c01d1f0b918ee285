"""The scheduler: pure dataflow over a Graph, inside one structured-concurrency scope.

No loop here polls or steps: adding a task dispatches it if its inputs are done, and a task
that finishes dispatches the dependents it made ready, from its own coroutine, at once. So a
fast branch never waits for a slow one (LangGraph's supersteps do), and the planner's tasks
start while it is still writing.

Every task runs as a child of one `asyncio.TaskGroup`: no task a run started outlives
`async with Scheduler(...)`. Where a call runs is the business of the `Backend` it is given
(core/backend.py): `plait.backends.local` (async tools on the loop, sync ones on daemon
threads) or Ray; the scheduler never constructs one. A thread cannot be interrupted, so a
sync tool that times out is reported failed at once and its thread abandoned: give long
sync work a `timeout` it honours itself, make it async, or run it on Ray.

A tool's exception is the tool's failure whatever its type (SystemExit, KeyboardInterrupt,
its own CancelledError). Only a KeyboardInterrupt raised by the process's signal handler (a
real Ctrl-C or SIGTERM that landed in a tool's code) stops the run, and only a cancel the
task really received cancels it. A backend that loses a call's worker (a Ray node died)
raises `WorkerLost`; the call runs again, within `lost_retries` of its own.

A `Journal` (the run store's side, plait/runs/runlog.py) makes the scheduler durable without
it knowing about storage: a task the journal recorded as ended in an earlier session ends
again from that record instead of running, and every result is offered to the journal
before it counts, so one that cannot be stored fails at the tool boundary. A task that was
running when a process died runs again on resume (at-least-once; `current_task()` gives
tools an idempotency key).
"""

from __future__ import annotations

import asyncio
import functools
import signal
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from ..errors import PlanError, WorkerLost
from . import events as ev
from .backend import Backend, InProcess, ToolRaised
from .context import TaskContext, entered
from .graph import CANCELLED, DONE, FAILED, PENDING, READY, SETTLED, Graph, GraphError, Node
from .remote import Remote, holds_remote
from .shared import SharedCalls, backoff, call_key
from .task import Task, dependencies, resolve
from .tools import Tool, Tools

INTERRUPTED = "interrupted"  # the error of tasks cancelled because their run stopped
LOST_BACKOFF = 0.5  # seconds before the first re-run of a call whose worker was lost


@dataclass(frozen=True, slots=True)
class Recorded:
    """How a task ended in an earlier session, as its journal kept it."""

    status: str  # DONE, FAILED or CANCELLED
    result: Any = None
    error: str | None = None


class Journal(Protocol):
    def recorded(self, task: Task) -> Recorded | None:
        """How `task` settled in an earlier session, if it did (same id and same call)."""

    def check(self, task_id: int, result: Any) -> Any:
        """The result as kept (what later tasks see, in this session and after a resume);
        raise TypeError or ValueError if it cannot be kept."""


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
        run_id: str = "",
        journal: Journal | None = None,
        shared: SharedCalls | None = None,
        limits: dict[str, asyncio.Semaphore] | None = None,
        backend: Backend | None = None,
        lost_retries: int = 3,
    ) -> None:
        self.tools = tools
        self.graph = Graph()
        self.run_id = run_id
        self._journal = journal
        # Pure tools' equal calls run once; a batch passes one SharedCalls to all its runs.
        self.shared = shared if shared is not None else SharedCalls()
        self._emit = emit
        self._clock = clock
        # The backend is the caller's (one pool for a whole batch), opened and closed by it;
        # without one, calls run in this process (`InProcess`): enough for a script's graph.
        self.backend: Backend = backend if backend is not None else InProcess()
        self.lost_retries = lost_retries
        # Per-tool limits; a batch passes one dict to all its runs, so they hold across runs.
        self._limits = limits if limits is not None else tool_limits(tools)
        self._running: dict[int, asyncio.Task[None]] = {}
        self._group: asyncio.TaskGroup | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._interrupting = False
        self._restored: set[int] = set()  # tasks settled from the journal this session
        self._remotes = False  # whether a result is kept on a cluster (see `_call`)
        self._signalled: BaseException | None = None  # a signal's interrupt, met in a tool

    async def __aenter__(self) -> Scheduler:
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._group is not None
        if et is not None:
            self._interrupt()
        try:
            if et is None or issubclass(et, asyncio.CancelledError):
                await self._group.__aexit__(et, e, tb)
            else:  # the body failed: children are cancelled; re-raise its error unwrapped
                await self._group.__aexit__(None, None, None)
        except KeyboardInterrupt as k:
            if k is not self._signalled:
                raise
            # A signal's, raised in a tool's task: asyncio has already raised it out of the
            # loop. Here the run only ends, cancelled, rather than end a second time with it.
            raise asyncio.CancelledError from None
        finally:
            self._group = None

    # the edit API --------------------------------------------------------------------

    def add(self, task: Task, *, checked: bool = False) -> Node:
        """Add a task (checked against its tool first); it starts now if its inputs are done.

        Raises PlanError for a task that can never run; the graph is then unchanged.
        `checked=True` skips the check for a task `Tools.prepare` already returned.
        """
        if self._group is None:  # before anything changes: a closed scope runs nothing
            raise RuntimeError("add tasks inside `async with Scheduler(...)`: its scope is closed")
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
        record = self._journal.recorded(task) if self._journal is not None else None
        if record is not None and not self._restorable(node, record):
            record = None  # its inputs may have changed since: run it again
        self._emit(ev.TaskAdded(self._clock(), task, record is not None))
        self._idle.clear()
        if record is not None:
            self._restore(node, record)
        elif node.status == READY:
            self._dispatch(node)
        elif node.status != PENDING:
            self._report_unrun([node])
        return node

    def _restorable(self, node: Node, record: Recorded) -> bool:
        """A record stands only where the task could have settled that way in this session:
        every input done, and restored too (an input that ran again may differ now)."""
        if record.status == CANCELLED:
            return node.status in (READY, PENDING)
        return (
            node.status == READY
            and record.status in (DONE, FAILED)
            and node.task.deps <= self._restored
        )

    def _restore(self, node: Node, record: Recorded) -> None:
        task_id = node.task.id
        self._restored.add(task_id)
        if record.status == CANCELLED:
            self._report_unrun(self.graph.cancel(task_id), restored=True)
            return
        self.graph.start(task_id)
        ok = record.status == DONE
        self._ended(task_id, ok, record.result if ok else record.error or FAILED, restored=True)

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
        self._report_unrun(nodes)
        return [n.task.id for n in nodes]

    def _interrupt(self) -> None:
        """The run itself is stopping: cancel what is open, reported as INTERRUPTED.
        Unlike an edit's `cancel`, this is no decision about the tasks: a resume runs them."""
        self._interrupting = True
        for task_id, node in list(self.graph.nodes.items()):
            if node.status not in SETTLED:
                self.cancel(task_id)

    async def wait(self) -> None:
        """Until every task added so far has settled."""
        await self._idle.wait()

    @property
    def results(self) -> dict[int, Any]:
        return self.graph.results

    # dataflow ------------------------------------------------------------------------

    def _dispatch(self, node: Node) -> None:
        assert self._group is not None
        self._running[node.task.id] = self._group.create_task(self._run(node))

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
        self._ended(task.id, *outcome)

    def _ended(self, task_id: int, ok: bool, value: Any, restored: bool = False) -> None:
        """Report how a task that ran (or was restored) ended; start what that made ready."""
        t = self._clock()
        if ok:
            self._remotes = self._remotes or type(value) is Remote
            ready = self.graph.finish(task_id, value)
            self._emit(ev.TaskFinished(t, task_id, DONE, value, None, restored))
            for node in ready:
                self._dispatch(node)
            if self.graph.open == 0:
                self._idle.set()
        else:
            self._emit(ev.TaskFinished(t, task_id, FAILED, None, value, restored))
            self._report_unrun(self.graph.fail(task_id, value))

    async def _attempts(self, node: Node, tool: Tool) -> tuple[bool, Any]:
        task = node.task
        self.graph.start(task.id)
        self._emit(ev.TaskStarted(self._clock(), task.id, task.tool))
        attempt = failures = lost = 0
        while True:
            try:
                entered(TaskContext(self.run_id, task.id, attempt + 1))
                value = await self._call(tool, task)
            except WorkerLost as e:
                lost += 1
                error, n, base = f"worker lost: {e}", lost, LOST_BACKOFF
                if lost > self.lost_retries:
                    return False, error
            except Exception as e:
                error = _describe(e, tool)
                failures += 1
                n, base = failures, tool.retry_backoff
                if failures > tool.retries:
                    return False, error
            else:
                if self._journal is None:
                    return True, value
                try:
                    return True, self._journal.check(task.id, value)
                except (TypeError, ValueError) as e:
                    return False, f"result cannot be stored: {e}"
            attempt += 1
            self._emit(ev.TaskRetrying(self._clock(), task.id, attempt, error))
            # A lost worker's cluster needs a moment to notice: LOST_BACKOFF is longer.
            await asyncio.sleep(backoff(base, n))

    async def _call(self, tool: Tool, task: Task) -> Any:
        kwargs = task.kwargs
        if task.deps:
            kwargs = resolve(kwargs, self.graph.results, task.deps)
        # Only a backend's result is ever a Remote: until one is, no argument holds one.
        if (self._remotes or not task.deps) and holds_remote(kwargs):
            # A result kept on the cluster: the backend checks the arguments where the value is.
            return await self._invoke(tool, kwargs)
        kwargs = tool.validate(kwargs)
        if tool.pure:
            key = call_key(tool.name, kwargs)
            if key is not None:
                return await self.shared.call(key, lambda: self._invoke(tool, kwargs))
        return await self._invoke(tool, kwargs)

    async def _invoke(self, tool: Tool, kwargs: dict[str, Any]) -> Any:
        """The backend's call, under the tool's timeout; a BaseException the tool raised
        is its failure (`ToolRaised`), unless it is a real cancel or signal."""
        try:
            if tool.timeout is None:
                return await self.backend.call(tool, kwargs)
            async with asyncio.timeout(tool.timeout):
                return await self.backend.call(tool, kwargs)
        except Exception:
            raise
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # a real cancel (an edit, a timeout, the run stopping)
            raise ToolRaised(asyncio.CancelledError()) from None  # the tool raised it itself
        except BaseException as e:
            if from_signal(e):
                self._signalled = e
                raise  # a real Ctrl-C or SIGTERM, landed in the tool's code: the run stops
            raise ToolRaised(e) from None

    def _report_unrun(self, nodes: list[Node], restored: bool = False) -> None:
        """Report nodes that settled without running (skipped or cancelled)."""
        t = self._clock()
        for n in nodes:
            error = INTERRUPTED if self._interrupting and n.status == CANCELLED else n.error
            self._emit(ev.TaskFinished(t, n.task.id, n.status, None, error, restored))
        if self.graph.open == 0:
            self._idle.set()


def tool_limits(tools: Tools) -> dict[str, asyncio.Semaphore]:
    """A semaphore per tool that declares `max_concurrency`."""
    return {
        t.name: asyncio.Semaphore(t.max_concurrency) for t in tools.values() if t.max_concurrency
    }


def from_signal(e: BaseException) -> bool:
    """Whether `e` was raised by this process's SIGINT or SIGTERM handler (asyncio's Ctrl-C
    handler, the CLI's SIGTERM one), not by a tool's own code: the innermost frame of its
    traceback is the handler's. Signal handlers run only in the main thread."""
    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler: Any = signal.getsignal(signum)
        while isinstance(handler, functools.partial):
            handler = handler.func
        handler = getattr(handler, "__func__", handler)
        if getattr(handler, "__code__", None) is code:
            return True
    return False


def _describe(e: BaseException, tool: Tool) -> str:
    if isinstance(e, TimeoutError) and tool.timeout is not None:
        return f"timed out after {tool.timeout:g}s"
    if isinstance(e, ToolRaised):
        e = e.original
    try:
        text = str(e)
    except Exception:  # a hostile __str__ is still only the tool's failure
        text = "(its message cannot be shown)"
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
