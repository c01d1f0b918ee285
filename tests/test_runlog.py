"""The resume rules (plait.runs.runlog with plait.api): what a stored run does again, and not."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import plait
from plait.core import events as ev
from plait.errors import PlanError
from plait.llm.base import Delta
from plait.llm.replay import ReplayLLM
from plait.runs.runlog import RunLog
from plait.stores import RunExists, RunHeld, RunInfo, RunNotFound, Store, StoreError, open_store


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return f"memory://runlog-{uuid.uuid4().hex}"  # named: every open sees the same runs
    return f"sqlite:///{tmp_path / 'runs.db'}"


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    yield opened
    opened.close()


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for `condition` (a guard against hanging, not a timing assertion)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def outcome(result: plait.RunResult) -> list[tuple[int, str, str, object, str | None]]:
    return [(t.id, t.tool, t.status, t.result, t.error) for t in result.tasks]


class Counted:
    """Tools that count their calls per task id and block where told to."""

    def __init__(self) -> None:
        self.calls: collections.Counter[int] = collections.Counter()
        self.keys: list[str] = []
        self.block = False
        self.blocked = asyncio.Event()

    def seen(self) -> None:
        task = plait.current_task()
        assert task is not None
        self.calls[task.task_id] += 1
        self.keys.append(task.idempotency_key)

    def tools(self) -> list[plait.Tool]:
        @plait.tool
        def fast(x: str) -> str:
            self.seen()
            return x + "!"

        @plait.tool
        async def slow(x: str) -> str:
            self.seen()
            if self.block:
                self.blocked.set()
                await asyncio.Event().wait()  # until the run is cancelled
            return x.upper()

        @plait.tool
        async def combine(a: str, b: str) -> dict:
            self.seen()
            return {"joined": f"{a}+{b}", "parts": [a, b]}

        return [fast, slow, combine]


PLAN = '1. fast("a")\n2. fast("b")\n3. slow($1)\n4. fast($2)\n5. combine($3, $4)'


# -- an interrupted run is finished, not redone ----------------------------------------------


async def test_a_cancelled_run_resumes_without_redoing_settled_tasks(store_url, store):
    reference = Counted()
    expected = await plait.aexecute(PLAN, tools=reference.tools())
    assert expected.status == "done"

    counted = Counted()
    counted.block = True
    run_id = f"cut-{uuid.uuid4().hex[:8]}"
    events: list[ev.Event] = []
    runner = asyncio.create_task(
        plait.aexecute(
            PLAN, tools=counted.tools(), store=store_url, run_id=run_id, on_event=events.append
        )
    )
    finished = lambda i: any(  # noqa: E731
        isinstance(e, ev.TaskFinished) and e.id == i and e.status == "done" for e in events
    )
    await until(lambda: counted.blocked.is_set() and finished(1) and finished(2) and finished(4))
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert dict(counted.calls) == {1: 1, 2: 1, 3: 1, 4: 1}

    cut = store.get(run_id)
    assert cut.status == "cancelled" and cut.state == "cancelled" and cut.holder is None
    assert cut.tasks_done == 3
    settled = [json.loads(r.data) for r in store.records(run_id) if r.kind == "settle"]
    assert sorted(s["id"] for s in settled) == [1, 2, 4]  # 3 and 5 were interrupted, not settled

    counted.block = False
    result = await plait.aresume(run_id, tools=counted.tools(), store=store_url)
    assert result.status == "done", result.error
    assert dict(counted.calls) == {1: 1, 2: 1, 3: 2, 4: 1, 5: 1}
    assert result.answer == expected.answer
    assert outcome(result) == outcome(expected)
    assert result.task(5).result == {"joined": "A!+b!!", "parts": ["A!", "b!!"]}
    # the task run twice had the same idempotency key both times
    assert counted.keys.count(f"{run_id}:3") == 2

    done = store.get(run_id)
    assert done.state == "done" and done.tasks_done == done.tasks_total == 5
    records = list(store.records(run_id))
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    sessions = [json.loads(r.data) for r in records if r.kind == "session"]
    assert sessions == [{"resumed": False}, {"resumed": True}]
    starts = [json.loads(r.data)["id"] for r in records if r.kind == "start"]
    assert sorted(starts[:-2]) == [1, 2, 3, 4]  # the first session
    assert starts[-2:] == [3, 5]  # the resumed one


def test_resume_is_the_blocking_form(store_url, store):
    counted = Counted()
    run_id = f"blocking-{uuid.uuid4().hex[:8]}"
    first = plait.execute('1. fast("x")', tools=counted.tools(), store=store_url, run_id=run_id)
    again = plait.resume(run_id, tools=counted.tools(), store=store_url)
    assert again.answer == first.answer == "x!"
    assert dict(counted.calls) == {1: 1}


async def test_a_failed_task_is_not_run_again_on_resume(store_url, store):
    calls: collections.Counter[str] = collections.Counter()

    @plait.tool
    def fine(n: int) -> int:
        calls[f"fine{n}"] += 1
        return n

    @plait.tool
    async def boom(n: int) -> int:
        calls["boom"] += 1
        raise ValueError("bad input")

    plan = "1. fine(1)\n2. boom($1)\n3. fine($2)"
    run_id = f"failed-{uuid.uuid4().hex[:8]}"
    first = await plait.aexecute(plan, tools=[fine, boom], store=store_url, run_id=run_id)
    assert first.status == "failed"
    assert [t.status for t in first.tasks] == ["done", "failed", "skipped"]
    assert store.get(run_id).status == "failed"
    assert calls == {"fine1": 1, "boom": 1}

    again = await plait.aresume(run_id, tools=[fine, boom], store=store_url)
    assert calls == {"fine1": 1, "boom": 1}  # nothing ran
    assert again.status == "failed"
    assert [t.status for t in again.tasks] == ["done", "failed", "skipped"]
    assert again.task(2).error == first.task(2).error == "ValueError: bad input"
    assert again.error == first.error
    assert store.get(run_id).status == "failed"


# -- what can be stored ----------------------------------------------------------------------


async def test_a_result_that_cannot_be_stored_fails_its_task_only(store_url, store):
    @plait.tool
    def opaque() -> object:
        return object()

    @plait.tool
    def numbers() -> set:
        return {3, 1, 2}  # JSON can hold a set (as a list)

    @plait.tool
    def plain(n: int) -> int:
        return n + 1

    plan = "1. opaque()\n2. numbers()\n3. plain(1)\n4. plain($1)"
    run_id = f"json-{uuid.uuid4().hex[:8]}"
    result = await plait.aexecute(
        plan, tools=[opaque, numbers, plain], store=store_url, run_id=run_id
    )
    assert result.status == "failed"
    bad = result.task(1)
    assert bad.status == "failed" and "result cannot be stored" in bad.error
    assert "object" in bad.error
    # With a store, later tasks and the result see a result's JSON form in every session,
    # so a resumed run sees exactly what an uninterrupted one did.
    assert result.task(2).status == "done" and sorted(result.task(2).result) == [1, 2, 3]
    assert isinstance(result.task(2).result, list)
    assert result.task(3).status == "done" and result.task(3).result == 2
    assert result.task(4).status == "skipped"
    settled = {
        d["id"]: d
        for d in (json.loads(r.data) for r in store.records(run_id))
        if "status" in d and "id" in d
    }
    assert settled[1]["status"] == "failed" and "result cannot be stored" in settled[1]["error"]
    assert sorted(settled[2]["result"]) == [1, 2, 3]


async def test_without_a_store_any_result_will_do():
    marker = object()

    @plait.tool
    def opaque() -> object:
        return marker

    result = await plait.aexecute("1. opaque()", tools=[opaque])
    assert result.status == "done"
    assert result.task(1).result is marker


# -- current_task ----------------------------------------------------------------------------


async def test_current_task_names_the_call_in_sync_and_async_tools(store_url):
    seen: dict[str, plait.TaskContext | None] = {}

    @plait.tool
    def sync_tool() -> str:
        seen["sync"] = plait.current_task()
        return "s"

    @plait.tool
    async def async_tool(x: str) -> str:
        seen["async"] = plait.current_task()
        return x + "a"

    assert plait.current_task() is None
    run_id = f"ctx-{uuid.uuid4().hex[:8]}"
    result = await plait.aexecute(
        "1. sync_tool()\n2. async_tool($1)",
        tools=[sync_tool, async_tool],
        store=store_url,
        run_id=run_id,
    )
    assert result.answer == "sa"
    assert plait.current_task() is None
    sync, async_ = seen["sync"], seen["async"]
    assert isinstance(sync, plait.TaskContext) and isinstance(async_, plait.TaskContext)
    assert (sync.run_id, sync.task_id, sync.idempotency_key) == (run_id, 1, f"{run_id}:1")
    assert (async_.run_id, async_.task_id, async_.idempotency_key) == (run_id, 2, f"{run_id}:2")
    assert sync.attempt == async_.attempt == 1


def test_current_task_is_none_outside_a_tool():
    assert plait.current_task() is None

    @plait.tool
    def probe() -> str:
        return plait.current_task().idempotency_key

    assert plait.execute("1. probe()", tools=[probe], run_id="r").answer == "r:1"
    assert plait.current_task() is None


# -- questions: recorded replies are replayed ------------------------------------------------

QUESTION = "What is the slow answer?"
PLANNER = '1. slow("x")\n2. join()<END_OF_PLAN>'
JOINER = "Thought: task 1 said X.\nAction: Finish(the answer is X)"


async def test_a_resumed_question_replays_the_plan_instead_of_asking_again(
    store_url, store, replies
):
    counted = Counted()
    counted.block = True
    run_id = f"q-{uuid.uuid4().hex[:8]}"
    model = replies(PLANNER, JOINER)
    events: list[ev.Event] = []
    runner = asyncio.create_task(
        plait.arun(
            QUESTION,
            tools=counted.tools(),
            model=model,
            store=store_url,
            run_id=run_id,
            on_event=events.append,
        )
    )
    planned = lambda: any(  # noqa: E731
        isinstance(e, ev.LLMFinished) and e.call == 1 and e.error is None for e in events
    )
    await until(lambda: counted.blocked.is_set() and planned())
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert not any(isinstance(e, ev.LLMStarted) and e.call == 2 for e in events)
    cut = store.get(run_id)
    assert cut.kind == "question" and cut.source == QUESTION and cut.model == model
    assert cut.status == "cancelled"
    llm = [json.loads(r.data) for r in store.records(run_id) if r.kind == "llm"]
    assert [(c["role"], c["call"]) for c in llm] == [("planner", 1)]
    assert "join()" in llm[0]["text"]

    # The same replay file now holds only the joiner's reply: asking the planner again would
    # get the joiner's text as a plan (no tasks, so no answer).
    assert replies(JOINER) == model
    counted.block = False
    result = await plait.aresume(run_id, tools=counted.tools(), store=store_url)
    assert result.status == "done", result.error
    assert result.answer == "the answer is X"
    assert result.task(1).result == "X"
    assert dict(counted.calls) == {1: 2}  # interrupted, then run again
    done = store.get(run_id)
    assert done.state == "done" and done.answer == "the answer is X"
    llm = [json.loads(r.data) for r in store.records(run_id) if r.kind == "llm"]
    assert [(c["role"], c["call"]) for c in llm] == [("planner", 1), ("joiner", 2)]


async def test_a_resumed_question_with_a_model_object_asks_only_the_joiner(
    store_url, store, replies
):
    counted = Counted()
    counted.block = True
    run_id = f"q-{uuid.uuid4().hex[:8]}"
    events: list[ev.Event] = []
    runner = asyncio.create_task(
        plait.arun(
            QUESTION,
            tools=counted.tools(),
            model=replies(PLANNER, JOINER),
            store=store_url,
            run_id=run_id,
            on_event=events.append,
        )
    )
    await until(
        lambda: (
            counted.blocked.is_set()
            and any(isinstance(e, ev.LLMFinished) and e.call == 1 for e in events)
        )
    )
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    llm = ReplayLLM([JOINER])
    counted.block = False
    result = await plait.aresume(run_id, tools=counted.tools(), store=store_url, model=llm)
    assert result.answer == "the answer is X"
    assert len(llm.calls) == 1
    assert "X" in llm.calls[0].messages[-1]["content"]  # the joiner saw task 1's result


# -- resuming finished, foreign and impossible runs ------------------------------------------


async def test_resuming_a_finished_run_returns_its_recorded_result(store_url, store):
    counted = Counted()
    run_id = f"fin-{uuid.uuid4().hex[:8]}"
    first = await plait.aexecute(PLAN, tools=counted.tools(), store=store_url, run_id=run_id)
    assert first.status == "done"
    calls = dict(counted.calls)
    records = len(list(store.records(run_id)))

    seen: list[ev.Event] = []
    again = await plait.aresume(
        run_id, tools=counted.tools(), store=store_url, on_event=seen.append
    )
    assert dict(counted.calls) == calls  # no tool ran
    assert again.status == "done" and again.run_id == run_id
    assert again.answer == first.answer
    assert outcome(again) == outcome(first)
    assert len(list(store.records(run_id))) == records  # nothing new was logged
    assert [type(e) for e in seen] == [ev.RunFinished]
    assert seen[0].result.answer == first.answer


async def test_resuming_a_finished_question_returns_its_answer(store_url, store, replies):
    counted = Counted()
    run_id = f"qfin-{uuid.uuid4().hex[:8]}"
    first = await plait.arun(
        QUESTION,
        tools=counted.tools(),
        model=replies(PLANNER, JOINER),
        store=store_url,
        run_id=run_id,
    )
    assert first.answer == "the answer is X"
    replies()  # no replies left: the model must not be asked
    again = await plait.aresume(run_id, tools=counted.tools(), store=store_url)
    assert again.answer == first.answer and again.status == "done"
    assert outcome(again) == outcome(first)
    assert [c.role for c in again.llm_calls] == ["planner", "joiner"]
    assert dict(counted.calls) == {1: 1}


async def test_resume_without_a_tool_the_run_used_is_a_store_error(store_url, store):
    calls: list[str] = []

    @plait.tool
    def fine(n: int) -> int:
        calls.append("fine")
        return n

    @plait.tool
    def boom(n: int) -> int:
        calls.append("boom")
        raise RuntimeError("no")

    run_id = f"tools-{uuid.uuid4().hex[:8]}"
    first = await plait.aexecute(
        "1. fine(1)\n2. boom($1)", tools=[fine, boom], store=store_url, run_id=run_id
    )
    assert first.status == "failed"
    records = list(store.records(run_id))
    calls.clear()
    with pytest.raises(StoreError, match="boom"):
        await plait.aresume(run_id, tools=[fine], store=store_url)
    assert calls == []
    after = store.get(run_id)
    assert after.holder is None and after.status == "failed"
    assert list(store.records(run_id)) == records


async def test_resume_of_a_missing_run_is_run_not_found(store_url):
    with pytest.raises(RunNotFound):
        await plait.aresume("no-such-run", tools=[], store=store_url)


async def test_resume_of_a_run_another_live_process_holds_is_run_held(store_url, store):
    calls: list[int] = []

    @plait.tool
    def one() -> int:
        calls.append(1)
        return 1

    run_id = f"held-{uuid.uuid4().hex[:8]}"
    holder = f"{socket.gethostname()}:{os.getpid()}:someone-else"
    store.create(
        RunInfo(
            run_id,
            "plan",
            "1. one()",
            tools=["one"],
            created=time.time(),
            holder=holder,
            lease_until=time.time() + 60,
        )
    )
    with pytest.raises(RunHeld, match=holder):
        await plait.aresume(run_id, tools=[one], store=store_url)
    assert calls == []
    assert store.get(run_id).holder == holder


async def test_a_run_id_that_is_taken_runs_nothing(store_url, store):
    calls: list[int] = []

    @plait.tool
    def one() -> int:
        calls.append(1)
        return 1

    run_id = f"taken-{uuid.uuid4().hex[:8]}"
    await plait.aexecute("1. one()", tools=[one], store=store_url, run_id=run_id)
    records = list(store.records(run_id))
    with pytest.raises(RunExists, match=run_id):
        await plait.aexecute("1. one()", tools=[one], store=store_url, run_id=run_id)
    assert calls == [1]
    assert list(store.records(run_id)) == records


@pytest.mark.parametrize("plan", ["1. one(\n", "1. nope()", "1. one(1, 2, 3)", ""])
async def test_a_bad_plan_creates_no_run(store_url, store, plan):
    @plait.tool
    def one() -> int:
        return 1

    run_id = f"bad-{uuid.uuid4().hex[:8]}"
    with pytest.raises(PlanError):
        await plait.aexecute(plan, tools=[one], store=store_url, run_id=run_id)
    assert store.get(run_id) is None
    assert store.runs() == []


async def test_a_planner_reply_cut_off_by_the_stop_is_asked_for_again(store_url, store):
    class Stalling:
        """Writes task 1, then never finishes the plan."""

        name = "stalling"
        supports_json_schema = False

        async def stream(self, request):
            yield Delta('1. fast("x")\n')
            await asyncio.Event().wait()

    counted = Counted()
    run_id = f"qcut-{uuid.uuid4().hex[:8]}"
    events: list[ev.Event] = []
    runner = asyncio.create_task(
        plait.arun(
            QUESTION,
            tools=counted.tools(),
            model=Stalling(),
            store=store_url,
            run_id=run_id,
            on_event=events.append,
        )
    )
    await until(lambda: any(isinstance(e, ev.TaskFinished) and e.id == 1 for e in events))
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert store.get(run_id).model == "stalling"

    llm = ReplayLLM(['1. fast("x")\n2. join()<END_OF_PLAN>', JOINER])
    result = await plait.aresume(run_id, tools=counted.tools(), store=store_url, model=llm)
    assert result.status == "done" and result.answer == "the answer is X"
    assert len(llm.calls) == 2  # the planner was asked again, then the joiner
    assert dict(counted.calls) == {1: 1}  # its task, settled before the stop, was not rerun
    assert result.task(1).result == "x!"


# -- a process that dies --------------------------------------------------------------------

DIES = """
import os, signal, sqlite3, sys, time

