"""RunLog: a run's events, persisted lazily to a store; and the journal resume reads back.

The event loop never waits for the disk (DataStates-LLM's lazy persistence). The listener
turns each event into a `Record` (JSON text) and queues it; a writer thread commits the
queue in batches, one transaction each, every `interval` seconds or sooner when it grows.
What that buys and costs, exactly:

- A task recorded as settled (done, failed, cancelled) never runs again on resume: the
  scheduler settles it from the record (`RunLog.recorded`).
- A task that was running, or had finished but was not yet committed, when the process died
  runs again: at-least-once. Tools that must not repeat an effect read
  `plait.current_task().idempotency_key` (run id and task id, stable across resumes).
- Planner and joiner replies are recorded whole, so a resume replays them instead of asking
  the model again; a reply cut off by the crash is asked for again.
- The log is ordered: if a reply or result is in it, everything emitted before it is too.

Results are stored as JSON, never pickled. `check` encodes each result at the tool boundary,
so a result that cannot be stored fails its task there, with the reason.

One wire format, written in one place and read in one: `RunLog`'s handlers turn events into
records (a kind below and a JSON object), `Decoder` turns records back into events; the
journal a resume reads (`Restored`), `plait show` and a finished run's result all read
through the decoder.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pydantic_core import from_json, to_json

from ..core import events as ev
from ..core.graph import CANCELLED, DONE, SKIPPED
from ..core.remote import REMOTE, Remote
from ..core.scheduler import INTERRUPTED, Recorded
from ..core.task import Task
from ..stores import LEASE_SECONDS, Progress, Record, RunHeld, RunInfo, Store, StoreError
from ..stores.base import Row
from .result import Recorder, RunResult

_PLAIN = {str, int, bool, type(None)}  # types whose JSON form decodes to an equal value

# Record kinds as every store keeps them, each named after the event it stands for.
RUN_STARTED = "session"
TASK_ADDED = "task"
TASK_STARTED = "start"
TASK_RETRYING = "retry"
TASK_FINISHED = "settle"
LLM_FINISHED = "llm"  # with the call's start: one record for LLMStarted and LLMFinished
LLM_RETRYING = "llm_retry"
PLAN_INVALID = "plan_invalid"
REPLANNING = "replan"
ANSWERED = "answer"


def _is_remote(result: Any) -> bool:
    return isinstance(result, dict) and len(result) == 1 and REMOTE in result


def task_key(task: Task) -> bytes:
    """What must be equal for a recorded result to stand for a task: its call."""
    return to_json([task.tool, list(task.args), task.kwargs], bytes_mode="base64")


class Restored:
    """What earlier sessions left in a run's log, folded in order: later records win."""

    def __init__(self, records: Iterable[Record] = ()) -> None:
        self.tasks: dict[int, tuple[bytes, Recorded | None]] = {}
        self.defined: dict[int, Task] = {}  # each task as last dispatched
        self.replies: dict[int, ev.LLMFinished] = {}
        self.seq = 0
        self.sessions = 0
        decode = Decoder()
        for record in records:
            self.seq = record.seq
            for e in decode(record):
                if isinstance(e, ev.TaskAdded):
                    self.tasks[e.task.id] = (task_key(e.task), None)
                    self.defined[e.task.id] = e.task
                elif isinstance(e, ev.TaskFinished):
                    # A Remote's value lived in a cluster that may be gone: it runs again.
                    if e.id in self.tasks and e.status != SKIPPED and not _is_remote(e.result):
                        recorded = Recorded(e.status, e.result, e.error)
                        self.tasks[e.id] = (self.tasks[e.id][0], recorded)
                elif isinstance(e, ev.LLMFinished):
                    if e.error is None:
                        self.replies[e.call] = e
                elif isinstance(e, ev.RunStarted):
                    self.sessions += 1


