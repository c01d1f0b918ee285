"""The dataflow scheduler (plait.core.scheduler): ordering, limits, failures, cancellation, edits.

Order and concurrency are proven with handshakes (asyncio / threading events), never with
timings. `asyncio.timeout` only bounds how long a broken scheduler can hang a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from plait.agent.parse import parse_plan
from plait.backends.local import LocalBackend
from plait.core import events as ev
from plait.core.scheduler import Scheduler
from plait.core.task import Task
from plait.core.tools import Tools, tool
from plait.errors import PlanError

LIMIT = 5  # seconds a handshake may take before the test gives up


@contextlib.asynccontextmanager
async def scheduler(
    *tools: Any, log: list[ev.Event] | None = None, max_threads: int = 32
) -> AsyncIterator[Scheduler]:
    """A scheduler on the backend a session gives it: `LocalBackend`, closed after its scope."""
    emit: Callable[[ev.Event], None] = log.append if log is not None else (lambda e: None)
    backend = LocalBackend(max_threads)
    try:
        async with Scheduler(Tools(tools), emit, time.perf_counter, backend=backend) as s:
            yield s
    finally:
        await backend.aclose()


def add_plan(s: Scheduler, text: str) -> None:
    for task in parse_plan(text, known=s.graph.nodes):
        s.add(task)


def statuses(s: Scheduler) -> dict[int, str]:
    return {i: n.status for i, n in s.graph.nodes.items()}


def finished(log: list[ev.Event]) -> list[tuple[int, str]]:
    return [(e.id, e.status) for e in log if isinstance(e, ev.TaskFinished)]


def other_tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


def tool_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("plait-tool")]


async def handshake(event: asyncio.Event) -> None:
    async with asyncio.timeout(LIMIT):
        await event.wait()


# -- ordering -----------------------------------------------------------------------------


async def test_dependent_starts_without_waiting_for_an_unrelated_slow_branch():
    release = asyncio.Event()
    dependent_ran = asyncio.Event()
    calls: list[str] = []

    @tool
    async def slow() -> str:
        calls.append("slow")
        await release.wait()
        return "slow"

    @tool
    async def fast() -> int:
        calls.append("fast")
        return 1

    @tool
    async def after(x: int | str) -> int | str:
        calls.append(f"after {x}")
        if x == 1:
            dependent_ran.set()
        return x + 1 if isinstance(x, int) else x * 2

    log: list[ev.Event] = []
    async with scheduler(slow, fast, after, log=log) as s:
        add_plan(s, "1. slow()\n2. fast()\n3. after($2)\n4. after($3)\n5. after(x=$1)\n")
        await handshake(dependent_ran)
        assert s.graph.nodes[1].status == "running"  # still blocked, and 3 ran anyway
        async with asyncio.timeout(LIMIT):
            while s.graph.nodes[4].status != "done":  # the chain keeps going too
                await asyncio.sleep(0)
        assert s.graph.nodes[5].status == "pending"
        release.set()
        await s.wait()
    assert s.results == {1: "slow", 2: 1, 3: 2, 4: 3, 5: "slowslow"}
    assert finished(log).index((4, "done")) < finished(log).index((1, "done"))
    assert calls == ["slow", "fast", "after 1", "after 2", "after slow"]


async def test_results_flow_into_arguments():
    @tool
    async def num(n: int) -> int:
        return n

    @tool
    def add(a: int, b: int) -> int:
        return a + b

    @tool
    async def say(text: str) -> str:
        return text

    @tool
    async def pack(items: list, mapping: dict) -> list:
        return [items, mapping]

    async with scheduler(num, add, say, pack) as s:
        add_plan(
            s,
            "1. num(2)\n2. num(n=40)\n3. add($1, b=$2)\n"
            '4. say("total: $3, parts ${1}+${2}")\n'
            '5. pack([$1, "$2"], {"k": $3})\n',
        )
        await s.wait()
    assert s.results[3] == 42
    assert s.results[4] == "total: 42, parts 2+40"
    assert s.results[5] == [[2, 40], {"k": 42}]


async def test_wait_with_nothing_added_returns():
    async with scheduler() as s:
        async with asyncio.timeout(LIMIT):
            await s.wait()
        assert s.graph.open == 0


# -- threads and the loop --------------------------------------------------------------


async def test_sync_tools_run_in_threads_and_async_on_the_loop(no_leftover_tool_threads):
    loop = asyncio.get_running_loop()
    seen: dict[str, Any] = {}
    both = threading.Barrier(2, timeout=LIMIT)  # passes only if two sync calls overlap

    @tool
    def blocking(name: str) -> str:
        seen[name] = threading.current_thread().name
        try:
            asyncio.get_running_loop()
            seen[name + " loop"] = True
        except RuntimeError:
            seen[name + " loop"] = False
        both.wait()
        return name

    @tool
    async def on_loop() -> str:
        seen["async"] = (
            threading.current_thread() is threading.main_thread(),
            asyncio.get_running_loop() is loop,
        )
        return "async"

    async with scheduler(blocking, on_loop) as s:
        add_plan(s, '1. blocking("a")\n2. blocking("b")\n3. on_loop()\n')
        await s.wait()
    assert statuses(s) == {1: "done", 2: "done", 3: "done"}
    assert seen["a"].startswith("plait-tool") and seen["b"].startswith("plait-tool")
    assert seen["a"] != seen["b"]
    assert seen["a loop"] is False and seen["b loop"] is False
    assert seen["async"] == (True, True)


# -- limits ---------------------------------------------------------------------------


async def test_max_concurrency_is_never_exceeded():
    active = 0
    peak = 0
    other_ran_while_full = asyncio.Event()

    @tool(max_concurrency=2)
    async def limited(i: int) -> int:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        for _ in range(5):
            await asyncio.sleep(0)
        if active == 2:
            # another tool is not held back by this tool's limit
            await other_ran_while_full.wait()
        active -= 1
        return i

    @tool
    async def free() -> str:
        other_ran_while_full.set()
        return "free"

    async with scheduler(limited, free) as s:
        add_plan(s, "".join(f"{i}. limited({i})\n" for i in range(1, 9)) + "9. free()\n")
        async with asyncio.timeout(LIMIT):
            await s.wait()
    assert peak == 2
    assert s.results == {**{i: i for i in range(1, 9)}, 9: "free"}


async def test_max_concurrency_for_sync_tools(no_leftover_tool_threads):
    lock = threading.Lock()
    active = 0
    peak = 0

    @tool(max_concurrency=3)
    def limited(i: int) -> int:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.002)
        with lock:
            active -= 1
        return i

    async with scheduler(limited) as s:
        add_plan(s, "".join(f"{i}. limited({i})\n" for i in range(1, 13)))
        await s.wait()
    assert 1 <= peak <= 3
    assert s.results == {i: i for i in range(1, 13)}


async def test_timeout_fails_the_task_and_names_the_timeout():
    called: list[int] = []

    @tool(timeout=0.05)
    async def hangs() -> None:
        await asyncio.Event().wait()

    @tool
    async def after(x: Any) -> None:
        called.append(x)

    log: list[ev.Event] = []
    async with scheduler(hangs, after, log=log) as s:
        add_plan(s, "1. hangs()\n2. after($1)\n")
        async with asyncio.timeout(LIMIT):
            await s.wait()
    assert statuses(s) == {1: "failed", 2: "skipped"}
    assert s.graph.nodes[1].error == "timed out after 0.05s"
    assert called == []


async def test_sync_timeout_is_reported_at_once_and_its_thread_joined(no_leftover_tool_threads):
    unblock = threading.Event()
    entered = threading.Event()

    @tool(timeout=0.05)
    def stuck() -> str:
        entered.set()
        unblock.wait(LIMIT)
        return "late"

    async with scheduler(stuck) as s:
        add_plan(s, "1. stuck()\n")
        async with asyncio.timeout(LIMIT):
            await s.wait()
        assert s.graph.nodes[1].status == "failed"
        assert "timed out after 0.05s" in s.graph.nodes[1].error
        assert entered.is_set() and not unblock.is_set()  # failed while the call still ran
        unblock.set()
    assert tool_threads() == []  # the scope joined the thread
    assert 1 not in s.results


async def test_retries_then_succeed():
    attempts = 0

    @tool(retries=2, retry_backoff=0)
    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionError(f"try {attempts}")
        return "ok"

    log: list[ev.Event] = []
    async with scheduler(flaky, log=log) as s:
        add_plan(s, "1. flaky()\n")
        await s.wait()
    assert s.results == {1: "ok"}
    retries = [e for e in log if isinstance(e, ev.TaskRetrying)]
    assert [(e.attempt, e.error) for e in retries] == [
        (1, "ConnectionError: try 1"),
        (2, "ConnectionError: try 2"),
    ]


async def test_retries_then_fail():
    attempts = 0

    @tool(retries=1, retry_backoff=0)
    def broken() -> str:
        nonlocal attempts
        attempts += 1
        raise ValueError("nope")

    async with scheduler(broken) as s:
        add_plan(s, "1. broken()\n")
        await s.wait()
    assert attempts == 2
    assert s.graph.nodes[1].status == "failed"
    assert s.graph.nodes[1].error == "ValueError: nope"


async def test_timeout_is_per_attempt_and_retried():
    attempts = 0

    @tool(timeout=0.05, retries=1, retry_backoff=0)
    async def slow_once() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            await asyncio.Event().wait()
        return "second"

    async with scheduler(slow_once) as s:
        add_plan(s, "1. slow_once()\n")
        async with asyncio.timeout(LIMIT):
            await s.wait()
    assert s.results == {1: "second"}
    assert attempts == 2


# -- failure propagation ------------------------------------------------------------------


async def test_failure_skips_dependents_and_never_runs_them():
    called: list[str] = []

    @tool
    async def ok(name: str) -> str:
        called.append(name)
        return name

    @tool
    def bad() -> str:
        raise RuntimeError("broken tool")

    log: list[ev.Event] = []
    async with scheduler(ok, bad, log=log) as s:
        add_plan(
            s,
            '1. ok("a")\n2. bad()\n3. ok("uses $2")\n4. ok("$3 and $1")\n5. ok("only $1")\n'
            "6. ok(name=$4)\n",
        )
        await s.wait()
    assert statuses(s) == {
        1: "done",
        2: "failed",
        3: "skipped",
        4: "skipped",
        5: "done",
        6: "skipped",
    }
    assert sorted(called) == ["a", "only a"]
    assert s.graph.nodes[2].error == "RuntimeError: broken tool"
    assert "$2" in s.graph.nodes[3].error
    skipped_events = {i for i, status in finished(log) if status == "skipped"}
    assert skipped_events == {3, 4, 6}
    started = {e.id for e in log if isinstance(e, ev.TaskStarted)}
    assert started == {1, 2, 5}
    assert s.graph.open == 0


async def test_invalid_arguments_at_call_time_fail_the_task():
    @tool
    async def text() -> str:
        return "not a number"

    @tool
    async def double(n: int) -> int:
        return 2 * n

    async with scheduler(text, double) as s:
        add_plan(s, "1. text()\n2. double($1)\n")
        await s.wait()
    assert s.graph.nodes[2].status == "failed"
    assert "invalid arguments for double" in s.graph.nodes[2].error
    assert "\n" not in s.graph.nodes[2].error


# -- cancellation ---------------------------------------------------------------------------


async def test_cancel_a_running_task_and_its_dependents():
    started = asyncio.Event()
    other_release = asyncio.Event()
    was_cancelled = asyncio.Event()
    called: list[str] = []

    @tool
    async def slow() -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            was_cancelled.set()
            raise
        return "never"

    @tool
    async def other() -> str:
        await other_release.wait()
        return "other"

    @tool
    async def after(x: Any) -> Any:
        called.append(x)
        return x

    log: list[ev.Event] = []
    async with scheduler(slow, other, after, log=log) as s:
        add_plan(s, "1. slow()\n2. after($1)\n3. after($2)\n4. other()\n5. after($4)\n")
        await handshake(started)
        assert sorted(s.cancel(1)) == [1, 2, 3]
        assert statuses(s) == {
            1: "cancelled",
            2: "cancelled",
            3: "cancelled",
            4: "running",
            5: "pending",
        }
        await handshake(was_cancelled)
        assert s.cancel(1) == []  # settled already
        other_release.set()
        async with asyncio.timeout(LIMIT):
            await s.wait()
    assert statuses(s)[5] == "done"
    assert called == ["other"]
    assert {i: st for i, st in finished(log) if st == "cancelled"} == {
        1: "cancelled",
        2: "cancelled",
        3: "cancelled",
    }
    assert other_tasks() == set()


async def test_cancel_a_waiting_task():
    release = asyncio.Event()
    called: list[int] = []

    @tool
    async def gate() -> int:
        await release.wait()
        return 1

    @tool
    async def after(x: int) -> int:
        called.append(x)
        return x

    async with scheduler(gate, after) as s:
        add_plan(s, "1. gate()\n2. after($1)\n3. after($1)\n")
        assert s.cancel(2) == [2]
        release.set()
        await s.wait()
    assert statuses(s) == {1: "done", 2: "cancelled", 3: "done"}
    assert called == [1]


async def test_cancel_unknown_task_is_a_plan_error():
    async with scheduler() as s:
        with pytest.raises(PlanError, match="no task 7"):
            s.cancel(7)


async def test_cancel_a_running_sync_task(no_leftover_tool_threads):
    entered = threading.Event()
    unblock = threading.Event()

    @tool
    def blocking() -> str:
        entered.set()
        unblock.wait(LIMIT)
        return "late"

    @tool
    async def after(x: str) -> str:
        return x

    log: list[ev.Event] = []
    async with scheduler(blocking, after, log=log) as s:
        add_plan(s, "1. blocking()\n2. after($1)\n")
        async with asyncio.timeout(LIMIT):
            while not entered.is_set():
                await asyncio.sleep(0.001)
        assert s.cancel(1) == [1, 2]
        await s.wait()  # settled at once, though the thread still runs
        assert not unblock.is_set()
        unblock.set()
    assert tool_threads() == []
    assert s.results == {}  # the late result is dropped
    assert finished(log) == [(1, "cancelled"), (2, "cancelled")]


async def test_cancelling_the_whole_run_leaves_nothing_running(no_leftover_tool_threads):
    async_started = asyncio.Event()
    async_cancelled = asyncio.Event()
    thread_entered = threading.Event()
    unblock = threading.Event()
    log: list[ev.Event] = []

    @tool
    async def forever() -> None:
        async_started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            async_cancelled.set()
            raise

    @tool
    def blocking() -> str:
        thread_entered.set()
        unblock.wait(LIMIT)
        return "late"

    @tool
    async def after(x: Any) -> Any:
        return x

    async def run() -> None:
        async with scheduler(forever, blocking, after, log=log) as s:
            add_plan(s, "1. forever()\n2. blocking()\n3. after($1)\n4. after($2)\n")
            await s.wait()

    runner = asyncio.create_task(run())
    await handshake(async_started)
    async with asyncio.timeout(LIMIT):
        while not thread_entered.is_set():
            await asyncio.sleep(0.001)
    runner.cancel()
    await asyncio.sleep(0)
    unblock.set()  # the blocked thread can now end; the scope waits for it
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(LIMIT):
            await runner
    assert async_cancelled.is_set()
    assert other_tasks() == set()
    assert tool_threads() == []
    assert sorted(finished(log)) == [
        (1, "cancelled"),
        (2, "cancelled"),
        (3, "cancelled"),
        (4, "cancelled"),
    ]


async def test_an_error_in_the_body_cancels_the_tasks_and_is_raised_unwrapped():
    cancelled = asyncio.Event()
    started = asyncio.Event()

    @tool
    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(KeyError, match="boom"):
        async with scheduler(forever) as s:
            add_plan(s, "1. forever()\n")
            await handshake(started)
            raise KeyError("boom")
    assert cancelled.is_set()
    assert s.graph.nodes[1].status == "cancelled"
    assert other_tasks() == set()


# -- graph edits while running -------------------------------------------------------------


async def test_add_tasks_while_running():
    release = asyncio.Event()
    first_started = asyncio.Event()
    seen: list[Any] = []

    @tool
    async def slow() -> str:
        first_started.set()
        await release.wait()
        return "slow"

    @tool
    async def quick(n: int) -> int:
        return n

    @tool
    async def use(x: Any) -> Any:
        seen.append(x)
        return x

    @tool
    def bad() -> None:
        raise OSError("disk")

    async with scheduler(slow, quick, use, bad) as s:
        add_plan(s, "1. slow()\n2. quick(7)\n3. bad()\n")
        await handshake(first_started)
        async with asyncio.timeout(LIMIT):
            while s.graph.open > 1:
                await asyncio.sleep(0)
        assert statuses(s) == {1: "running", 2: "done", 3: "failed"}

        # on a finished task: starts at once with its value
        node = s.add(Task(4, "use", kwargs={"x": "$2"}))  # deps found from references
        assert node.task.deps == {2}
        # on a running task: waits for it
        add_plan(s, "5. use($1)\n")
        # on a failed task: skipped at once, never run
        assert s.add(parse_plan("6. use($3)", known=s.graph.nodes)[0]).status == "skipped"
        async with asyncio.timeout(LIMIT):
            while s.graph.nodes[4].status != "done":
                await asyncio.sleep(0)
        assert seen == [7]
        assert s.graph.nodes[5].status == "pending"
        release.set()
        await s.wait()
        # and after everything settled, the graph takes more
        add_plan(s, '7. use("$5 again")\n')
        await s.wait()
    assert seen == [7, "slow", "slow again"]
    assert statuses(s)[6] == "skipped"


async def test_rejected_edits_leave_the_graph_unchanged():
    @tool
    async def one(n: int) -> int:
        return n

    async with scheduler(one) as s:
        add_plan(s, "1. one(1)\n")
        await s.wait()
        with pytest.raises(PlanError, match="unknown tool 'nope'"):
            s.add(Task(2, "nope"))
        with pytest.raises(PlanError, match="already in the graph"):
            s.add(Task(1, "one", (5,)))
        with pytest.raises(PlanError, match="missing argument 'n'"):
            s.add(Task(3, "one"))
        with pytest.raises(PlanError, match="not an earlier task"):
            s.add(Task(4, "one", ("$9",)))
        assert list(s.graph.nodes) == [1]
        assert s.graph.open == 0


# -- hostile tools: a tool's exception is the tool's failure, whatever its type -----------


class Unusual(BaseException):
    """A BaseException that is neither an Exception nor one Python itself raises."""


@pytest.mark.parametrize(
    ("raised", "message"),
    [
        (SystemExit(3), "SystemExit: 3"),
        (KeyboardInterrupt(), "KeyboardInterrupt"),
        (GeneratorExit(), "GeneratorExit"),
        (asyncio.CancelledError(), "CancelledError"),
        (Unusual("odd"), "Unusual: odd"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None,
)
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_tool_raising_any_base_exception_fails_only_its_task(
    raised, message, kind, no_leftover_tool_threads
):
    if kind == "sync":

        @tool
        def hostile() -> str:
            raise raised

    else:

        @tool
        async def hostile() -> str:
            raise raised

    @tool
    async def sibling() -> str:
        return "fine"

    @tool
    async def after(x: str) -> str:
        return x

    log: list[ev.Event] = []
    async with scheduler(hostile, sibling, after, log=log) as s:
        add_plan(s, "1. hostile()\n2. sibling()\n3. after($1)\n")
        async with asyncio.timeout(LIMIT):
            await s.wait()
    assert statuses(s) == {1: "failed", 2: "done", 3: "skipped"}
    assert s.graph.nodes[1].error == message
    assert s.results == {2: "fine"}


async def test_a_tool_raising_a_base_exception_is_retried_like_any_failure():
    attempts = 0

    @tool(retries=1, retry_backoff=0)
    def quits() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise SystemExit("first try")
        return "second try"

    async with scheduler(quits) as s:
        add_plan(s, "1. quits()\n")
        async with asyncio.timeout(LIMIT):
            await s.wait()
    assert s.results == {1: "second try"}


def test_only_a_signal_handlers_keyboard_interrupt_counts_as_a_signal():
    from plait.core.scheduler import from_signal

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with pytest.raises(KeyboardInterrupt) as delivered:
            signal.raise_signal(signal.SIGTERM)
            time.sleep(LIMIT)  # the handler runs at the next bytecode; never sleeps this long
        assert from_signal(delivered.value)  # while the handler is the process's
        with pytest.raises(KeyboardInterrupt) as raised:
            raise KeyboardInterrupt  # as a tool would
        assert not from_signal(raised.value)
    finally:
        signal.signal(signal.SIGTERM, previous)


async def test_an_abandoned_sync_call_does_not_hold_a_thread_others_need(no_leftover_tool_threads):
    entered = threading.Event()
    unblock = threading.Event()

    @tool(timeout=0.05)
    def stuck() -> str:
        entered.set()
        unblock.wait(LIMIT)
        return "late"

    @tool
    def quick(x: str = "") -> str:
        return "quick"

    async with scheduler(stuck, quick, max_threads=1) as s:
        add_plan(s, "1. stuck()\n")
        async with asyncio.timeout(LIMIT):
            await s.wait()
        assert entered.is_set() and not unblock.is_set()  # its one thread is still blocked
        add_plan(s, "2. quick()\n")  # a pool of one blocked thread would never run this
        async with asyncio.timeout(LIMIT):
            await s.wait()
        assert s.results == {2: "quick"}
        unblock.set()


async def test_a_call_still_blocked_when_the_run_ends_is_left_behind_with_a_warning(
    caplog, monkeypatch
):
    import plait.backends.local as local

    monkeypatch.setattr(local, "ABANDON_GRACE", 0.01)
    unblock = threading.Event()

    @tool(timeout=0.05)
    def stuck() -> str:
        unblock.wait(LIMIT)
        return "late"

    try:
        async with asyncio.timeout(LIMIT):
            async with scheduler(stuck) as s:  # leaving it does not wait for the thread
                add_plan(s, "1. stuck()\n")
                await s.wait()
        assert s.graph.nodes[1].error == "timed out after 0.05s"
        assert tool_threads() != []  # left to die with the process, as a daemon
        assert all(t.daemon for t in threading.enumerate() if t.name.startswith("plait-tool"))
        assert "1 sync tool call (stuck) still running" in caplog.text
    finally:
        unblock.set()
    for thread in threading.enumerate():
        if thread.name.startswith("plait-tool"):
            thread.join(LIMIT)


async def test_a_task_added_after_the_scope_closed_is_refused_and_changes_nothing():
    @tool
    async def noop() -> int:
        return 1

    log: list[ev.Event] = []
    async with scheduler(noop, log=log) as s:
        s.add(Task(1, "noop"))
        await s.wait()
    before = len(log)
    with pytest.raises(RuntimeError, match="scope is closed"):
        s.add(Task(2, "noop"))
    assert list(s.graph.nodes) == [1] and len(log) == before  # no node, no TaskAdded
