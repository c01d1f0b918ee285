"""The public entry points. The CLI (and later the service) are thin shells over these.

Async is canonical: `run` and `execute` are `asyncio.run` over `arun` and `aexecute`, never a
second implementation (on a worker thread's own loop when the caller's thread runs one).
`astream` is the same run seen as its event stream, for UIs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .agent.loop import Agent, Outcome, RetryPolicy, execute_plan, prepare_plan
from .backends import Backend, open_backend
from .core import events as ev
from .core.scheduler import Scheduler
from .core.shared import SharedCalls
from .core.task import Task
from .core.tools import Tool, Tools
from .llm import LLM, resolve_model, with_sampling
from .runs.loading import as_tools
from .runs.result import Recorder, RunResult
from .runs.runlog import Restored, RunLog, stored_result
from .stores import LEASE_SECONDS, RunInfo, RunNotFound, Store, StoreError, open_store
from .stores.base import new_holder

ToolsLike = Tools | Iterable[Tool | Callable[..., Any] | Tools | str] | Mapping[str, Any] | str
DEFAULT_MODEL = "local"


StoreLike = Store | str | None
# "local" (the default: the event loop and a thread pool), "ray", or an open Backend.
BackendLike = Backend | str | None


@dataclass(frozen=True, slots=True)
class Sharing:
    """What the runs of one batch share: pure calls done once, per-tool limits, and where
    tools run."""

    calls: SharedCalls
    limits: dict[str, asyncio.Semaphore]
    backend: Backend | None = None


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


# Set by a batch around each of its runs; a run started outside a batch shares nothing.
sharing: contextvars.ContextVar[Sharing | None] = contextvars.ContextVar(
    "plait_sharing", default=None
)


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


@dataclass(slots=True)
class _Run:
    """What a session body works with."""

    scheduler: Scheduler
    emit: ev.Listener
    clock: Callable[[], float]
    run_id: str
    outcome: Outcome
    replies: dict[int, ev.LLMFinished]  # recorded replies, when resuming
    defined: dict[int, Task]  # recorded task definitions, when resuming


Body = Callable[[_Run], Awaitable[None]]
# Told the run's scheduler once it exists: a service's handle for live edits (add, cancel).
OnScheduler = Callable[[Scheduler], None]


async def _session(
    body: Body,
    tools: ToolsLike,
    on_event: ev.Listener | None,
    run_id: str | None,
    question: str | None,
    store: StoreLike = None,
    new: RunInfo | None = None,
    backend: BackendLike = None,
    on_scheduler: OnScheduler | None = None,
) -> RunResult:
    """Run `body` inside one scheduler scope and turn its events into a RunResult.

    With a store, the run is created there (`new`) or claimed to be resumed (`new` is None),
    and every event is logged; the log is committed before this returns, whatever happens.
    """
    shared = sharing.get()
    if backend is None and shared is not None:
        backend = shared.backend
    async with using_backend(backend) as opened:
        return await _session_on(
            body, tools, on_event, run_id, question, store, new, opened, on_scheduler
        )


async def _session_on(
    body: Body,
    tools: ToolsLike,
    on_event: ev.Listener | None,
    run_id: str | None,
    question: str | None,
    store: StoreLike,
    new: RunInfo | None,
    backend: Backend,
    on_scheduler: OnScheduler | None = None,
) -> RunResult:
    registry = as_tools(tools)
    run_id = run_id or uuid.uuid4().hex[:12]
    if new is not None:
        new.id = run_id
    durable = await _open(store, run_id, new)
    log = durable.log if durable is not None else None
    recorder = Recorder()
    emit = ev.Emitter(recorder, log, on_event)
    start = time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - start

    outcome = Outcome()
    resumed = durable is not None and new is None
    status = "failed"
    try:
        emit(ev.RunStarted(0.0, run_id, question, resumed))
        shared = sharing.get()
        async with Scheduler(
            registry,
            emit,
            clock,
            run_id=run_id,
            journal=log,
            shared=shared.calls if shared is not None else None,
            limits=shared.limits if shared is not None else None,
            backend=backend,
        ) as scheduler:
            if on_scheduler is not None:
                on_scheduler(scheduler)
            restored = log.restored if log is not None else Restored()
            run = _Run(scheduler, emit, clock, run_id, outcome, restored.replies, restored.defined)
            await body(run)
        if outcome.answer is not None and recorder.answer is None:
            emit(ev.Answered(clock(), outcome.answer))
        failed = any(r.status in ("failed", "skipped") for r in recorder.tasks.values())
        if question is None:  # a written plan: every task must succeed
            status = "failed" if failed or outcome.answer is None else "done"
            if failed:
                bad = next(r for r in recorder.tasks.values() if r.status == "failed")
                outcome.error = f"task {bad.id} ({bad.tool}) failed: {bad.error}"
            elif outcome.answer is None:
                bad = next(r for r in recorder.tasks.values() if r.status != "done")
                outcome.error = f"task {bad.id} ({bad.tool}) {bad.status}: {bad.error}"
        else:  # a question: the joiner saw any failure and still answered
            status = "done" if outcome.answer is not None else "failed"
    except asyncio.CancelledError:
        status, outcome.error = "cancelled", "cancelled"
        if log is not None and log.failure is not None:
            # Stopped by the store's failure, not by the caller: close() raises it instead.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        else:
            raise
    except KeyboardInterrupt:  # a second Ctrl-C (a tool's own is its task's failure)
        status, outcome.error = "cancelled", "interrupted"
        raise
    except BaseException as e:
        status, outcome.error = "failed", outcome.error or f"{type(e).__name__}: {e}"
        raise
    finally:
        result = recorder.result(status, outcome.error, clock())
        try:
            emit(ev.RunFinished(clock(), result))
        finally:
            if durable is not None:
                await durable.close(status, result.answer, outcome.error)
    return result


async def aexecute(
    plan: str,
    *,
    tools: ToolsLike,
    on_event: ev.Listener | None = None,
    run_id: str | None = None,
    store: StoreLike = None,
    backend: BackendLike = None,
    on_scheduler: OnScheduler | None = None,
) -> RunResult:
    """Run a written plan (text or JSON form). Raises PlanError before anything runs if it
    cannot be run; a task that fails makes the result's status "failed".

    With `store` (a Store or a URL such as "sqlite:///runs.db") the run is recorded under
    `run_id` and can be finished later with `aresume` if this process dies. `backend`
    says where tools run: "local" (the default) or "ray" (a Ray cluster; see backends/ray.py).
    `on_scheduler` is called with the run's Scheduler once it exists (for live edits).
    """
    registry = as_tools(tools)
    tasks = prepare_plan(plan, registry)  # before the store: a bad plan makes no run
    now = time.time()
    new = RunInfo("", "plan", plan, None, list(registry), created=now, updated=now)

    async def body(r: _Run) -> None:
        await execute_plan(tasks, r.scheduler, r.outcome)

    return await _session(body, registry, on_event, run_id, None, store, new, backend, on_scheduler)


async def arun(
    question: str,
    *,
    tools: ToolsLike,
    model: str | LLM = DEFAULT_MODEL,
    max_replans: int = 2,
    on_event: ev.Listener | None = None,
    run_id: str | None = None,
    base_url: str | None = None,
    examples: str | None = None,
    retry: RetryPolicy | None = None,
    store: StoreLike = None,
    backend: BackendLike = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    on_scheduler: OnScheduler | None = None,
) -> RunResult:
    """Answer a question: plan with the model, run the plan's tasks as they stream, join.

    With `store`, the run is recorded under `run_id`, replies and results included, and
    `aresume` finishes it without asking the model again for what it already answered.
    `temperature` and `max_tokens` (a reply's bound) apply to every model call of the run.
    """
    llm = with_sampling(resolve_model(model, base_url=base_url), temperature, max_tokens)
    registry = as_tools(tools)
    spec = model if isinstance(model, str) else llm.name
    options: dict[str, Any] = {
        "max_replans": max_replans,
        "base_url": base_url,
        "examples": examples,
    }
    if temperature is not None or max_tokens is not None:
        options.update(temperature=temperature, max_tokens=max_tokens)
    now = time.time()
    new = RunInfo("", "question", question, spec, list(registry), options, created=now, updated=now)
    return await _session(
        _answer(question, llm, registry, max_replans, examples, retry),
        registry,
        on_event,
        run_id,
        question,
        store,
        new,
        backend,
        on_scheduler,
    )


def _answer(
    question: str,
    llm: LLM,
    registry: Tools,
    max_replans: int,
    examples: str | None,
    retry: RetryPolicy | None,
) -> Body:
    shots = examples if examples is not None else registry.examples

    async def body(r: _Run) -> None:
        agent = Agent(
            llm,
            r.scheduler,
            r.emit,
            r.clock,
            run_id=r.run_id,
            max_replans=max_replans,
            examples=shots,
            retry=retry,
            replies=r.replies,
            defined=r.defined,
        )
        await agent.answer(question, r.outcome)

    return body


async def aresume(
    run_id: str,
    *,
    tools: ToolsLike,
    store: Store | str,
    model: str | LLM | None = None,
    base_url: str | None = None,
    on_event: ev.Listener | None = None,
    retry: RetryPolicy | None = None,
    backend: BackendLike = None,
    on_scheduler: OnScheduler | None = None,
) -> RunResult:
    """Finish a run recorded in `store`: tasks it recorded settled are not run again, and
    replies it recorded are not asked for again. A run that already finished is returned
    as recorded. Raises RunNotFound, or RunHeld while another process is running it."""
    opened = await asyncio.to_thread(open_store, store) if isinstance(store, str) else store
    try:
        info = await asyncio.to_thread(opened.get, run_id)
        if info is None:
            raise RunNotFound(f"no run {run_id} in {opened.url}")
        if info.status == "done":
            records = await asyncio.to_thread(lambda: list(opened.records(run_id)))
            result = stored_result(info, records)
            if on_event is not None:
                on_event(ev.RunFinished(result.elapsed, result))
            return result
        registry = as_tools(tools)
        missing = sorted(set(info.tools) - set(registry))
        if missing:
            raise StoreError(f"run {run_id} used tools this --tools lacks: {', '.join(missing)}")
        if info.kind == "plan":
            tasks = prepare_plan(info.source, registry)

            async def run_plan(r: _Run) -> None:
                await execute_plan(tasks, r.scheduler, r.outcome)

            return await _session(
                run_plan, registry, on_event, run_id, None, opened, None, backend, on_scheduler
            )
        options = info.options
        spec = model if model is not None else info.model
        if spec is None:
            raise StoreError(f"run {run_id} does not say which model it used: pass model=")
        llm = with_sampling(
            resolve_model(spec, base_url=base_url or options.get("base_url")),
            options.get("temperature"),
            options.get("max_tokens"),
        )
        body = _answer(
            info.source,
            llm,
            registry,
            options.get("max_replans", 2),
            options.get("examples"),
            retry,
        )
        return await _session(
            body, registry, on_event, run_id, info.source, opened, None, backend, on_scheduler
        )
    finally:
        if isinstance(store, str):
            await asyncio.to_thread(opened.close)


def execute(plan: str, *, tools: ToolsLike, **kwargs: Any) -> RunResult:
    """Blocking `aexecute`."""
    return _blocking(aexecute(plan, tools=tools, **kwargs))


def run(question: str, *, tools: ToolsLike, **kwargs: Any) -> RunResult:
    """Blocking `arun`."""
    return _blocking(arun(question, tools=tools, **kwargs))


def resume(run_id: str, *, tools: ToolsLike, store: Store | str, **kwargs: Any) -> RunResult:
    """Blocking `aresume`."""
    return _blocking(aresume(run_id, tools=tools, store=store, **kwargs))


def _blocking(coro: Coroutine[Any, Any, RunResult]) -> RunResult:
    """`asyncio.run(coro)`; called where an event loop already runs in this thread (a Jupyter
    cell, an async framework's sync callback), on a loop of its own in a worker thread,
    which blocks this thread until the run ends, as a blocking call does."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    context = contextvars.copy_context()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="plait-sync") as pool:
        return pool.submit(context.run, asyncio.run, coro).result()


async def astream(
    question: str | None = None, *, plan: str | None = None, **kwargs: Any
) -> AsyncIterator[ev.Event]:
    """The run's events as they happen; the last is RunFinished, which carries the result.

    Give a question (planned with `model=`) or a written `plan=`. Breaking out of the loop
    cancels the run and waits for it to stop.
    """
    if (question is None) == (plan is None):
        raise TypeError("astream needs exactly one of question or plan=")
    queue: asyncio.Queue[ev.Event | BaseException] = asyncio.Queue()
    kwargs["on_event"] = queue.put_nowait
    coro = aexecute(plan, **kwargs) if plan is not None else arun(question, **kwargs)  # type: ignore[arg-type]

    async def drive() -> None:
        try:
            await coro
        except BaseException as e:
            queue.put_nowait(e)
            raise

    task = asyncio.create_task(drive())
    try:
        while True:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, ev.RunFinished):
                break
        await task
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
