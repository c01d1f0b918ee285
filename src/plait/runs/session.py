"""One run's life: its store, log, backend and scheduler, from start to RunResult.

`run_session(spec, body)` opens what `spec` (a `RunSpec`) names, runs `body` inside one
scheduler scope and returns the run's RunResult. The body is the run's work (the agent
loop, or a written plan) and returns its `Outcome`; the session, not the body, decides the
run's final status, with `final_status`: a pure function of the outcome and the recorded
tasks. With a store, the run is created there (`spec.new`) or claimed to be resumed
(`spec.new` is None), every event is logged, and the log is committed before the session
returns, whatever happens.

A batch's runs share work: `Shared` (equal pure calls done once, per-tool limits held
across the batch) is given to each run's spec, and the batch's one backend with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from pydantic_core import from_json

from ..backends import Backend, open_backend
from ..core import events as ev
from ..core.graph import CANCELLED, DONE, FAILED, SKIPPED
from ..core.scheduler import Scheduler
from ..core.shared import SharedCalls
from ..core.task import Task
from ..core.tools import Tools
from ..stores import LEASE_SECONDS, RunInfo, Store, open_store
from ..stores.base import new_holder
from .result import Recorder, RunResult, TaskRecord
from .runlog import TASK_ADDED, Restored, RunLog

StoreLike = Store | str | None
# "local" (the default: the event loop and a thread pool), "ray", or an open Backend.
BackendLike = Backend | str | None


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def logged_task_ids(store: Store, run_id: str) -> set[int]:
    """The ids of every task run `run_id`'s log holds, from all its sessions: what a live
    edit must not take again, though a resumed session has not put them back in its graph
    yet (or will not: a written plan's edits). Blocking: it reads the whole log."""
    return {
        from_json(record.data)["id"]
        for record in store.records(run_id)
        if record.kind == TASK_ADDED
    }


@dataclass(frozen=True, slots=True)
class Shared:
    """What the runs of one batch share: pure calls done once, and per-tool limits (so a
    tool's `max_concurrency` holds across the batch)."""

    calls: SharedCalls
    limits: dict[str, asyncio.Semaphore]


@dataclass(frozen=True, slots=True)
class RunSpec:
    """What one session of a run is: everything `run_session` needs, named once."""

    tools: Tools
    run_id: str
    question: str | None  # None: a written plan, whose every task must succeed
    store: StoreLike = None
    new: RunInfo | None = None  # with a store: the run to create; None resumes `run_id`
    backend: BackendLike = None  # opened (and closed) here when given by name
    shared: Shared | None = None  # a batch's; a run on its own shares nothing
    on_event: ev.Listener | None = None
    # Told the run's scheduler once it exists: a service's handle for live edits (add, cancel).
    on_scheduler: Callable[[Scheduler], None] | None = None


class Outcome(Protocol):
    """What a run's body concluded: an answer, or why there is none."""

    @property
    def answer(self) -> str | None: ...

    @property
    def error(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Run:
    """What a session's body works with."""

    scheduler: Scheduler
    emit: ev.Listener
    clock: Callable[[], float]
    run_id: str
    replies: dict[int, ev.LLMFinished]  # recorded replies, when resuming
    defined: dict[int, Task]  # recorded task definitions, when resuming


Body = Callable[[Run], Awaitable[Outcome]]


def final_status(
    outcome: Outcome, tasks: Iterable[TaskRecord], *, written: bool
) -> tuple[str, str | None]:
    """A run's status and error once its body returned `outcome`, given its tasks' records.

    A question's run is done when the joiner answered: it saw any failure and still answered.
    A written plan (`written`) is done only when it has an answer and no task failed or was
    skipped; otherwise the error names the first task that failed (else the first that did
    not finish).
    """
    if not written:
        return (DONE if outcome.answer is not None else FAILED), outcome.error
    records = list(tasks)
    if outcome.answer is not None and all(r.status not in (FAILED, SKIPPED) for r in records):
        return DONE, outcome.error
    bad = next((r for r in records if r.status == FAILED), None)
    bad = bad or next((r for r in records if r.status != DONE), None)
    if bad is None:
        return FAILED, outcome.error or "no answer"
    return FAILED, f"task {bad.id} ({bad.tool}) {bad.status}: {bad.error}"


@contextlib.asynccontextmanager
async def using_backend(backend: BackendLike) -> AsyncIterator[Backend]:
    """The backend to run on, opened here (and closed after) when given by name; None is
    "local"."""
    if backend is None:
        backend = "local"
    if not isinstance(backend, str):
        yield backend
        return
    opened = open_backend(backend)
    try:
        yield opened
    finally:
        await opened.aclose()


async def run_session(spec: RunSpec, body: Body) -> RunResult:
    """Run `body` as one session of the run `spec` names; its RunResult, from its events."""
    async with using_backend(spec.backend) as backend:
        durable = await _open(spec.store, spec.run_id, spec.new)
        return await _run(spec, body, backend, durable)


async def _run(spec: RunSpec, body: Body, backend: Backend, durable: _Durable | None) -> RunResult:
    log = durable.log if durable is not None else None
    recorder = Recorder()
    emit = ev.Emitter(recorder, log, spec.on_event)
    start = time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - start

    status, error = FAILED, None
    try:
        emit(
            ev.RunStarted(0.0, spec.run_id, spec.question, durable is not None and spec.new is None)
        )
        shared = spec.shared
        async with Scheduler(
            spec.tools,
            emit,
            clock,
            run_id=spec.run_id,
            journal=log,
            shared=shared.calls if shared is not None else None,
            limits=shared.limits if shared is not None else None,
            backend=backend,
        ) as scheduler:
            if spec.on_scheduler is not None:
                spec.on_scheduler(scheduler)
            restored = log.restored if log is not None else Restored()
            run = Run(scheduler, emit, clock, spec.run_id, restored.replies, restored.defined)
            outcome = await body(run)
        if outcome.answer is not None and recorder.answer is None:
            emit(ev.Answered(clock(), outcome.answer))  # a written plan's
        written = spec.question is None
        status, error = final_status(outcome, recorder.tasks.values(), written=written)
    except asyncio.CancelledError:
        status, error = CANCELLED, "cancelled"
        if log is not None and log.failure is not None:
            # Stopped by the store's failure, not by the caller: close() raises it instead.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        else:
            raise
    except KeyboardInterrupt:  # a second Ctrl-C (a tool's own is its task's failure)
        status, error = CANCELLED, "interrupted"
        raise
    except BaseException as e:
        status, error = FAILED, f"{type(e).__name__}: {e}"
        raise
    finally:
        result = recorder.result(status, error, clock())
        try:
            emit(ev.RunFinished(clock(), result))
        finally:
            if durable is not None:
                await durable.close(status, result.answer, error)
    return result


@dataclass(slots=True)
class _Durable:
    """The run's store side for one session: its log, and whether this session opened it."""

    store: Store
    log: RunLog
    owned: bool

    async def close(self, status: str, answer: str | None, error: str | None) -> None:
        """Commit the log and let the run go; a second Ctrl-C does not cut this short."""
        done = asyncio.ensure_future(asyncio.to_thread(self.log.close, status, answer, error))
        cancelled = False
        while not done.done():
            try:
                await asyncio.shield(done)
            except asyncio.CancelledError:
                cancelled = True  # keep waiting: the store must not close under the writer
        try:
            done.result()
        finally:
            if self.owned:
                await asyncio.to_thread(self.store.close)
        if cancelled:
            raise asyncio.CancelledError


async def _open(store: StoreLike, run_id: str, new: RunInfo | None) -> _Durable | None:
    """Create (new) or claim (resume) the run in the store, and start its log."""
    if store is None:
        return None
    owned = isinstance(store, str)
    opened = await asyncio.to_thread(open_store, store) if isinstance(store, str) else store
    holder = new_holder()
    try:
        if new is not None:
            new.holder, new.lease_until = holder, time.time() + LEASE_SECONDS
            await asyncio.to_thread(opened.create, new)
            info, restored = new, Restored()
        else:
            info = await asyncio.to_thread(opened.claim, run_id, holder, LEASE_SECONDS)
            restored = await asyncio.to_thread(lambda: Restored(opened.records(run_id)))
    except BaseException:
        if owned:
            await asyncio.to_thread(opened.close)
        raise
    session = asyncio.current_task()
    loop = asyncio.get_running_loop()

    def stop(error: BaseException) -> None:
        # From the writer thread: the run cannot be recorded any more, so it stops.
        if session is not None:
            loop.call_soon_threadsafe(session.cancel)

    log = RunLog(opened, info, holder, restored, on_fatal=stop)
    log.start()
    return _Durable(opened, log, owned)


__all__ = [
    "BackendLike",
    "Body",
    "Outcome",
    "Run",
    "RunSpec",
    "Shared",
    "StoreLike",
    "final_status",
    "logged_task_ids",
    "new_run_id",
    "run_session",
    "using_backend",
]