import plait

db, run_id, marks = sys.argv[1:]


def mark() -> None:
    with open(marks, "a") as f:
        f.write(plait.current_task().idempotency_key + "\\n")


@plait.tool
def work(n: int) -> int:
    mark()
    return n * 10


@plait.tool
def last(a: int, b: int) -> int:
    mark()
    # die, without cleaning up, once the log holds tasks 1 and 2 settled
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        con = sqlite3.connect(db)
        n = con.execute(
            "SELECT count(*) FROM events WHERE run = ? AND kind = 'settle'", (run_id,)
        ).fetchone()[0]
        con.close()
        if n >= 2:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.01)
    sys.exit(3)


plait.execute(
    "1. work(1)\\n2. work(2)\\n3. last($1, $2)",
    tools=[work, last],
    store=f"sqlite:///{db}",
    run_id=run_id,
)
"""


async def test_a_run_whose_process_died_resumes_at_once_and_reruns_only_the_open_task(tmp_path):
    db = tmp_path / "runs.db"
    marks = tmp_path / "marks.txt"
    script = tmp_path / "dies.py"
    script.write_text(DIES)
    run_id = f"crash-{uuid.uuid4().hex[:8]}"
    proc = subprocess.run(
        [sys.executable, str(script), str(db), run_id, str(marks)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr
    assert sorted(marks.read_text().split()) == [f"{run_id}:1", f"{run_id}:2", f"{run_id}:3"]
    store = open_store(f"sqlite:///{db}")
    try:
        left = store.get(run_id)
        assert left.status == "running" and left.holder is not None
        assert left.lease_until > time.time()  # its lease has not run out...
        assert left.state == "interrupted"  # ...but its holder is dead

        ran: list[str] = []

        @plait.tool
        def work(n: int) -> int:
            ran.append(plait.current_task().idempotency_key)
            return n * 10

        @plait.tool
        def last(a: int, b: int) -> int:
            ran.append(plait.current_task().idempotency_key)
            return a + b

        result = await plait.aresume(run_id, tools=[work, last], store=store)
        assert result.status == "done" and result.answer == "30"
        assert ran == [f"{run_id}:3"]  # the same key the dead process used for task 3
        assert [t.result for t in result.tasks] == [10, 20, 30]
        done = store.get(run_id)
        assert done.state == "done" and done.holder is None
    finally:
        store.close()


# -- the log's lease -------------------------------------------------------------------------


def _poll(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never came true"
        time.sleep(0.005)


def test_a_running_log_renews_its_lease_and_releases_it_at_the_end(store):
    me = f"{socket.gethostname()}:{os.getpid()}:me"
    run_id = f"lease-{uuid.uuid4().hex[:8]}"
    first = time.time() + 0.2
    store.create(
        RunInfo(run_id, "plan", "1. f()", created=time.time(), holder=me, lease_until=first)
    )
    log = RunLog(store, store.get(run_id), me, ttl=0.3, interval=0.005)
    log.start()
    _poll(lambda: store.get(run_id).lease_until > first)
    log.close("done", "ok", None)
    got = store.get(run_id)
    assert got.holder is None and got.status == "done" and got.answer == "ok"


def test_a_log_that_lost_its_lease_fails_on_close(store):
    me = f"{socket.gethostname()}:{os.getpid()}:me"
    other = "elsewhere.invalid:1:other"
    run_id = f"lost-{uuid.uuid4().hex[:8]}"
    store.create(
        RunInfo(
            run_id,
            "plan",
            "1. f()",
            created=time.time(),
            holder=other,
            lease_until=time.time() + 60,
        )
    )
    log = RunLog(store, store.get(run_id), me, ttl=0.03, interval=0.005)
    log.start()
    _poll(lambda: log.failure is not None)
    with pytest.raises(StoreError, match=r"is held by elsewhere\.invalid:1:other"):
        log.close("done", "ok", None)
    assert store.get(run_id).holder == other


async def test_a_store_passed_as_an_object_is_left_open_for_the_caller(store):
    @plait.tool
    def one() -> int:
        return 1

    run_id = f"obj-{uuid.uuid4().hex[:8]}"
    await plait.aexecute("1. one()", tools=[one], store=store, run_id=run_id)
    again = await plait.aresume(run_id, tools=[one], store=store)
    assert again.answer == "1"
    assert store.get(run_id).state == "done"  # still usable: nobody closed it
    assert [r.id for r in store.runs()] == [run_id]


# -- replay is faithful to what the first session ran ------------------------------------------


class ScriptLLM:
    """Replies in order, a character at a time; "HANG" never ends (a crash comes first);
    an LLMError instance after a reply cuts that reply's stream with it."""

    supports_json_schema = False
    name = "script"

    def __init__(self, *replies: object) -> None:
        self.replies = list(replies)
        self.asked = 0

    async def stream(self, request):
        self.asked += 1
        reply = self.replies.pop(0)
        cut = (
            self.replies.pop(0) if self.replies and isinstance(self.replies[0], Exception) else None
        )
        for ch in str(reply).replace("HANG", ""):
            await asyncio.sleep(0)
            yield Delta(ch)
        if cut is not None:
            raise cut
        if "HANG" in str(reply):
            await asyncio.Event().wait()
        yield Delta("", plait.Usage(1, 1))


