"""The public entry points. The CLI (and later the service) are thin shells over these.

Async is canonical: `run` and `execute` are `asyncio.run` over `arun` and `aexecute`, never a
second implementation (on a worker thread's own loop when the caller's thread runs one).
`astream` is the same run seen as its event stream, for UIs.

Each entry point only says what its run is: a `RunSpec` and a body (the agent loop, or a
written plan) that returns its Outcome; `runs/session.py` runs it and decides its status.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from typing import Any

from .agent.doubts import doubt
from .agent.loop import Agent, Outcome, RetryPolicy, Tactics, execute_plan, prepare_plan
from .agent.samples import MAX_SAMPLES, ChoiceSampler, llm_judge, sampled, variant
from .agent.speedups import QUESTION, RunSpeedups, open_plan_cache
from .agent.templates import TemplateCache
from .core import events as ev
from .core.graph import DONE
from .core.scheduler import Scheduler, tool_limits
from .core.shared import SharedCalls
from .core.task import Task
from .core.tools import Tool, Tools
from .errors import PlaitError
from .llm import LLM, resolve_model, with_sampling
from .llm.base import Scorer
from .runs.loading import as_tools
from .runs.result import RunResult
from .runs.runlog import stored_result
from .runs.session import (
    BackendLike,
    Body,
    Run,
    RunSpec,
    Shared,
    StoreLike,
    new_run_id,
    run_session,
)
from .stores import RunInfo, RunNotFound, Store, StoreError, open_store

# Told the run's Scheduler once it exists: a service's handle for live edits.
OnScheduler = Callable[[Scheduler], None]
ToolsLike = Tools | Iterable[Tool | Callable[..., Any] | Tools | str] | Mapping[str, Any] | str
DEFAULT_MODEL = "local"


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
    `on_scheduler` is told the run's Scheduler once it exists (for live edits: add, cancel).
    """
    registry = as_tools(tools)
    # Before the store (a bad plan makes no run), and off the loop: a plan of 100k tasks
    # takes seconds to check, which a service's other runs and streams must not wait for.
    tasks = await asyncio.to_thread(prepare_plan, plan, registry)
    run_id = run_id or new_run_id()
    now = time.time()
    new = RunInfo(run_id, "plan", plan, None, list(registry), created=now, updated=now)
    spec = RunSpec(
        registry,
        run_id,
        None,
        store=store,
        new=new,
        backend=backend,
        on_event=on_event,
        on_scheduler=on_scheduler,
    )
    return await run_session(spec, _plan_body(tasks))


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
    tactics: Tactics | None = None,
    shared: Shared | None = None,
    on_scheduler: OnScheduler | None = None,
    plan_cache: bool | TemplateCache = False,
    draft_model: str | LLM | None = None,
    samples: int = 1,
    agree: int | None = None,
    judge: str | LLM | None = None,
) -> RunResult:
    """Answer a question: plan with the model, run the plan's tasks as they stream, join.

    With `store`, the run is recorded under `run_id`, replies and results included, and
    `aresume` finishes it without asking the model again for what it already answered.
    `temperature` and `max_tokens` (a reply's bound) apply to every model call of the run.
    `tactics` switches the agent's techniques for small models (all on by default; kept
    with the run). `shared` is what the runs of a batch share (plait.batch passes it).

    Speed-ups (README, "Faster and cheaper than one plan"): `plan_cache=True` (or a
    `TemplateCache`) takes the first plan from a template of an earlier question of the
    same shape; `draft_model` (a model, or "question") starts pure calls while the planner
    thinks; `samples=N` runs N attempts at once, sharing pure calls, and returns as soon as
    `agree` of them agree (the majority, or the `judge` model, decides otherwise).
    """
    if samples != 1 or agree is not None:
        return await _sampled(
            question,
            samples,
            agree,
            judge,
            dict(
                tools=tools, model=model, max_replans=max_replans, on_event=on_event,
                run_id=run_id, base_url=base_url, examples=examples, retry=retry, store=store,
                backend=backend, temperature=temperature, max_tokens=max_tokens,
                tactics=tactics, shared=shared, on_scheduler=on_scheduler,
                plan_cache=plan_cache, draft_model=draft_model,
            ),
        )  # fmt: skip
    llm = with_sampling(resolve_model(model, base_url=base_url), temperature, max_tokens)
    registry = as_tools(tools)
    spec_name = model if isinstance(model, str) else llm.name
    options: dict[str, Any] = {
        "max_replans": max_replans,
        "base_url": base_url,
        "examples": examples,
    }
    if temperature is not None or max_tokens is not None:
        options.update(temperature=temperature, max_tokens=max_tokens)
    if tactics is not None and tactics != Tactics():
        options["tactics"] = dataclasses.asdict(tactics)
    if isinstance(model, ChoiceSampler) and model.temperature:  # a sampled attempt's draws
        options["choices"] = {"seed": model.seed, "temperature": model.temperature}
    run_id = run_id or new_run_id()
    shots = examples if examples is not None else registry.examples
    draft = draft_model
    if isinstance(draft_model, str) and draft_model != QUESTION:
        draft = resolve_model(draft_model, base_url=base_url)
    async with open_plan_cache(plan_cache, registry, store) as cache:
        speed = RunSpeedups(question, registry, cache, draft, shots)
        first = await speed.first_plan()
        if first is not None:
            options["plan_from_cache"] = first  # a resume gives it back, not the planner
        now = time.time()
        new = RunInfo(
            run_id, "question", question, spec_name, list(registry), options, created=now,
            updated=now,
        )  # fmt: skip
        spec = RunSpec(
            registry,
            run_id,
            question,
            store=store,
            new=new,
            backend=backend,
            shared=shared,
            on_event=_both(on_event, speed.watch),
            on_scheduler=on_scheduler,
        )
        body = _question_body(question, llm, max_replans, shots, retry, tactics, first, speed)
        result = await run_session(spec, body)
        await speed.finish(result.status == DONE)
    result.plan_cache = speed.plan_cache()
    result.savings = speed.savings()
    result.doubt = doubt(result, question) if result.ok else None
    return result


