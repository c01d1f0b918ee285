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
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pydantic_core import from_json, to_json

from ..core import events as ev
from ..core.remote import REMOTE, Remote
from ..core.scheduler import INTERRUPTED, Settled
from ..core.task import Task
from ..stores import LEASE_SECONDS, Progress, Record, RunHeld, RunInfo, Store, StoreError
from ..stores.base import Row
from .result import Recorder, RunResult

_PLAIN = {str, int, bool, type(None)}  # types whose JSON form decodes to an equal value


def _is_remote(result: Any) -> bool:
    return isinstance(result, dict) and len(result) == 1 and REMOTE in result


def task_key(task: Task) -> bytes:
    """What must be equal for a recorded result to stand for a task: its call."""
    return to_json([task.tool, list(task.args), task.kwargs], bytes_mode="base64")


class Restored:
    """What earlier sessions left in a run's log, folded in order: later records win."""

    def __init__(self, records: Iterable[Record] = ()) -> None:
        self.tasks: dict[int, tuple[bytes, Settled | None]] = {}
        self.defined: dict[int, Task] = {}  # each task as last dispatched
        self.replies: dict[int, ev.LLMFinished] = {}
        self.seq = 0
        self.sessions = 0
        for record in records:
            self.seq = record.seq
            data = from_json(record.data)
            match record.kind:
                case "task":
                    task = _task(data)
                    self.tasks[task.id] = (task_key(task), None)
                    self.defined[task.id] = task
                case "settle":
                    if _is_remote(data.get("result")):
                        continue  # its value lived in a cluster that may be gone: run again
                    if data["id"] in self.tasks and data["status"] != "skipped":
                        settled = Settled(data["status"], data.get("result"), data.get("error"))
                        self.tasks[data["id"]] = (self.tasks[data["id"]][0], settled)
                case "llm":
                    if data.get("error") is None:
                        self.replies[data["call"]] = _llm_finished(record.t, data)
                case "session":
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
        self._encoded: dict[int, bytes] = {}
        self._calls: dict[int, tuple[str, str, float]] = {}
        self._ids: set[int] = set()
        self._done: set[int] = set()
        self._final: Progress | None = None
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._write_loop, name="plait-runlog", daemon=True)
        self._handlers: dict[type, Any] = {
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

    def recorded(self, task: Task) -> Settled | None:
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
            self._encoded[task_id] = to_json({REMOTE: result.summary()})
            return result
        try:
            encoded = to_json(result, bytes_mode="base64")
        except Exception as e:  # pydantic_core's serialization errors are not TypeErrors
            raise TypeError(f"{type(result).__name__} is not JSON-serializable ({e})") from None
        self._encoded[task_id] = encoded
        if type(result) in _PLAIN:
            return result  # its JSON form is itself: skip decoding
        return from_json(encoded)

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
        handler = self._handlers.get(type(e))
        if handler is not None:
            handler(e)

    def _put(self, kind: str, t: float, data: bytes | str) -> None:
        self._seq += 1
        text = data if isinstance(data, str) else data.decode()
        self._queue.append((self._seq, kind, self.offset + t, text))
        if len(self._queue) >= self.batch and not self._wake.is_set():
            self._wake.set()

    def _run_started(self, e: ev.RunStarted) -> None:
        self._put("session", e.t, to_json({"resumed": e.resumed}))

    def _task_added(self, e: ev.TaskAdded) -> None:
        task = e.task
        self._ids.add(task.id)
        if not e.restored:
            self._put("task", e.t, to_json(_task_data(task), bytes_mode="base64"))

    def _task_started(self, e: ev.TaskStarted) -> None:
        self._put("start", e.t, f'{{"id":{e.id}}}')

    def _task_retrying(self, e: ev.TaskRetrying) -> None:
        self._put("retry", e.t, to_json({"id": e.id, "attempt": e.attempt, "error": e.error}))

    def _task_finished(self, e: ev.TaskFinished) -> None:
        if e.status == "done":
            self._done.add(e.id)
        if e.restored or (e.status == "cancelled" and e.error == INTERRUPTED):
            return  # an interrupted task is not settled: a resume runs it
        encoded = self._encoded.pop(e.id, None)
        if encoded is not None and e.status == "done":
            self._put("settle", e.t, b'{"id":%d,"status":"done","result":%s}' % (e.id, encoded))
        else:
            data = {"id": e.id, "status": e.status, "error": e.error}
            if e.status == "done":
                data["result"] = e.result
            self._put("settle", e.t, to_json(data, fallback=repr))

    def _llm_started(self, e: ev.LLMStarted) -> None:
        self._calls[e.call] = (e.role, e.model, e.t)

    def _llm_retrying(self, e: ev.LLMRetrying) -> None:
        data = {"call": e.call, "attempt": e.attempt, "error": e.error, "delay": e.delay}
        self._put("llm_retry", e.t, to_json(data))

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
        self._put("llm", e.t, to_json(data))

    def _plan_invalid(self, e: ev.PlanInvalid) -> None:
        self._put("plan_invalid", e.t, to_json({"error": e.error}))

    def _replanning(self, e: ev.Replanning) -> None:
        self._put("replan", e.t, to_json({"round": e.round, "reason": e.reason}))

    def _answered(self, e: ev.Answered) -> None:
        self._put("answer", e.t, to_json({"answer": e.answer}))


# records -> events, for `plait show`, traces, and the result of a finished run -----------


def replay_events(info: RunInfo, records: Iterable[Record]) -> Iterator[ev.Event]:
    """The events a run's log stands for, with `t` in seconds since the run was created."""
    question = info.source if info.kind == "question" else None
    tools: dict[int, str] = {}
    for record in records:
        data = from_json(record.data)
        t = record.t
        match record.kind:
            case "session":
                yield ev.RunStarted(t, info.id, question, data["resumed"])
            case "task":
                task = _task(data)
                tools[task.id] = task.tool
                yield ev.TaskAdded(t, task)
            case "start":
                yield ev.TaskStarted(t, data["id"], tools.get(data["id"], ""))
            case "retry":
                yield ev.TaskRetrying(t, data["id"], data["attempt"], data["error"])
            case "settle":
                yield ev.TaskFinished(
                    t, data["id"], data["status"], data.get("result"), data.get("error")
                )
            case "llm":
                yield ev.LLMStarted(data["started"], data["call"], data["role"], data["model"])
                yield _llm_finished(t, data)
            case "llm_retry":
                yield ev.LLMRetrying(t, data["call"], data["attempt"], data["error"], data["delay"])
            case "plan_invalid":
                yield ev.PlanInvalid(t, data["error"])
            case "replan":
                yield ev.Replanning(t, data["round"], data["reason"])
            case "answer":
                yield ev.Answered(t, data["answer"])


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


def _task_data(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "tool": task.tool,
        "args": list(task.args),
        "kwargs": task.kwargs,
        "deps": sorted(task.deps),
        "line": task.line,
    }


def _task(data: dict[str, Any]) -> Task:
    return Task(
        data["id"],
        data["tool"],
        tuple(data.get("args", ())),
        data.get("kwargs", {}),
        frozenset(data.get("deps", ())),
        data.get("line"),
    )


def _llm_finished(t: float, data: dict[str, Any]) -> ev.LLMFinished:
    usage = ev.Usage(*data.get("usage", (0, 0)))
    return ev.LLMFinished(t, data["call"], usage, data.get("error"), data.get("text", ""))