class RunLog:
    """The store's listener on one run, and the scheduler's `Journal` for it."""

    def __init__(
        self,
        store: Store,
        info: RunInfo,
        holder: str,
        restored: Restored | None = None,
        *,
        interval: float = 0.05,
        batch: int = 4096,
        ttl: float = LEASE_SECONDS,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.store = store
        self.info = info
        self.holder = holder
        self.restored = restored or Restored()
        self.interval = interval
        self.batch = batch
        self.ttl = ttl
        self.patience = ttl / 2  # how long a failing store is retried before the run stops
        self.on_fatal = on_fatal  # called from the writer thread
        self.offset = time.time() - info.created  # session clock -> seconds since created
        self.failure: BaseException | None = None
        self._seq = self.restored.seq
        self._queue: collections.deque[Row] = collections.deque()
        self._encoded: dict[int, str] = {}  # results' JSON, from `check` to their record
        self._calls: dict[int, tuple[str, str, float]] = {}
        self._ids: set[int] = set()
        self._done: set[int] = set()
        self._final: Progress | None = None
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._write_loop, name="plait-runlog", daemon=True)
        # The encoder, by event type (also the `Emitter`'s route to this listener).
        self.handlers: dict[type, Any] = {
            ev.RunStarted: self._run_started,
            ev.TaskAdded: self._task_added,
            ev.TaskStarted: self._task_started,
            ev.TaskRetrying: self._task_retrying,
            ev.TaskFinished: self._task_finished,
            ev.LLMStarted: self._llm_started,
            ev.LLMRetrying: self._llm_retrying,
            ev.LLMFinished: self._llm_finished,
            ev.PlanInvalid: self._plan_invalid,
            ev.Replanning: self._replanning,
            ev.Answered: self._answered,
        }

    # Journal ---------------------------------------------------------------------------

    def recorded(self, task: Task) -> Recorded | None:
        entry = self.restored.tasks.pop(task.id, None)
        if entry is None or entry[1] is None or entry[0] != task_key(task):
            return None
        return entry[1]

    def check(self, task_id: int, result: Any) -> Any:
        """Encode the result now, at the tool boundary, and hand on its JSON form: a tuple
        becomes a list here exactly as it will after a resume, so both runs see the same.

        A Remote (kept on the cluster) is recorded by its summary only and handed on as
        itself; a resume cannot restore it, so it runs again (see Restored)."""
        if isinstance(result, Remote):
            self._encoded[task_id] = to_json({REMOTE: result.summary()}).decode()
            return result
        try:
            encoded = to_json(result, bytes_mode="base64").decode()
        except Exception as e:  # pydantic_core's serialization errors are not TypeErrors
            raise TypeError(f"{type(result).__name__} is not JSON-serializable ({e})") from None
        # Its JSON form is itself: skip decoding; but an int of 4,300 digits or more is past
        # what a resume's decoder reads, so it is decoded here and fails now, not then.
        if type(result) in _PLAIN and (type(result) is not int or len(encoded) < 4300):
            self._encoded[task_id] = encoded
            return result
        value = from_json(encoded)  # ValueError: the record could not be read back
        self._encoded[task_id] = encoded
        return value

    # lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def close(self, status: str, answer: str | None, error: str | None) -> None:
        """Commit everything queued and the run's final status, give up the lease. Blocking."""
        self._final = Progress(len(self._ids), len(self._done), status, answer, error, True)
        self._wake.set()
        self._thread.join()
        if self.failure is not None:
            raise StoreError(f"run store {self.store.url}: {self.failure}") from None

    def _write_loop(self) -> None:
        """Commit what is queued, every `interval` or when a batch is full; renew the lease.

        A failed commit is retried, the same records first, with backoff, for up to
        `patience` seconds (less than the lease); a lost lease or a store that stays down
        is fatal: `on_fatal` is told, so the run stops instead of working unrecorded.
        """
        pending: list[Row] = []
        renewed = time.monotonic()
        failing_since: float | None = None
        delay = self.interval
        while True:
            self._wake.wait(delay)
            self._wake.clear()
            final = self._final
            pending += [self._queue.popleft() for _ in range(len(self._queue))]
            if self.failure is not None:
                if final is not None:
                    return
                pending.clear()
                continue
            try:
                if pending or final is not None or time.monotonic() - renewed >= self.ttl / 3:
                    progress = final or Progress(len(self._ids), len(self._done))
                    progress.lease_until = time.time() + self.ttl
                    self.store.append(self.info.id, self.holder, pending, progress)
                    renewed = time.monotonic()
                    pending = []
                failing_since, delay = None, self.interval
                if final is not None:
                    return
            except RunHeld as e:
                self._fail(e)
            except Exception as e:
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since >= self.patience:
                    self._fail(e)
                delay = min(delay * 2, 1.0)

    def _fail(self, e: BaseException) -> None:
        self.failure = e
        if self.on_fatal is not None:
            self.on_fatal(e)

    # events -> records -----------------------------------------------------------------

    def __call__(self, e: ev.Event) -> None:
        handler = self.handlers.get(type(e))
        if handler is not None:
            handler(e)

    def _put(self, kind: str, t: float, data: str) -> None:
        self._seq += 1
        self._queue.append((self._seq, kind, self.offset + t, data))
        if len(self._queue) >= self.batch and not self._wake.is_set():
            self._wake.set()

    def _run_started(self, e: ev.RunStarted) -> None:
        self._put(RUN_STARTED, e.t, _json({"resumed": e.resumed}))

    def _task_added(self, e: ev.TaskAdded) -> None:
        task = e.task
        self._ids.add(task.id)
        if not e.restored:
            self._put(TASK_ADDED, e.t, _json(task_data(task)))

    def _task_started(self, e: ev.TaskStarted) -> None:
        self._put(TASK_STARTED, e.t, f'{{"id":{e.id}}}')

    def _task_retrying(self, e: ev.TaskRetrying) -> None:
        self._put(TASK_RETRYING, e.t, _json({"id": e.id, "attempt": e.attempt, "error": e.error}))

    def _task_finished(self, e: ev.TaskFinished) -> None:
        if e.status == DONE:
            self._done.add(e.id)
        if e.restored or (e.status == CANCELLED and e.error == INTERRUPTED):
            return  # an interrupted task is not settled: a resume runs it
        encoded = self._encoded.pop(e.id, None)
        if encoded is not None and e.status == DONE:
            self._put(TASK_FINISHED, e.t, f'{{"id":{e.id},"status":"done","result":{encoded}}}')
        else:
            data = {"id": e.id, "status": e.status, "error": e.error}
            if e.status == DONE:
                data["result"] = e.result
            self._put(TASK_FINISHED, e.t, to_json(data, fallback=repr).decode())

    def _llm_started(self, e: ev.LLMStarted) -> None:
        self._calls[e.call] = (e.role, e.model, e.t)

    def _llm_retrying(self, e: ev.LLMRetrying) -> None:
        data = {"call": e.call, "attempt": e.attempt, "error": e.error, "delay": e.delay}
        self._put(LLM_RETRYING, e.t, _json(data))

    def _llm_finished(self, e: ev.LLMFinished) -> None:
        role, model, started = self._calls.pop(e.call, ("llm", "", e.t))
        if e.restored:
            return
        data = {
            "call": e.call,
            "role": role,
            "model": model,
            "started": round(self.offset + started, 6),
            "usage": [e.usage.prompt_tokens, e.usage.completion_tokens],
            "error": e.error,
            "text": e.text,
        }
        self._put(LLM_FINISHED, e.t, _json(data))

    def _plan_invalid(self, e: ev.PlanInvalid) -> None:
        self._put(PLAN_INVALID, e.t, _json({"error": e.error}))

    def _replanning(self, e: ev.Replanning) -> None:
        self._put(REPLANNING, e.t, _json({"round": e.round, "reason": e.reason}))

    def _answered(self, e: ev.Answered) -> None:
        self._put(ANSWERED, e.t, _json({"answer": e.answer}))


