"""Batches: many questions as one run, shared work done once (Halo's idea).

`abatch(items, ...)` answers each item's question with the same agent loop as `arun`, at
most `concurrency` at a time, and yields each item's `BatchResult` as soon as it finishes.
What the runs share:

- one model client, wrapped in `SharedLLM`: identical requests at temperature 0 go out once;
- one `SharedCalls`: a pure tool called with equal arguments anywhere in the batch runs once;
- one set of per-tool limits, so `max_concurrency` holds across the whole batch;
- one backend: sync tools of every run share one thread pool (or one Ray connection).

They are given to each run explicitly (`arun(shared=..., backend=...)`); nothing is ambient.

Items are read lazily and at most `concurrency` runs (and as many finished results waiting
to be read) exist at once, so memory stays bounded however long the input is. A query that
fails is reported and the batch goes on. With a store, each item is its own run,
`RUN_ID:ITEM` (ITEM is `item_key(id)`): a batch started again with the same run id resumes
the items it had begun and reads back those it had finished, and a stored run asked another
question is an error for its item, never its answer. `skip` names items to leave out and
`skip_positions` bad lines already reported (the CLI passes what is in its output file).

An item is known by its id's JSON form, so `1` and `"1"` are two items; an id seen twice in
one input is an error for the later item, never a silent merge. An input that is not a
valid item is reported with its position (`bad_line` in the output), so a batch run again
need not redo it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, TypedDict

from pydantic_core import from_json, to_json

from . import api
from .agent.loop import RetryPolicy, Tactics
from .agent.speedups import QUESTION
from .agent.templates import TemplateCache
from .core import events as ev
from .core.backend import Backend
from .core.events import Usage
from .core.graph import DONE, FAILED
from .core.scheduler import tool_limits
from .core.shared import SharedCalls
from .core.tools import Tools
from .llm import LLM, resolve_model
from .llm.prefix import PrefixOrdered
from .llm.shared import SharedLLM
from .runs.loading import as_tools
from .runs.result import RunResult
from .runs.session import BackendLike, Shared, new_run_id, using_backend
from .stores import Store, StoreError, open_store


@dataclass(slots=True)
class BatchResult:
    """One item's outcome: what the output file's line holds."""

    id: Any
    status: str  # done or failed
    answer: str | None = None
    error: str | None = None
    usage: Usage = field(default_factory=Usage)
    fields: dict[str, Any] = field(default_factory=dict)  # the item's other fields, kept
    run: RunResult | None = None
    # The input position (the CLI's line number) of an input that is not a valid item, or
    # repeats an id: what a batch run again skips it by. None for items.
    line: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            **self.fields,
            "id": self.id,
            "status": self.status,
            "answer": self.answer,
            "error": self.error,
            "usage": {
                "prompt_tokens": self.usage.prompt_tokens,
                "completion_tokens": self.usage.completion_tokens,
            },
        }
        if self.line is not None:
            out["bad_line"] = self.line
        return out


@dataclass(slots=True)
class BatchStats:
    """Counts as the batch goes; `summary()` is the line the CLI prints at the end."""

    started: float = field(default_factory=time.perf_counter)
    done: int = 0
    failed: int = 0
    running: int = 0
    tool_calls_requested: int = 0
    tool_calls_made: int = 0
    llm_calls_requested: int = 0
    llm_calls_made: int = 0
    usage: Usage = field(default_factory=Usage)

    @property
    def wall(self) -> float:
        return time.perf_counter() - self.started

    def to_dict(self) -> dict[str, Any]:
        return {
            "done": self.done,
            "failed": self.failed,
            "tool_calls": {"made": self.tool_calls_made, "requested": self.tool_calls_requested},
            "llm_calls": {"made": self.llm_calls_made, "requested": self.llm_calls_requested},
            "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens,
            "wall": round(self.wall, 3),
        }


class BadItem(ValueError):
    pass


BLANK: Any = object()  # what a reader yields for a line that holds no item: not counted


def item_key(item_id: Any) -> str:
    """An item id as text, one to one: a string that is not itself JSON stays as it is
    (`q7`), anything else is its canonical JSON (`1`, `"1"`, `true`). Runs (`BATCH:KEY`),
    skipping and duplicate checks all go by it, so `1` and `"1"` are never one item."""
    if isinstance(item_id, str):
        try:
            json.loads(item_id)
        except (ValueError, RecursionError):
            return item_id
    return json.dumps(item_id, sort_keys=True, ensure_ascii=False)


def item_parts(item: Any, where: str) -> tuple[Any, str, dict[str, Any]]:
    """(id, question, other fields) of an input item; BadItem naming what is wrong.

    A reader may pass a BadItem itself as an item (a line that is not JSON, say): it is
    reported like any other bad item, in its place."""
    if isinstance(item, BadItem):
        raise item
    if not isinstance(item, dict):
        raise BadItem(f"{where}: an item must be a JSON object, not {type(item).__name__}")
    if "id" not in item:
        raise BadItem(f"{where}: no 'id'")
    if item["id"] is None:
        raise BadItem(f"{where}: 'id' is null; give every item an id")
    question = item.get("question")
    if not isinstance(question, str) or not question.strip():
        raise BadItem(f"{where}: 'question' must be a non-empty string")
    fields = {k: v for k, v in item.items() if k not in ("id", "question")}
    return item["id"], question, fields


async def abatch(
    items: Iterable[Any] | AsyncIterable[Any],
    *,
    tools: api.ToolsLike,
    model: str | LLM = api.DEFAULT_MODEL,
    concurrency: int = 8,
    store: Store | str | None = None,
    run_id: str | None = None,
    skip: Iterable[Any] = (),
    skip_positions: Iterable[int] = (),
    label: str = "item",
    max_replans: int = 2,
    base_url: str | None = None,
    examples: str | None = None,
    retry: RetryPolicy | None = None,
    stats: BatchStats | None = None,
    llm_slots: int | None = None,
    order: str = "prefix",
    backend: BackendLike = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    tactics: Tactics | None = None,
    plan_cache: bool = False,
    draft_model: str | LLM | None = None,
) -> AsyncIterator[BatchResult]:
    """Answer every item's question; yield each result as it completes (not in input order).

    An item is a dict with `id` and `question`; its other fields come back in `fields`. An
    item that is not one, or repeats an id, is yielded as failed with the reason and its
    position (`line`; `bad_line` in its dict), and the batch goes on. Positions count from
    1 and `label` names them in messages ("item 3"; the CLI says "FILE line 3"); a reader
    yields `BLANK` for a line with no item. `skip` are ids and `skip_positions` positions to
    leave out. Breaking out of the loop cancels the runs in flight (with a store, they
    resume later).

    `llm_slots` bounds the model calls in flight (a server's slots: 1 for llama-cpp-python's
    server); queued calls then go out in `order`: "prefix" (the call sharing the longest
    prompt prefix with what the slot ran last) or "arrival". `backend` ("local" or "ray")
    is opened once for the whole batch. `temperature`, `max_tokens` and `tactics` apply to
    every call. `plan_cache=True`: the batch's runs share one plan cache (the store's
    templates, or the batch's own without a store); `draft_model` speculates for each run.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    registry = as_tools(tools)
    inner: LLM = resolve_model(model, base_url=base_url)
    if llm_slots is not None:
        inner = PrefixOrdered(inner, slots=llm_slots, order=order)
    batch_id = run_id or new_run_id()
    async with contextlib.AsyncExitStack() as opened:
        if isinstance(store, str):
            store = await asyncio.to_thread(open_store, store)
            opened.push_async_callback(asyncio.to_thread, store.close)
        calls = SharedCalls(cache=StoredCalls(store, batch_id) if store is not None else None)
        batch = _Batch(
            id=batch_id,
            label=label,
            stats=stats if stats is not None else BatchStats(),
            llm=SharedLLM(inner),
            store=store,
            shared=Shared(calls, tool_limits(registry)),
            backend=await opened.enter_async_context(using_backend(backend)),
            tools=registry,
            max_replans=max_replans,
            examples=examples,
            retry=retry,
            temperature=temperature,
            max_tokens=max_tokens,
            tactics=tactics,
            plan_cache=TemplateCache.for_tools(registry, store) if plan_cache else None,
            draft_model=(
                resolve_model(draft_model, base_url=base_url)  # one for the whole batch
                if isinstance(draft_model, str) and draft_model != QUESTION
                else draft_model
            ),
        )
        results: asyncio.Queue[BatchResult | None] = asyncio.Queue(maxsize=concurrency)
        skipped = {item_key(i) for i in skip}, set(skip_positions)
        driver = asyncio.create_task(_drive(batch, items, concurrency, *skipped, results))
        try:
            while (result := await _next_result(results, driver)) is not None:
                _count_calls(batch)
                yield result
            await driver
        finally:
            if not driver.done():
                driver.cancel()
                with contextlib.suppress(BaseException):
                    await driver