@plait.tool
def val(x: str) -> str:
    return x


@plait.tool
def up(x: str) -> str:
    return x.upper()


async def interrupt(coro, until: Callable[[], bool]) -> None:
    task = asyncio.create_task(coro)
    async with asyncio.timeout(10):
        while not until():
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_task_whose_input_ran_again_is_not_restored(store_url):
    # The planner's reply is cut by the crash; asked again, it changes task 1's call. Task 2
    # has the same text, but its recorded result came from the old $1: it must run again.
    settled: list[int] = []

    def on_event(e):
        if isinstance(e, ev.TaskFinished):
            settled.append(e.id)

    first = ScriptLLM("1. val('a')\n2. up($1)\nHANG")
    coro = plait.arun(
        "q", tools=[val, up], model=first, store=store_url, run_id="st", on_event=on_event
    )
    await interrupt(coro, lambda: len(settled) == 2)
    again = ScriptLLM("1. val('b')\n2. up($1)\njoin()\n", "Action: Finish(done)")
    result = await plait.aresume("st", tools=[val, up], store=store_url, model=again)
    assert [(t.id, t.result) for t in result.tasks] == [(1, "b"), (2, "B")]


async def test_replay_keeps_the_tasks_before_a_bad_line(store_url):
    ran: list[int] = []

    @plait.tool
    def mark(x: str) -> str:
        ran.append(plait.current_task().task_id)
        return x + "!"

    first = ScriptLLM("1. mark('a')\n2. mark('b')\n3. mark($9)\n", "3. mark($1)\njoin()\n", "HANG")
    coro = plait.arun("q", tools=[mark], model=first, store=store_url, run_id="pe")
    # Stopped once the joiner is asked: every task has settled and both planner replies are
    # whole. A tool's body having run is not that: its task settles only when the tool has
    # returned, and the reply that defined it may still be streaming (cut, it is asked again).
    await interrupt(coro, lambda: first.asked == 3)
    assert sorted(ran) == [1, 2, 3]
    ran.clear()
    result = await plait.aresume(
        "pe", tools=[mark], store=store_url, model=ScriptLLM("Action: Finish(ok)")
    )
    assert (result.status, result.answer) == ("done", "ok")
    assert [(t.id, t.status, t.result) for t in result.tasks] == [
        (1, "done", "a!"), (2, "done", "b!"), (3, "done", "a!!")
    ]  # fmt: skip
    assert ran == []  # all three were settled; the invalid plan was replayed, not re-asked


