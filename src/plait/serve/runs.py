"""The run manager: the runs this server is running, and every run's event stream.

A run started here (or resumed on start) is one asyncio task on the server's loop, driving
`plait.aexecute`, `plait.arun` or `plait.aresume` on the server's store. Its events are kept
in a `LiveRun` buffer, in order, each with its stream id, and fanned out to any number of
event-stream clients; the buffer goes when the run ends (the store has it all then).

Stream ids are positions in the run's log, so a client reconnecting with `Last-Event-ID`
resumes exactly, from this server's buffer or, after a restart, from the store:

- an event the store records (a task added, started or settled, an LLM reply, an answer…)
  has the id `S`, its record's `seq` in the store's log;
- an event it does not record (an LLM token, an LLM call starting) has `S.K`: the K-th such
  event after record S. Replayed from the store, such events are gone, but the record that
  follows says it all: `llm_finished` carries the call's role, model, start and whole text;
- `run_finished` has `S.end`, S the run's last record, whether sent live or from the store.

Ids compare as (S, K); a stream sends only ids greater than the last one sent, so backlog
and live events never overlap. A live event is sent only once the store has its record S
(the run's log commits every few milliseconds, on its own thread; `CommitWatch` tells the
run what each commit held): a server killed before a commit loses those records, the next
session numbers its own from the same S, and a client that had seen the lost ones would
take the new ones for them. `run_finished` goes once the run has closed its log.

Events a resumed session re-emits for what it restored from the store (`restored`) are not
sent again: the client had them, or gets them from the log.
Times (`t`, `started`) are seconds since the run was created, as the store keeps them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Any

from pydantic_core import to_json, to_jsonable_python

import plait
from plait import events as ev
from plait.runs.runlog import replay_events, stored_result, task_data
from plait.stores import LEASE_SECONDS, Progress, Record, RunInfo
from plait.stores.base import Row, RunExists, RunHeld, new_holder

from .metrics import Metrics

log = logging.getLogger("plait.serve")

END = 1 << 62  # K of run_finished: after every other event of the run's last record
Key = tuple[int, int]
POLL_SECONDS = 0.5  # how often a stream of a run held by another process reads the store
ADOPT_SECONDS = LEASE_SECONDS / 3  # how often a server looks for runs nobody holds
MAX_RUNS_SCAN = 10_000  # runs read when filtering the list by status, or resuming on start


def key_text(key: Key) -> str:
    seq, k = key
    if k == 0:
        return str(seq)
    return f"{seq}.end" if k == END else f"{seq}.{k}"


_ID = re.compile(r"(\d{1,18})(?:\.(\d{1,18}|end))?")


def parse_key(text: str | None) -> Key:
    """A `Last-Event-ID` as a key; absent or empty means from the start.

    Raises ValueError for anything else that is not S, S.K or S.end."""
    if text is None or not text.strip():
        return (0, -1)
    m = _ID.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"Last-Event-ID {text[:40]!r} is not an event id (S, S.K or S.end)")
    k = m.group(2)
    return (int(m.group(1)), 0 if k is None else END if k == "end" else int(k))


def event_name(e: ev.Event) -> str:
    """RunStarted -> run_started, LLMToken -> llm_token."""
    name = type(e).__name__.replace("LLM", "Llm")
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


@dataclasses.dataclass(slots=True)
class Sent:
    """One event as streamed: its id, its snake-case type, its fields."""

    key: Key
    name: str
    data: dict[str, Any]
    _frame: str | None = None

    def frame(self) -> str:
        """Its text on the stream, encoded once however many clients it goes to."""
        if self._frame is None:
            body = to_json(self.data, fallback=repr, inf_nan_mode="null").decode()
            self._frame = f"id: {key_text(self.key)}\nevent: {self.name}\ndata: {body}\n\n"
        return self._frame


def event_data(e: ev.Event, offset: float, calls: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """An event's fields as JSON values, `t` shifted by `offset` to seconds since created.

    `calls` (call -> role, model, started) lets `llm_finished` say what it finished."""
    if isinstance(e, ev.RunFinished):
        return {"t": round(e.t + offset, 6), "result": e.result.to_dict()}
    if isinstance(e, ev.TaskAdded):
        task = e.task
        data: dict[str, Any] = {"t": e.t, "task": task_data(task)}
    else:
        data = {f.name: getattr(e, f.name) for f in dataclasses.fields(e)}
    data.pop("restored", None)
    data["t"] = round(data["t"] + offset, 6)
    if isinstance(e, ev.LLMStarted):
        calls[e.call] = {"role": e.role, "model": e.model, "started": data["t"]}
    elif isinstance(e, ev.LLMFinished):
        data["usage"] = {
            "prompt_tokens": e.usage.prompt_tokens,
            "completion_tokens": e.usage.completion_tokens,
        }
        data.update(calls.pop(e.call, {}))
    return to_jsonable_python(data, fallback=repr, inf_nan_mode="null")  # type: ignore[no-any-return]


def stored_events(
    info: RunInfo, records: list[Record], low: int = 0, high: int = END
) -> Iterator[Sent]:
    """The stream a run's log stands for, one event per record (see the module doc), for
    the records with low < seq < high (all are read: a task's tool comes from its "task")."""
    current = [0]

    def tracked() -> Iterator[Record]:
        for record in records:
            current[0] = record.seq
            yield record

    calls: dict[int, dict[str, Any]] = {}
    for e in replay_events(info, tracked()):
        data = event_data(e, 0.0, calls)
        if isinstance(e, ev.LLMStarted) or not low < current[0] < high:
            continue  # llm_started: folded into its llm_finished, which has the record's seq
        yield Sent((current[0], 0), event_name(e), data)


def finished_event(info: RunInfo, records: list[Record]) -> Sent:
    result = stored_result(info, records)
    last = records[-1].seq if records else 0
    data = {"t": round(result.elapsed, 6), "result": result.to_dict()}
    return Sent((last, END), "run_finished", data)


class LiveRun:
    """A run this server is running: its task, its scheduler, and its events so far."""

    def __init__(self, run_id: str, created: float, metrics: Metrics) -> None:
        self.run_id = run_id
        self.created = created
        self.metrics = metrics
        self.task: asyncio.Task[plait.RunResult] | None = None
        self.scheduler: plait.Scheduler | None = None
        self.events: list[Sent] = []
        self.shown = 0  # events[:shown] may be sent: their records are in the store
        self.committed = 0  # the highest seq of this run the store has committed
        self.ended = False  # no more events will come
        self.cancelled_by_user = False
        self.closing = False  # run_finished was emitted: the graph is closed to edits
        self.stopping = False  # the server is shutting down: leave the run resumable
        self.started = asyncio.Event()  # the run exists in the store (or failed to start)
        self._offset = 0.0
        self._seq = 0
        self._k = 0
        self._pending: list[ev.Event] = []
        self._calls: dict[int, dict[str, Any]] = {}
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def first(self) -> Key | None:
        return self.events[0].key if self.shown else None

    # from the run ---------------------------------------------------------------------

    def on_scheduler(self, scheduler: plait.Scheduler) -> None:
        self.scheduler = scheduler
        # The log's own session offset, so `t` is what the store will say, to the digit.
        offset = getattr(getattr(scheduler, "_journal", None), "offset", None)
        if isinstance(offset, float):
            self._offset = offset
        self._flush()

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for e in pending:
            self._keep(e)

    def _log_seq(self) -> int:
        # The run log's last seq: the store's own numbering of this run's records.
        # (Not public API: the RunLog is the scheduler's `_journal`; see the module doc.)
        journal = getattr(self.scheduler, "_journal", None)
        seq = getattr(journal, "_seq", None)
        return seq if isinstance(seq, int) else self._seq + 1

    def on_event(self, e: ev.Event) -> None:
        if isinstance(e, ev.RunFinished):
            self.closing = True  # it is closing its log: its end is decided
        if self.stopping:
            return  # the server stops: what the run reports now (cancelled) is not its end
        if isinstance(e, ev.RunStarted):
            self._offset = time.time() - self.created
            self.metrics.runs_started += 1
            self.started.set()
        if self.scheduler is None:
            if not isinstance(e, ev.RunFinished):
                self._pending.append(e)  # RunStarted: its record's seq is known once the
                return  # scheduler (and so the log) is reachable, right after
            self._flush()  # the run ended before it had a scheduler
        self._keep(e)

    def _keep(self, e: ev.Event) -> None:
        self.metrics.count(e)
        if getattr(e, "restored", False):
            if isinstance(e, ev.LLMStarted):
                self._calls.pop(e.call, None)
            return
        if isinstance(e, ev.RunFinished):
            key = (self._seq, END)
        else:
            seq = self._log_seq()
            if seq != self._seq:
                self._seq, self._k = seq, 0
            else:
                self._k += 1
            key = (self._seq, self._k)
        self._append(Sent(key, event_name(e), event_data(e, self._offset, self._calls)))

    def _append(self, sent: Sent) -> None:
        self.events.append(sent)
        self._reveal()

    def commit(self, seq: int) -> None:
        """The store has committed this run's records up to `seq`."""
        if seq > self.committed:
            self.committed = seq
            self._reveal()

    def _reveal(self) -> None:
        shown, events = self.shown, self.events
        while (
            shown < len(events)
            and events[shown].key[0] <= self.committed
            and events[shown].key[1] != END
        ):
            shown += 1
        if shown != self.shown:
            self.shown = shown
            self._wake()

    def end(self, closed: bool = True) -> None:
        """No more events; `closed`: the run closed its log (so the store has them all)."""
        self.ended = True
        if closed:
            self.shown = len(self.events)
        self.started.set()
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    async def wait_beyond(self, index: int) -> None:
        """Until there is an event to send at `index` or the run has ended."""
        if index < self.shown or self.ended:
            return
        w = asyncio.get_running_loop().create_future()
        self._waiters.append(w)
        await w


class RunManager:
    """The server's runs: start, resume, cancel, edit, and stream them."""

    def __init__(
        self,
        store: plait.Store,
        tools: plait.Tools,
        model: str,
        metrics: Metrics,
    ) -> None:
        self.store: plait.Store = CommitWatch(store, self._committed)
        self.tools = tools
        self.model = model
        self.metrics = metrics
        self.live: dict[str, LiveRun] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.passed: set[str] = set()  # runs this server cannot resume (their tools, say)

    # starting -------------------------------------------------------------------------

    async def start_plan(self, plan: str, run_id: str | None) -> LiveRun:
        return await self._start(
            run_id,
            lambda live: plait.aexecute(
                plan,
                tools=self.tools,
                run_id=live.run_id,
                store=self.store,
                on_event=live.on_event,
                on_scheduler=live.on_scheduler,
            ),
        )

    async def start_question(
        self, question: str, model: str | None, max_replans: int, run_id: str | None
    ) -> LiveRun:
        return await self._start(
            run_id,
            lambda live: plait.arun(
                question,
                tools=self.tools,
                model=model or self.model,
                max_replans=max_replans,
                run_id=live.run_id,
                store=self.store,
                on_event=live.on_event,
                on_scheduler=live.on_scheduler,
            ),
        )

    async def _start(self, run_id: str | None, drive: Callable[[LiveRun], Any]) -> LiveRun:
        """Start the run and return once it exists in the store; raise what stopped it
        from starting (a taken id, a bad model spec) instead."""
        run_id = run_id or uuid.uuid4().hex[:12]
        if run_id in self.live:
            raise RunExists(f"run {run_id} is already running here")
        live = LiveRun(run_id, time.time(), self.metrics)
        self._launch(live, drive(live))
        await live.started.wait()
        task = live.task
        assert task is not None
        if task.done() and not live.events:
            task.result()  # raises what stopped it
        return live

    def _launch(self, live: LiveRun, coro: Any) -> None:
        self._loop = asyncio.get_running_loop()
        self.live[live.run_id] = live
        live.task = asyncio.create_task(coro, name=f"plait-run-{live.run_id}")
        live.task.add_done_callback(lambda t: self._finished(live, t))

    def _committed(self, run_id: str, seq: int) -> None:
        """From a run log's writer thread: the store has `run_id`'s records up to `seq`."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody to tell
                loop.call_soon_threadsafe(self._commit, run_id, seq)

    def _commit(self, run_id: str, seq: int) -> None:
        live = self.live.get(run_id)
        if live is not None:
            live.commit(seq)

    def _finished(self, live: LiveRun, task: asyncio.Task[plait.RunResult]) -> None:
        if self.live.get(live.run_id) is live:
            del self.live[live.run_id]
        # Ended by a result or a cancel, the run closed its log: every record is committed.
        # Ended by an error (the store's, say), what was not committed is read from the store.
        live.end(closed=task.cancelled() or task.exception() is None)
        if task.cancelled():
            status = "cancelled"
        elif task.exception() is not None:
            status = "failed"
            if live.events:  # it ran, then the store or the model failed it
                log.warning("run %s: %s", live.run_id, _one_line(task.exception()))
        else:
            status = task.result().status
        if live.events and not live.stopping:
            self.metrics.finished(status)

    async def resume_held(self) -> list[str]:
        """Resume the runs the store says are running but nobody holds (this server's,
        killed; or any other process's whose tools this server has). Returns their ids."""
        infos = await asyncio.to_thread(self.store.runs, MAX_RUNS_SCAN)
        resumed = []
        for info in infos:
            if info.status != "running" or info.held or info.id in self.live:
                continue
            if info.id in self.passed:
                continue
            if not set(info.tools) <= set(self.tools):
                log.warning("run %s not resumed: this --tools lacks some of its tools", info.id)
                self.passed.add(info.id)
                continue
            live = LiveRun(info.id, info.created, self.metrics)
            self._launch(
                live,
                plait.aresume(
                    info.id,
                    tools=self.tools,
                    store=self.store,
                    on_event=live.on_event,
                    on_scheduler=live.on_scheduler,
                ),
            )
            await live.started.wait()
            if live.events or not live.ended:
                resumed.append(info.id)
            elif (
                live.task is not None
                and not live.task.cancelled()
                and not isinstance(live.task.exception(), RunHeld)
            ):
                log.warning("run %s not resumed: %s", info.id, _one_line(live.task.exception()))
                self.passed.add(info.id)  # not again every ADOPT_SECONDS
        return resumed

    async def adopt(self) -> None:
        """Every ADOPT_SECONDS, resume what is running in the store and held by nobody: a
        run whose server died while this one lives (its lease ran out, or it died on this
        host). The lease makes sure only one server takes it."""
        while True:
            await asyncio.sleep(ADOPT_SECONDS)
            try:
                await self.resume_held()
            except Exception as e:  # the store is down for now: try again next time
                log.warning("looking for runs to resume: %s", _one_line(e))

    # control --------------------------------------------------------------------------

    async def cancel(self, live: LiveRun) -> str:
        """Cancel the run; its status once it stopped: `cancelled`, or how it ended if it
        had ended on its own before (done, failed), or `running` if it would not stop."""
        task = live.task
        assert task is not None
        if not task.done() and not live.closing:  # closing: its end is decided, and stored
            live.cancelled_by_user = True
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(task), timeout=30)
        if not task.done():
            return "running"
        if task.cancelled():
            return "cancelled"
        return "failed" if task.exception() is not None else task.result().status

    async def stop_all(self) -> None:
        """The server stops: cancel the runs, then give them back to the store as running
        and unheld, so the next start resumes them (as after a crash)."""
        runs = list(self.live.values())
        for live in runs:
            live.stopping = True
            if live.task is not None:
                live.task.cancel()
        for live in runs:
            if live.task is not None:
                with contextlib.suppress(BaseException):
                    await live.task
            if not live.cancelled_by_user:
                await asyncio.to_thread(self._release_running, live.run_id)

    def _release_running(self, run_id: str) -> None:
        try:
            holder = new_holder()
            info = self.store.claim(run_id, holder, LEASE_SECONDS)
            progress = Progress(info.tasks_total, info.tasks_done, "running", release=True)
            self.store.append(run_id, holder, [], progress)
        except Exception as e:
            log.warning("run %s could not be left resumable: %s", run_id, _one_line(e))

    # reading --------------------------------------------------------------------------

    async def info(self, run_id: str) -> tuple[RunInfo, list[Record]] | None:
        def read() -> tuple[RunInfo, list[Record]] | None:
            info = self.store.get(run_id)
            if info is None:
                return None
            return info, list(self.store.records(run_id))

        return await asyncio.to_thread(read)

    async def newest(self, run_id: str) -> int:
        """The highest record seq of the run a client can have seen (0: none yet)."""
        live = self.live.get(run_id)
        if live is not None and live.committed:
            return live.committed
        found = await self.info(run_id)
        return found[1][-1].seq if found is not None and found[1] else 0

    async def result(self, run_id: str) -> dict[str, Any] | None:
        """The run's `--json` object as the store has it; `running` while it runs."""
        found = await self.info(run_id)
        if found is None:
            return None
        info, records = found
        data = stored_result(info, records).to_dict()
        if info.status == "running" and (run_id in self.live or info.held):
            data["status"] = "running"
        return data

    async def runs(self, limit: int, status: str | None) -> list[dict[str, Any]]:
        scan = limit if status is None else MAX_RUNS_SCAN
        infos = await asyncio.to_thread(self.store.runs, scan)
        infos.sort(key=lambda i: i.created, reverse=True)
        out = []
        for info in infos:
            shown = "running" if info.id in self.live else info.state
            if status is not None and shown != status:
                continue
            out.append(
                {
                    "run_id": info.id,
                    "status": shown,
                    "kind": info.kind,
                    "source": info.source,
                    "model": info.model,
                    "created": info.created,
                    "updated": info.updated,
                    "tasks_total": info.tasks_total,
                    "tasks_done": info.tasks_done,
                    "answer": info.answer,
                    "error": info.error,
                }
            )
            if len(out) >= limit:
                break
        return out

    async def stream(self, run_id: str, after: Key) -> AsyncIterator[list[Sent]]:
        """The run's events after `after`, in order, each once, in batches (what is there
        when the client is ready for more); ends after run_finished.

        Raises KeyError before the first event if there is no such run."""
        last = after
        checked = False
        while True:
            live = self.live.get(run_id)
            if live is not None:
                async for batch in self._follow(live, last):
                    last = batch[-1].key
                    yield batch
                if live.stopping:
                    return  # the server stops; the client reconnects to the next one
                if live.events:
                    if last[1] == END:
                        return
                    continue  # it ended without run_finished (killed): read the store
            found = await self.info(run_id)
            if found is None:
                if not checked:
                    raise KeyError(run_id)
                return
            checked = True
            info, records = found
            batch = _after(stored_events(info, records, last[0]), last)
            if info.status != "running":
                batch += _after([finished_event(info, records)], last)
            if batch:
                last = batch[-1].key
                yield batch
            if info.status != "running":
                return
            if run_id not in self.live:
                await asyncio.sleep(POLL_SECONDS)  # held by another process, or by nobody

    async def _follow(self, live: LiveRun, after: Key) -> AsyncIterator[list[Sent]]:
        """A live run's events after `after`: first what only the store has (earlier
        sessions'), then the buffer, as it grows."""
        await live.wait_beyond(0)
        first = live.first
        if first is None:
            return  # it failed to start: the caller reads the store
        last = after
        if last < first and first[0] > last[0] + 1:
            found = await self.info(live.run_id)
            if found is not None:
                info, records = found
                batch = _after(stored_events(info, records, last[0], first[0]), last)
                if batch:
                    last = batch[-1].key
                    yield batch
        index = 0
        while True:
            await live.wait_beyond(index)
            if index >= live.shown:
                return  # ended
            batch = _after(live.events[index : live.shown], last)  # ids grow along it
            index = live.shown
            if batch:
                last = batch[-1].key
                yield batch


class CommitWatch:
    """The server's store, telling `on_commit(run_id, seq)` (from the committing thread)
    the highest seq each append of records committed; everything else passes through."""

    def __init__(self, store: plait.Store, on_commit: Callable[[str, int], None]) -> None:
        self.inner = store
        self.url = store.url
        self.on_commit = on_commit

    def append(self, run_id: str, holder: str, records: Sequence[Row], progress: Progress) -> None:
        self.inner.append(run_id, holder, records, progress)
        if records:
            self.on_commit(run_id, max(row[0] for row in records))

    def create(self, info: RunInfo) -> None:
        self.inner.create(info)

    def claim(self, run_id: str, holder: str, ttl: float) -> RunInfo:
        return self.inner.claim(run_id, holder, ttl)

    def renew(self, run_id: str, holder: str, ttl: float) -> bool:
        return self.inner.renew(run_id, holder, ttl)

    def get(self, run_id: str) -> RunInfo | None:
        return self.inner.get(run_id)

    def records(self, run_id: str) -> Iterator[Record]:
        return self.inner.records(run_id)

    def runs(self, limit: int = 50) -> list[RunInfo]:
        return self.inner.runs(limit)

    def delete(
        self, run_ids: Sequence[str], keep: Callable[[RunInfo], bool] | None = None
    ) -> list[str]:
        return self.inner.delete(run_ids, keep)

    def get_calls(self, scope: str, keys: Sequence[str]) -> dict[str, str]:
        return self.inner.get_calls(scope, keys)

    def put_calls(self, scope: str, items: Sequence[tuple[str, str]]) -> None:
        self.inner.put_calls(scope, items)

    def close(self) -> None:
        self.inner.close()


def _after(events: Iterable[Sent], last: Key) -> list[Sent]:
    return [sent for sent in events if sent.key > last]


def _one_line(e: BaseException | None) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())