@dataclass(frozen=True, slots=True)
class _Batch:
    """One batch, as its items' runs see it: what they share, and where they count."""

    id: str  # each item's run, with a store, is `ID:ITEM`
    label: str  # what names a position in messages ("item", "FILE line")
    stats: BatchStats
    llm: SharedLLM  # identical requests at temperature 0 go out once
    store: Store | None
    shared: Shared  # pure calls done once, per-tool limits across the batch
    backend: Backend  # one for the whole batch: one local thread pool, not one per item
    # what every item's run is asked with (arun's keywords)
    tools: Tools
    max_replans: int
    examples: str | None
    retry: RetryPolicy | None
    temperature: float | None
    max_tokens: int | None
    tactics: Tactics | None
    plan_cache: TemplateCache | None  # shared by every run of the batch
    draft_model: LLM | str | None


async def _drive(
    batch: _Batch,
    items: Iterable[Any] | AsyncIterable[Any],
    concurrency: int,
    skip: set[str],
    skip_positions: set[int],
    results: asyncio.Queue[BatchResult | None],
) -> None:
    """Read the items lazily and run each (at most `concurrency` at once) into `results`,
    leaving out the item keys in `skip` and the positions in `skip_positions`; None after
    the last."""
    slots = asyncio.Semaphore(concurrency)
    first: dict[bytes, int] = {}  # digest of each id's key -> its first position
    try:
        async with asyncio.TaskGroup() as group:
            index = 0
            async for item in _aiter(items):
                index += 1
                if item is BLANK or index in skip_positions:
                    continue
                repeated = None
                if isinstance(item, dict) and item.get("id") is not None:
                    key = item_key(item["id"])
                    seen = first.setdefault(_digest(key), index)
                    if seen != index:
                        repeated = (
                            f"{batch.label} {index}: id {key} is {batch.label} {seen}'s already"
                        )
                    elif key in skip:
                        continue
                await slots.acquire()
                group.create_task(_in_slot(batch, slots, results, index, item, repeated))
    finally:
        _count_calls(batch)
    await results.put(None)