async def test_replay_uses_the_tasks_dispatched_before_a_lost_reply_was_retried(store_url):
    keys: list[tuple[str, str]] = []

    @plait.tool
    def key(x: str) -> str:
        keys.append((plait.current_task().idempotency_key, x))
        return x

    lossy = ScriptLLM(
        "1. key('a')\n",
        plait.LLMError("stream cut", retryable=True),
        "1. key('b')\n2. up($1)\njoin()\n",
        "HANG",
    )
    coro = plait.arun(
        "q", tools=[key, up], model=lossy, store=store_url, run_id="rt",
        retry=plait.RetryPolicy(base=0.001),
    )  # fmt: skip
    await interrupt(coro, lambda: lossy.asked == 3)
    assert keys == [("rt:1", "a")]  # the retried reply's task 1 was not dispatched again
    result = await plait.aresume(
        "rt", tools=[key, up], store=store_url, model=ScriptLLM("Action: Finish(done)")
    )
    assert [(t.id, t.result) for t in result.tasks] == [(1, "a"), (2, "A")]
    assert keys == [("rt:1", "a")]  # task 1 restored as it ran, not run again as key('b')


# -- a store that fails ------------------------------------------------------------------------


class FlakyStore:
    """A memory store whose appends fail `fails` times first (a store that blipped)."""

    def __init__(self, fails: int) -> None:
        self.inner = open_store("memory://")
        self.url = "flaky://"
        self.fails = fails

    def append(self, *args):
        if self.fails > 0:
            self.fails -= 1
            raise StoreError("flaky://: disk I/O error")
        return self.inner.append(*args)

    def __getattr__(self, name):
        return getattr(self.inner, name)