async def _sampled(
    question: str, n: int, agree: int | None, judge: str | LLM | None, kwargs: dict[str, Any]
) -> RunResult:
    """`samples=N`: N runs of the question at once, voted by agent/samples.py. Attempt i is
    the run `RUN_ID~i` when a run id is given; the result is the chosen attempt's.
    `on_event` hears the first attempt's events as they come; if it has a `chosen` method
    (the CLI's trace), that is given the chosen attempt's events, whole, after the vote."""
    if not 1 <= n <= MAX_SAMPLES:
        raise PlaitError(f"samples must be between 1 and {MAX_SAMPLES}, not {n}")
    agree = agree if agree is not None else n // 2 + 1
    if not 1 <= agree <= n:
        raise PlaitError(f"agree must be between 1 and samples ({n}), not {agree}")
    registry = as_tools(kwargs["tools"])
    llm = resolve_model(kwargs["model"], base_url=kwargs["base_url"])  # loaded once for all
    chooser = None
    if judge is not None:
        chooser = llm_judge(resolve_model(judge, base_url=kwargs["base_url"]), question)
    run_id, user = kwargs.pop("run_id"), kwargs.pop("on_event")
    # The attempts share pure calls and per-tool limits (a batch's, when in one).
    shared = kwargs.pop("shared") or Shared(SharedCalls(), tool_limits(registry))
    scores = isinstance(llm, Scorer)
    chosen = getattr(user, "chosen", None)  # a listener (a trace) of the chosen attempt
    heard: list[list[ev.Event]] = [[] for _ in range(n)]

    async def attempt(i: int, listen: ev.Listener) -> RunResult:
        temperature, choice = variant(i, kwargs["temperature"], scores)
        if chosen is not None:
            listen = _both(heard[i].append, listen)
        return await arun(
            question,
            **{
                **kwargs,
                "tools": registry,
                "model": ChoiceSampler(llm, i, choice) if choice else llm,
                "temperature": temperature,
            },
            shared=shared,
            run_id=f"{run_id}~{i + 1}" if run_id else None,
            # A listener that expects one run (a live view) hears the first attempt's
            # events as they come, the run as asked.
            on_event=_both(user, listen) if i == 0 else listen,
        )

    voted, results = await sampled(attempt, n, agree, chooser, lambda r: r.doubt)
    picked = voted.chosen if voted.chosen is not None else min(results)
    result = results[picked]
    if chosen is not None:
        chosen(heard[picked])
    result.attempts = [
        {**a.to_dict(), "run_id": results[a.index].run_id if a.index in results else None}
        for a in voted.attempts
    ]
    result.savings = {
        **(result.savings or {}),
        "attempts_cut_short": voted.cut_short,
        "tokens_saved": voted.tokens_saved(),
        "decided_by": voted.decided_by,
    }
    return result


def _both(first: ev.Listener | None, second: ev.Listener) -> ev.Listener:
    """One listener calling `second`, then `first` (if any)."""
    if first is None:
        return second

    def both(e: ev.Event) -> None:
        second(e)
        first(e)

    return both