async def _in_slot(
    batch: _Batch,
    slots: asyncio.Semaphore,
    results: asyncio.Queue[BatchResult | None],
    index: int,
    item: Any,
    repeated: str | None,
) -> None:
    try:
        await results.put(await _item(batch, index, item, repeated))
    finally:
        slots.release()


async def _item(batch: _Batch, index: int, item: Any, repeated: str | None) -> BatchResult:
    """One input's result: its run's, or why it is not a valid item (a failed result)."""
    stats = batch.stats
    where = f"{batch.label} {index}"
    try:
        item_id, question, fields = item_parts(item, where)
        if repeated is not None:
            raise BadItem(repeated)
    except BadItem as e:
        stats.failed += 1
        bad_id = item.get("id") if isinstance(item, dict) else None
        return BatchResult(bad_id, FAILED, error=str(e), line=index)
    stats.running += 1
    try:
        run = await _answer(batch, question, item_id, where)
        out = BatchResult(item_id, run.status, run.answer, run.error, run.usage, fields, run)
    except BadItem as e:
        out = BatchResult(item_id, FAILED, None, str(e), Usage(), fields)
    except Exception as e:  # a query that cannot even start never stops the batch
        out = BatchResult(item_id, FAILED, None, _one_line(e), Usage(), fields)
    finally:
        stats.running -= 1
    if out.status == DONE:
        stats.done += 1
    else:
        out.status = FAILED
        stats.failed += 1
    stats.usage = stats.usage + out.usage
    return out


