"""One scheduler suite, run on every execution backend: local threads and a real Ray cluster.

The semantics must not depend on where a call runs: dataflow order, results, limits,
timeouts, retries, failure propagation, cancellation, `current_task()`. Tools here talk to
the test through files (a tool on Ray runs in another process), and order is proven with
handshakes on those files, never with timings.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from plait.agent.parse import parse_plan
from plait.backends.local import LocalBackend
from plait.core import events as ev
from plait.core.backend import Backend
from plait.core.context import current_task
from plait.core.remote import Remote
from plait.core.scheduler import Scheduler
from plait.core.tools import Tools, tool
from plait.errors import PlaitError

LIMIT = 30.0  # seconds a handshake may take before the test gives up (Ray starts workers)


# -- tools (shipped by value to Ray workers) ---------------------------------------------


def _wait_for(path: str) -> None:
    deadline = time.monotonic() + LIMIT
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)


@tool
def gate(path: str, name: str = "opened") -> str:
    """Say it started, wait until the file at `path` exists, say it finished (or that it
    was interrupted: how Ray stops a call)."""
    Path(path + ".started").touch()
    try:
        _wait_for(path)
    except KeyboardInterrupt:
        Path(path + ".interrupted").touch()
        raise
    Path(path + ".finished").touch()
    return name


@tool
def echo(x: Any) -> Any:
    return x


@tool
def add(a: int, b: int) -> int:
    return a + b


@tool
async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0.01)
    return a + b


@tool(max_concurrency=2)
def occupy(log: str, i: int) -> int:
    start = time.time()
    time.sleep(0.2)
    Path(f"{log}.{i}").write_text(f"{start} {time.time()}")
    return i


@tool(timeout=0.5)
def slow(path: str, seconds: float = 1.5) -> str:
    Path(path + ".started").touch()
    try:
        for _ in range(int(seconds / 0.05)):
            time.sleep(0.05)
    except KeyboardInterrupt:
        Path(path + ".interrupted").touch()
        raise
    Path(path + ".finished").touch()
    return "late"


@tool(retries=2, retry_backoff=0.01)
def flaky(fails: int) -> int:
    ctx = current_task()
    assert ctx is not None
    if ctx.attempt <= fails:
        raise ConnectionError(f"attempt {ctx.attempt} failed")
    return ctx.attempt


@tool
def boom(message: str) -> str:
    raise ValueError(message)


@tool
def whoami() -> dict[str, Any]:
    ctx = current_task()
    return {"key": ctx.idempotency_key if ctx else None, "pid": os.getpid()}


_count = 0


@tool(stateful=True)
def counter(after: Any = None) -> list[int]:
    """Counts its calls in its own process: state kept between calls."""
    global _count
    _count += 1
    return [_count, os.getpid()]


_hung = 0


# The timeout counts a fresh actor's start (a new worker process): 4 s, so that start fits
# in it on a loaded 2-core machine (1 s did not, now and then).
@tool(stateful=True, timeout=4.0)
def hang(seconds: float) -> int:
    """Sleeps in its actor; returns how many calls this actor has served."""
    global _hung
    _hung += 1
    time.sleep(seconds)
    return _hung


@tool
def blob(n: int) -> bytes:
    return b"x" * n


@tool
def length(data: bytes) -> int:
    return len(data)


@tool
def node() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


@tool(resources={"plait_node_b": 0.01})
def on_node_b() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


@tool(resources={"num_gpus": 1})
def needs_gpu() -> str:
    return "never"


TOOLS = Tools(
    [gate, echo, add, async_add, occupy, slow, flaky, boom, whoami, counter, blob, length, node]
)
TOOLS = Tools([*TOOLS.values(), on_node_b, needs_gpu, hang])


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(params=["local", pytest.param("ray", marks=pytest.mark.ray)])
async def backend(request: pytest.FixtureRequest) -> Any:
    if request.param == "local":
        opened: Backend = LocalBackend()
    else:
        request.getfixturevalue("ray_driver")
        from plait.backends.ray import RayBackend

        opened = RayBackend()
    yield opened
    await opened.aclose()


@pytest.fixture
async def ray_backend(ray_driver: Any) -> Any:
    from plait.backends.ray import RayBackend

    opened = RayBackend()
    yield opened
    await opened.aclose()


def scheduler(backend: Backend, log: list[ev.Event]) -> Scheduler:
    return Scheduler(TOOLS, log.append, time.perf_counter, run_id="r1", backend=backend)


def add_plan(s: Scheduler, text: str) -> None:
    for task in parse_plan(text, known=s.graph.nodes):
        s.add(task)


def finished(log: list[ev.Event]) -> dict[int, ev.TaskFinished]:
    return {e.id: e for e in log if isinstance(e, ev.TaskFinished)}


async def until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(LIMIT):
        while not check():
            await asyncio.sleep(0.01)


async def run_plan(backend: Backend, text: str) -> tuple[Scheduler, list[ev.Event]]:
    log: list[ev.Event] = []
    async with asyncio.timeout(LIMIT * 2), scheduler(backend, log) as s:
        add_plan(s, text)
        await s.wait()
    return s, log


# -- the suite -----------------------------------------------------------------------------


async def test_a_fast_branch_does_not_wait_for_a_slow_one(backend: Backend, tmp_path: Path):
    slow_gate = str(tmp_path / "slow")
    log: list[ev.Event] = []
    async with scheduler(backend, log) as s:
        add_plan(s, f'1. gate("{slow_gate}")\n2. echo("a")\n3. echo($2)\n4. echo($1)\n')
        await until(lambda: 3 in finished(log))
        # The dependent of the fast branch finished while the slow one is still running.
        assert s.graph.nodes[1].status == "running"
        assert s.graph.nodes[4].status == "pending"
        Path(slow_gate).touch()
        await s.wait()
    assert s.results == {1: "opened", 2: "a", 3: "a", 4: "opened"}


async def test_results_flow_into_arguments(backend: Backend):
    s, _ = await run_plan(
        backend, '1. add(1, 2)\n2. async_add($1, 10)\n3. echo([$1, {"k": $2}])\n4. add($2, $1)\n'
    )
    assert s.results == {1: 3, 2: 13, 3: [3, {"k": 13}], 4: 16}


async def test_max_concurrency_is_never_exceeded(backend: Backend, tmp_path: Path):
    log_path = tmp_path / "occupy"
    plan = "".join(f'{i}. occupy("{log_path}", {i})\n' for i in range(1, 7))
    s, _ = await run_plan(backend, plan)
    assert s.results == {i: i for i in range(1, 7)}
    spans = [tuple(map(float, (tmp_path / f"occupy.{i}").read_text().split())) for i in range(1, 7)]
    # At every start, how many calls were inside their span (the tool's own clock).
    most = max(sum(1 for a, b in spans if a <= start < b) for start, _ in spans)
    assert most <= 2


async def test_a_timeout_fails_the_call_and_names_it(backend: Backend, tmp_path: Path):
    _, log = await run_plan(backend, f'1. slow("{tmp_path / "s"}")\n2. echo($1)\n')
    done = finished(log)
    assert (done[1].status, done[1].error) == ("failed", "timed out after 0.5s")
    assert done[2].status == "skipped"


async def test_retries_then_succeed_and_are_reported(backend: Backend):
    s, log = await run_plan(backend, "1. flaky(2)\n")
    assert s.results == {1: 3}
    retries = [e for e in log if isinstance(e, ev.TaskRetrying)]
    assert [(e.attempt, e.error) for e in retries] == [
        (1, "ConnectionError: attempt 1 failed"),
        (2, "ConnectionError: attempt 2 failed"),
    ]


async def test_retries_then_fail(backend: Backend):
    _, log = await run_plan(backend, "1. flaky(5)\n")
    assert (finished(log)[1].status, finished(log)[1].error) == (
        "failed",
        "ConnectionError: attempt 3 failed",
    )


async def test_a_tool_error_is_the_tools_own_and_skips_dependents(backend: Backend):
    _, log = await run_plan(backend, '1. boom("bad input")\n2. echo($1)\n3. echo("free")\n')
    done = finished(log)
    assert (done[1].status, done[1].error) == ("failed", "ValueError: bad input")
    assert done[2].status == "skipped"
    assert done[3].status == "done"


async def test_invalid_arguments_at_call_time_fail_the_task(backend: Backend):
    _, log = await run_plan(backend, '1. echo("not a number")\n2. add($1, 1)\n')
    done = finished(log)
    assert done[2].status == "failed"
    assert done[2].error is not None and "invalid arguments for add" in done[2].error


async def test_cancel_a_running_call_and_its_dependents(backend: Backend, tmp_path: Path):
    path = str(tmp_path / "g")
    log: list[ev.Event] = []
    async with scheduler(backend, log) as s:
        add_plan(s, f'1. gate("{path}")\n2. echo($1)\n3. echo("other")\n')
        await until(lambda: os.path.exists(path + ".started"))
        assert s.cancel(1) == [1, 2]
        await s.wait()
        if backend.name == "ray":  # on Ray the call itself is stopped
            await until(lambda: os.path.exists(path + ".interrupted"))
        Path(path).touch()  # a thread cannot be stopped: let it end
    done = finished(log)
    assert (done[1].status, done[2].status, done[3].status) == ("cancelled", "cancelled", "done")
    if backend.name == "ray":
        assert not os.path.exists(path + ".finished")


async def test_current_task_is_seen_by_the_tool(backend: Backend):
    s, _ = await run_plan(backend, "1. whoami()\n2. whoami()\n")
    assert [s.results[i]["key"] for i in (1, 2)] == ["r1:1", "r1:2"]
    in_driver = s.results[1]["pid"] == os.getpid()
    assert in_driver == (backend.name == "local")


async def test_a_stateful_tool_keeps_its_state_between_calls(backend: Backend):
    s, _ = await run_plan(backend, "1. counter()\n2. counter($1)\n3. counter($2)\n")
    first, pid = s.results[1]
    assert s.results[2] == [first + 1, pid]
    assert s.results[3] == [first + 2, pid]


async def test_an_edit_adds_work_while_the_graph_runs(backend: Backend, tmp_path: Path):
    path = str(tmp_path / "g")
    log: list[ev.Event] = []
    async with scheduler(backend, log) as s:
        add_plan(s, f'1. gate("{path}", "late")\n')
        await until(lambda: os.path.exists(path + ".started"))
        add_plan(s, "2. add(1, 1)\n3. echo($1)\n")
        await until(lambda: 2 in finished(log))
        Path(path).touch()
        await s.wait()
    assert s.results == {1: "late", 2: 2, 3: "late"}


# -- Ray only ------------------------------------------------------------------------------


@pytest.mark.ray
async def test_ray_stops_a_call_that_timed_out(ray_backend: Backend, tmp_path: Path):
    path = str(tmp_path / "s")
    _, log = await run_plan(ray_backend, f'1. slow("{path}", 20)\n')
    assert finished(log)[1].error == "timed out after 0.5s"
    await until(lambda: os.path.exists(path + ".interrupted"))
    assert not os.path.exists(path + ".finished")


@pytest.mark.ray
async def test_a_large_result_stays_on_the_cluster_and_reaches_the_next_call(
    ray_backend: Backend,
):
    n = 3 * 2**20
    s, _ = await run_plan(ray_backend, f"1. blob({n})\n2. length($1)\n3. blob(10)\n")
    kept = s.results[1]
    assert isinstance(kept, Remote)
    assert (kept.kind, kept.nbytes) == ("bytes", n)
    assert s.results[2] == n  # the value went worker to worker, not through the driver
    assert s.results[3] == b"x" * 10  # small results come home
    assert await asyncio.to_thread(kept.get) == b"x" * n


@pytest.mark.ray
async def test_resources_choose_the_node(ray_backend: Backend, ray_cluster: Any):
    import ray

    node_b = next(
        n["NodeID"] for n in ray.nodes() if n["Alive"] and "plait_node_b" in n["Resources"]
    )
    s, _ = await run_plan(ray_backend, "1. on_node_b()\n2. on_node_b()\n")
    assert s.results == {1: node_b, 2: node_b}


@pytest.mark.ray
async def test_resources_no_node_has_fail_at_once(ray_backend: Backend):
    _, log = await run_plan(ray_backend, "1. needs_gpu()\n")
    error = finished(log)[1].error
    assert error is not None and "no node of the Ray cluster has" in error
    assert "'GPU': 1" in error


def test_an_unknown_backend_is_named():
    from plait.backends import open_backend

    with pytest.raises(PlaitError, match="unknown backend 'dask'"):
        open_backend("dask")


@pytest.mark.ray
async def test_a_kept_result_is_recorded_by_summary_and_made_again_on_resume(
    ray_backend: Backend, tmp_path: Path
):
    from plait import aexecute, open_store
    from plait.runs.runlog import Restored

    n = 2 * 2**20
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    result = await aexecute(
        f"1. blob({n})\n2. length($1)\n",
        tools=TOOLS,
        backend=ray_backend,
        store=store,
        run_id="kept",
    )
    summary = {"$remote": {"remote": "bytes", "bytes": n}}
    assert [t["result"] for t in result.to_dict()["tasks"]] == [summary, n]
    opened = open_store(store)
    try:
        records = list(opened.records("kept"))
    finally:
        opened.close()
    restored = Restored(records)
    # The value lived in the cluster, not in the store: a resume runs task 1 again (and so
    # task 2 too, whose recorded result only stands on inputs restored with it).
    assert restored.tasks[1][1] is None
    assert restored.tasks[2][1] is not None and restored.tasks[2][1].result == n


@pytest.mark.ray
async def test_a_kept_result_inside_text_fails_the_call_by_name(ray_backend: Backend):
    _, log = await run_plan(ray_backend, f'1. blob({2 * 2**20})\n2. echo("got $1")\n')
    error = finished(log)[2].error
    assert error is not None and "$1 is kept on the cluster" in error
    assert "pass it whole" in error


@pytest.mark.ray
async def test_a_stateful_call_that_timed_out_gives_way_to_a_new_actor(ray_backend: Backend):
    _, log = await run_plan(ray_backend, "1. hang(30)\n")
    assert finished(log)[1].error == "timed out after 4s"
    s, _ = await run_plan(ray_backend, "1. hang(0.01)\n")
    assert s.results == {1: 1}  # a fresh actor, not the one still busy for 30 s


@pytest.mark.ray
def test_one_backend_serves_runs_on_different_event_loops(ray_driver: Any):
    from plait import execute
    from plait.backends.ray import RayBackend

    backend = RayBackend()
    try:
        for _ in range(2):
            result = execute("1. add(1, 2)\n2. add($1, 3)\n", tools=TOOLS, backend=backend)
            assert result.status == "done", result.error
    finally:
        asyncio.run(backend.aclose())


def test_the_last_backend_to_close_shuts_down_the_connection_plait_opened(monkeypatch):
    ray_module = pytest.importorskip("plait.backends.ray")
    state = {"up": False, "inits": 0, "shutdowns": 0}

    def init(address: Any) -> None:
        state["up"] = True
        state["inits"] += 1

    def shutdown() -> None:
        state["up"] = False
        state["shutdowns"] += 1

    monkeypatch.setattr(ray_module, "_init", init)
    monkeypatch.setattr(ray_module.ray, "is_initialized", lambda: state["up"])
    monkeypatch.setattr(ray_module.ray, "shutdown", shutdown)
    monkeypatch.setattr(ray_module, "_users", 0)
    monkeypatch.setattr(ray_module, "_ours", False)
    first, second = ray_module.RayBackend(), ray_module.RayBackend()
    asyncio.run(first.aclose())
    assert state == {"up": True, "inits": 1, "shutdowns": 0}  # the second still runs on it
    asyncio.run(second.aclose())
    asyncio.run(second.aclose())  # closing twice is harmless
    assert state == {"up": False, "inits": 1, "shutdowns": 1}