def task_data(task: Task) -> dict[str, Any]:
    """A task's definition as JSON values: what the log records and the event stream sends."""
    return {
        "id": task.id,
        "tool": task.tool,
        "args": list(task.args),
        "kwargs": task.kwargs,
        "deps": sorted(task.deps),
        "line": task.line,
    }


def _json(data: Any) -> str:
    return to_json(data, bytes_mode="base64").decode()


# records -> events, for `Restored`, `plait show`, traces and a finished run's result --------


class Decoder:
    """Turns a run's records, in order, back into the events they stand for, with `t` in
    seconds since the run was created. The one reader of the format `RunLog` writes."""

    def __init__(self, run_id: str = "", question: str | None = None) -> None:
        self.run_id = run_id
        self.question = question
        self.tools: dict[int, str] = {}  # each task's tool, for its TaskStarted

    def __call__(self, record: Record) -> tuple[ev.Event, ...]:
        data = from_json(record.data)
        t, kind = record.t, record.kind
        if kind == TASK_FINISHED:
            status, result, error = data["status"], data.get("result"), data.get("error")
            return (ev.TaskFinished(t, data["id"], status, result, error),)
        if kind == TASK_STARTED:
            return (ev.TaskStarted(t, data["id"], self.tools.get(data["id"], "")),)
        if kind == TASK_ADDED:
            task = Task(
                data["id"],
                data["tool"],
                tuple(data.get("args", ())),
                data.get("kwargs", {}),
                frozenset(data.get("deps", ())),
                data.get("line"),
            )
            self.tools[task.id] = task.tool
            return (ev.TaskAdded(t, task),)
        if kind == RUN_STARTED:
            return (ev.RunStarted(t, self.run_id, self.question, data["resumed"]),)
        if kind == TASK_RETRYING:
            return (ev.TaskRetrying(t, data["id"], data["attempt"], data["error"]),)
        if kind == LLM_FINISHED:
            usage = ev.Usage(*data.get("usage", (0, 0)))
            return (
                ev.LLMStarted(data["started"], data["call"], data["role"], data["model"]),
                ev.LLMFinished(t, data["call"], usage, data.get("error"), data.get("text", "")),
            )
        if kind == LLM_RETRYING:
            return (ev.LLMRetrying(t, data["call"], data["attempt"], data["error"], data["delay"]),)
        if kind == PLAN_INVALID:
            return (ev.PlanInvalid(t, data["error"]),)
        if kind == REPLANNING:
            return (ev.Replanning(t, data["round"], data["reason"]),)
        if kind == ANSWERED:
            return (ev.Answered(t, data["answer"]),)
        return ()


def replay_events(info: RunInfo, records: Iterable[Record]) -> Iterator[ev.Event]:
    """The events a run's log stands for, with `t` in seconds since the run was created."""
    decode = Decoder(info.id, info.source if info.kind == "question" else None)
    for record in records:
        yield from decode(record)


def stored_result(info: RunInfo, records: Iterable[Record]) -> RunResult:
    """A run's RunResult as its log tells it (the same object `--json` printed)."""
    recorder = Recorder()
    last = 0.0
    for e in replay_events(info, records):
        recorder(e)
        last = max(last, e.t)
    if info.answer is not None:
        recorder.answer = info.answer
    status = info.state if info.status != "running" else "interrupted"
    return recorder.result(status, info.error, last)