async def _answer(batch: _Batch, question: str, item_id: Any, where: str) -> RunResult:
    """Run one item's question; with a store, as run `BATCH:ITEM`, resumed if it exists."""
    # What a run and a resumed run of an item are both given.
    given = _Given(
        tools=batch.tools,
        model=batch.llm,
        on_event=_counter(batch.stats),
        retry=batch.retry,
        backend=batch.backend,
        shared=batch.shared,
    )
    run_id = None
    if batch.store is not None:
        run_id = f"{batch.id}:{item_key(item_id)}"
        info = await asyncio.to_thread(batch.store.get, run_id)
        if info is not None:
            if info.kind != "question" or info.source != question:
                raise BadItem(
                    f"{where}: run {run_id} in the store was asked another question; "
                    "give the batch another run id, or the item another id"
                )
            return await api.aresume(run_id, store=batch.store, **given)
    return await api.arun(
        question,
        max_replans=batch.max_replans,
        examples=batch.examples,
        temperature=batch.temperature,
        max_tokens=batch.max_tokens,
        tactics=batch.tactics,
        store=batch.store,
        run_id=run_id,
        plan_cache=batch.plan_cache or False,
        draft_model=batch.draft_model,
        **given,
    )


class _Given(TypedDict):
    tools: Tools
    model: LLM
    on_event: ev.Listener
    retry: RetryPolicy | None
    backend: Backend
    shared: Shared


async def _next_result(
    results: asyncio.Queue[BatchResult | None], driver: asyncio.Task[None]
) -> BatchResult | None:
    """The next item's result as it finishes; None after the last; the driver's error, if
    it failed."""
    while True:
        getter = asyncio.ensure_future(results.get())
        await asyncio.wait({getter, driver}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            return getter.result()
        getter.cancel()
        driver.result()  # the driver failed: raise its error


def _count_calls(batch: _Batch) -> None:
    """Bring the stats' call counts up to date: tool calls made once for the whole batch,
    and model calls requested and made."""
    stats, calls = batch.stats, batch.shared.calls
    stats.tool_calls_made = stats.tool_calls_requested - (calls.requested - calls.executed)
    stats.llm_calls_requested, stats.llm_calls_made = batch.llm.requested, batch.llm.made


def _digest(key: str) -> bytes:
    """16 bytes per id seen, however long the id: a million-line input stays small."""
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class StoredCalls:
    """SharedCalls' results kept in the run store under the batch's id, so a batch started
    again does not call a pure tool again for arguments it already had an answer for.

    Only a help: a result that is not JSON, or a store that fails, just is not kept."""

    def __init__(self, store: Store, scope: str) -> None:
        self.store = store
        self.scope = scope

    async def get(self, key: str) -> tuple[bool, Any]:
        try:
            found = await asyncio.to_thread(self.store.get_calls, self.scope, [key])
        except StoreError:
            return False, None
        if key not in found:
            return False, None
        try:
            return True, from_json(found[key])
        except ValueError:  # kept by a version that checked less: just not kept
            return False, None

    async def put(self, key: str, value: Any) -> None:
        try:
            text = to_json(value).decode()
            from_json(text)  # kept only if it reads back (an int of 5,000 digits does not)
            await asyncio.to_thread(self.store.put_calls, self.scope, [(key, text)])
        except (StoreError, ValueError, TypeError):
            pass


def _counter(stats: BatchStats) -> ev.Listener:
    def count(e: ev.Event) -> None:
        if isinstance(e, ev.TaskStarted):
            stats.tool_calls_requested += 1

    return count


async def _aiter(items: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