async def test_a_store_that_blips_loses_nothing():
    flaky = FlakyStore(fails=2)
    result = await plait.aexecute(
        "1. val('a')\n2. up($1)\n", tools=[val, up], store=flaky, run_id="blip"
    )
    assert result.status == "done"
    info = flaky.inner.get("blip")
    assert (info.state, info.tasks_done, info.holder) == ("done", 2, None)
    kinds = [r.kind for r in flaky.inner.records("blip")]
    assert kinds.count("settle") == 2 and kinds[-1] == "answer"


async def test_a_run_that_loses_its_lease_stops_and_says_so():
    store = open_store("memory://")
    ran: list[int] = []
    gate = asyncio.Event()

    @plait.tool
    async def step(n: int) -> int:
        ran.append(n)
        if n == 1:
            await gate.wait()
        return n

    async def steal() -> None:
        async with asyncio.timeout(10):
            while ran != [1]:
                await asyncio.sleep(0.01)
        store._runs["stolen"].lease_until = 0.0  # its lease ran out (say, a long GC pause)
        store.claim("stolen", "elsewhere:1:other", 60.0)

    thief = asyncio.create_task(steal())
    with pytest.raises(StoreError, match="held by elsewhere:1:other"):
        await plait.aexecute(
            "1. step(1)\n2. step($1)\n", tools=[step], store=store, run_id="stolen"
        )
    await thief
    assert ran == [1]  # it stopped: task 2 never ran unrecorded
    assert store.get("stolen").holder == "elsewhere:1:other"


async def test_a_listener_that_raises_at_the_end_still_lets_the_run_go(store_url, store):
    def on_event(e):
        if isinstance(e, ev.RunFinished):
            raise RuntimeError("listener broke")

    with pytest.raises(RuntimeError, match="listener broke"):
        await plait.aexecute("1. val('a')\n", tools=[val], store=store_url, run_id="lr",
                             on_event=on_event)  # fmt: skip
    info = store.get("lr")
    assert (info.state, info.holder) == ("done", None)