def _plan_body(tasks: list[Task]) -> Body:
    async def body(run: Run) -> Outcome:
        return await execute_plan(tasks, run.scheduler, run.defined)

    return body


def _question_body(
    question: str,
    llm: LLM,
    max_replans: int,
    examples: str | None,
    retry: RetryPolicy | None,
    tactics: Tactics | None,
    first_plan: str | None = None,
    speed: RunSpeedups | None = None,
) -> Body:
    async def body(run: Run) -> Outcome:
        replies = run.replies
        if first_plan is not None and 1 not in replies:  # the plan cache's, as a kept reply
            replies = {**replies, 1: ev.LLMFinished(0.0, 1, ev.Usage(), None, first_plan, True)}
        agent = Agent(
            llm,
            run.scheduler,
            run.emit,
            run.clock,
            run_id=run.run_id,
            max_replans=max_replans,
            examples=examples,
            retry=retry,
            replies=replies,
            defined=run.defined,
            tactics=tactics,
            cached_plan=first_plan is not None,
        )
        if speed is None:
            return await agent.answer(question)
        speed.start(run.scheduler, agent)  # speculation, while the planner thinks
        try:
            return await agent.answer(question)
        finally:
            await speed.stop()

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
    shared: Shared | None = None,
    on_scheduler: OnScheduler | None = None,
) -> RunResult:
    """Finish a run recorded in `store`: tasks it recorded finished are not run again, and
    replies it recorded are not asked for again. A run that already finished is returned
    as recorded. Raises RunNotFound, or RunHeld while another process is running it."""
    if isinstance(store, str):  # looked in first, so a wrong URL or ID creates no store
        await asyncio.to_thread(_find_run, store, run_id)
    opened = await asyncio.to_thread(open_store, store) if isinstance(store, str) else store
    try:
        info = await asyncio.to_thread(opened.get, run_id)
        if info is None:
            raise RunNotFound(f"no run {run_id} in {opened.url}")
        if info.status == DONE:
            records = await asyncio.to_thread(lambda: list(opened.records(run_id)))
            result = stored_result(info, records)
            if info.kind != "plan":
                result.doubt = doubt(result, info.source)
            if on_event is not None:
                on_event(ev.RunFinished(result.elapsed, result))
            return result
        registry = as_tools(tools)
        missing = sorted(set(info.tools) - set(registry))
        if missing:
            raise StoreError(f"run {run_id} used tools this --tools lacks: {', '.join(missing)}")
        question = None if info.kind == "plan" else info.source
        if question is None:
            body = _plan_body(prepare_plan(info.source, registry))
        else:
            body = _resumed_body(info, registry, model, base_url, retry)
        spec = RunSpec(
            registry,
            run_id,
            question,
            store=opened,
            backend=backend,
            shared=shared,
            on_event=on_event,
            on_scheduler=on_scheduler,
        )
        result = await run_session(spec, body)
        if question is not None and result.ok:
            result.doubt = doubt(result, question)
        return result
    finally:
        if isinstance(store, str):
            await asyncio.to_thread(opened.close)


def _find_run(url: str, run_id: str) -> None:
    """RunNotFound unless store `url` holds run `run_id` (read-only: creates nothing)."""
    probe = open_store(url, readonly=True)
    try:
        if probe.get(run_id) is None:
            raise RunNotFound(f"no run {run_id} in {probe.url}")
    finally:
        probe.close()


def _resumed_body(
    info: RunInfo,
    registry: Tools,
    model: str | LLM | None,
    base_url: str | None,
    retry: RetryPolicy | None,
) -> Body:
    """A recorded question's body, asked as it was first (the model, sampling, examples and
    tactics kept with the run) unless `model` or `base_url` say otherwise."""
    options = info.options
    model = model if model is not None else info.model
    if model is None:
        raise StoreError(f"run {info.id} does not say which model it used: pass model=")
    llm = resolve_model(model, base_url=base_url or options.get("base_url"))
    if "choices" in options:  # an attempt of samples=N goes on drawing its choices as it did
        llm = ChoiceSampler(llm, options["choices"]["seed"], options["choices"]["temperature"])
    llm = with_sampling(llm, options.get("temperature"), options.get("max_tokens"))
    examples = options.get("examples")
    shots = examples if examples is not None else registry.examples
    tactics = Tactics(**options["tactics"]) if "tactics" in options else None
    max_replans = options.get("max_replans", 2)
    first = options.get("plan_from_cache")
    return _question_body(info.source, llm, max_replans, shots, retry, tactics, first)


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
