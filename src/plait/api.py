"""The public entry points. The CLI (and later the service) are thin shells over these.

Async is canonical: `run` and `execute` are `asyncio.run` over `arun` and `aexecute`, never a
second implementation. `astream` is the same run seen as its event stream, for UIs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

from . import events as ev
from .agent import Agent, Outcome, RetryPolicy, execute_plan
from .llm import LLM, resolve_model
from .result import Recorder, RunResult
from .scheduler import Scheduler
from .tools import Tool, Tools

ToolsLike = Tools | Iterable[Tool | Callable[..., Any]] | Mapping[str, Any] | str
DEFAULT_MODEL = "local"


async def _session(
    body: Callable[[Scheduler, ev.Listener, Callable[[], float], str, Outcome], Awaitable[None]],
    tools: ToolsLike,
    on_event: ev.Listener | None,
    run_id: str | None,
    question: str | None,
) -> RunResult:
    """Run `body` inside one scheduler scope and turn its events into a RunResult."""
    registry = Tools.coerce(tools)
    run_id = run_id or uuid.uuid4().hex[:12]
    recorder = Recorder()
    emit = ev.Emitter(recorder, on_event)
    start = time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - start

    outcome = Outcome()
    emit(ev.RunStarted(0.0, run_id, question))
    status = "failed"
    try:
        async with Scheduler(registry, emit, clock) as scheduler:
            await body(scheduler, emit, clock, run_id, outcome)
        if outcome.answer is not None and recorder.answer is None:
            emit(ev.Answered(clock(), outcome.answer))
        failed = any(r.status in ("failed", "skipped") for r in recorder.tasks.values())
        if question is None:  # a written plan: every task must succeed
            status = "failed" if failed or outcome.answer is None else "done"
            if failed:
                bad = next(r for r in recorder.tasks.values() if r.status == "failed")
                outcome.error = f"task {bad.id} ({bad.tool}) failed: {bad.error}"
        else:  # a question: the joiner saw any failure and still answered
            status = "done" if outcome.answer is not None else "failed"
    except asyncio.CancelledError:
        status, outcome.error = "cancelled", "cancelled"
        emit(ev.RunFinished(clock(), recorder.result(status, outcome.error, clock())))
        raise
    result = recorder.result(status, outcome.error, clock())
    emit(ev.RunFinished(clock(), result))
    return result


async def aexecute(
    plan: str,
    *,
    tools: ToolsLike,
    on_event: ev.Listener | None = None,
    run_id: str | None = None,
) -> RunResult:
    """Run a written plan (text or JSON form). Raises PlanError before anything runs if it
    cannot be run; a task that fails makes the result's status "failed"."""

    async def body(s: Scheduler, emit: ev.Listener, clock: Any, rid: str, out: Outcome) -> None:
        await execute_plan(plan, s, out)

    return await _session(body, tools, on_event, run_id, None)


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
) -> RunResult:
    """Answer a question: plan with the model, run the plan's tasks as they stream, join."""
    llm = resolve_model(model, base_url=base_url)
    registry = Tools.coerce(tools)
    shots = examples if examples is not None else registry.examples

    async def body(s: Scheduler, emit: ev.Listener, clock: Any, rid: str, out: Outcome) -> None:
        agent = Agent(
            llm, s, emit, clock, run_id=rid, max_replans=max_replans, examples=shots, retry=retry
        )
        await agent.answer(question, out)

    return await _session(body, registry, on_event, run_id, question)


def execute(plan: str, *, tools: ToolsLike, **kwargs: Any) -> RunResult:
    """Blocking `aexecute`."""
    return asyncio.run(aexecute(plan, tools=tools, **kwargs))


def run(question: str, *, tools: ToolsLike, **kwargs: Any) -> RunResult:
    """Blocking `arun`."""
    return asyncio.run(arun(question, tools=tools, **kwargs))


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
