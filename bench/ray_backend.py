"""Ray backend: CPU-bound tools in parallel, and what plait adds to a bare Ray task.

Starts its own two-node Ray cluster on 127.0.0.1 exactly as the tests do (tests/raycluster.py:
a loopback-only network namespace when run as root, token authentication, a head and a second
node, each `--num-cpus=1` for the 2-core machine), joins it, and stops it at the end.

1. CPU-bound: `--calls` (400) calls of `spin`, a pure-Python busy loop calibrated here to
   `--ms` (50) ms a call, all independent, through `plait.aexecute` with the default local
   backend (a thread pool: the GIL runs them one at a time) and with `backend=RayBackend()`
   (a Ray task per call, one per node at a time). Figure: local ÷ ray, ~2× expected with two
   one-CPU nodes.
2. Overhead: `--trivial` (2000) calls of `echo` (returns its argument) through plait's ray
   backend against the same function as a bare `ray.remote`,
   `ray.get([f.remote(i) for i in range(N)])`, in the same run after warm-up. Figure:
   plait ÷ bare Ray, target ≤ 1.5×.

Each figure is the best of `--repeat` (3) runs, plait and its baseline interleaved; only the
ratios are meant to carry over to another machine.

    python bench/ray_backend.py [--calls 400] [--trivial 2000] [--ms 50] [--repeat 3]
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The cluster helper is the tests' own.
sys.path.insert(0, str(HERE.parent / "tests"))

from raycluster import RayCluster, loopback_only  # noqa: E402

# First, while this process has one thread: only 127.0.0.1 from here on (needs root).
LOOPBACK_ONLY = loopback_only()

import argparse  # noqa: E402
import asyncio  # noqa: E402
import gc  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Awaitable, Callable  # noqa: E402

# Ray reads these when first imported: the cluster and this driver share the token.
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(16)
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import ray  # noqa: E402

import plait  # noqa: E402
from plait.backends.ray import RayBackend  # noqa: E402


def burn(loops: int) -> int:
    """Pure-Python work that holds the GIL throughout."""
    x = 0
    for k in range(loops):
        x ^= k
    return x


@plait.tool
def spin(i: int, loops: int) -> str:
    """Busy-loop for about --ms milliseconds; returns the node it ran on."""
    burn(loops)
    return str(ray.get_runtime_context().get_node_id())


@plait.tool
def echo(i: int) -> int:
    """Nothing at all: returns its argument."""
    return i


def calibrate(ms: float) -> int:
    """Loops of `burn` that take about `ms` milliseconds here: the fastest of several
    timings (the others are the machine's noise), refined twice."""
    loops = 100_000
    while burn_time(loops) < 0.02:
        loops *= 2
    for _ in range(3):
        took = min(burn_time(loops) for _ in range(7))
        loops = max(1, round(loops * ms / 1000 / took))
    return loops


def burn_time(loops: int) -> float:
    start = time.perf_counter()
    burn(loops)
    return time.perf_counter() - start


async def timed(run: Callable[[], Awaitable[object]]) -> tuple[float, float, object]:
    """Wall time, this process's CPU time, and what `run` returned."""
    gc.collect()
    cpu, start = time.process_time(), time.perf_counter()
    out = await run()
    return time.perf_counter() - start, time.process_time() - cpu, out


async def run_plan(plan: str, tool: plait.Tool, backend: object, n: int) -> plait.RunResult:
    kw = {} if backend is None else {"backend": backend}
    result = await plait.aexecute(plan, tools=[tool], **kw)  # type: ignore[arg-type]
    assert result.status == "done" and len(result.tasks) == n, result
    return result


def fmt(times: list[float]) -> str:
    return ", ".join(f"{t:.2f}" for t in times)


async def cpu_bound(backend: RayBackend, calls: int, ms: float, repeat: int) -> None:
    warm = "".join(f"{i}. spin({i}, 100000)\n" for i in range(1, 9))
    await run_plan(warm, spin, None, 8)
    await run_plan(warm, spin, backend, 8)  # the workers are up before calibrating
    loops = calibrate(ms)
    one = min(burn_time(loops) for _ in range(7))
    plan = "".join(f"{i}. spin({i}, {loops})\n" for i in range(1, calls + 1))
    local: list[float] = []
    remote: list[float] = []
    nodes: set[str] = set()
    for _ in range(repeat):
        t, _, _ = await timed(lambda: run_plan(plan, spin, None, calls))
        local.append(t)
        t, _, result = await timed(lambda: run_plan(plan, spin, backend, calls))
        remote.append(t)
        nodes |= {task.result for task in result.tasks}
    serial = calls * one
    print(f"CPU-bound: {calls} independent calls of a {one * 1000:.1f} ms pure-Python busy loop")
    print(f"  ({loops:,} loops; {serial:.2f} s of work), best of {repeat} (interleaved)")
    print(f"  local thread pool  {min(local):7.2f} s   (runs: {fmt(local)})")
    print(f"  ray, 2 nodes × 1   {min(remote):7.2f} s   (runs: {fmt(remote)}; "
          f"calls ran on {len(nodes)} nodes)")  # fmt: skip
    print(f"  speed-up local ÷ ray   {min(local) / min(remote):5.2f} ×   (~2× expected)")
    print(f"  ray ÷ ideal (work ÷ 2) {min(remote) / (serial / 2):5.2f} ×")


async def overhead(backend: RayBackend, n: int, repeat: int) -> None:
    plan = "".join(f"{i}. echo({i})\n" for i in range(1, n + 1))
    bare = ray.remote(echo.fn)

    async def bare_run() -> list[int]:
        out = ray.get([bare.remote(i) for i in range(n)])
        assert out == list(range(n))
        return out

    for _ in range(2):  # warm-up: worker processes, function export, both paths
        await bare_run()
        await run_plan(plan, echo, backend, n)
    ours: list[tuple[float, float]] = []
    base: list[tuple[float, float]] = []
    for _ in range(repeat):
        base.append((await timed(bare_run))[:2])
        ours.append((await timed(lambda: run_plan(plan, echo, backend, n)))[:2])
    print(f"\noverhead: {n:,} trivial calls, best of {repeat} (interleaved)")
    for label, times in (("bare ray.remote", base), ("plait ray backend", ours)):
        wall, cpu = min(t for t, _ in times), min(c for _, c in times)
        print(f"  {label:<18} {wall:6.3f} s  {n / wall:6,.0f} tasks/s  "
              f"driver CPU {cpu / n * 1e6:4.0f} µs/task   "
              f"(runs: {', '.join(f'{t:.3f}' for t, _ in times)})")  # fmt: skip
    ratio = min(t for t, _ in ours) / min(t for t, _ in base)
    cpu_ratio = min(c for _, c in ours) / min(c for _, c in base)
    print(f"  plait ÷ bare Ray   {ratio:5.2f} ×   (target ≤ 1.5×; driver CPU {cpu_ratio:.2f} ×)")


async def main(args: argparse.Namespace) -> None:
    backend = RayBackend()  # after ray.init: it joins, and leaves the connection open
    try:
        await cpu_bound(backend, args.calls, args.ms, args.repeat)
        await overhead(backend, args.trivial, args.repeat)
    finally:
        await backend.aclose()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=400, help="CPU-bound calls (default 400)")
    ap.add_argument("--ms", type=float, default=50.0, help="ms of work per CPU-bound call")
    ap.add_argument("--trivial", type=int, default=2000, help="trivial calls (default 2000)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each, best taken")
    args = ap.parse_args()
    if not LOOPBACK_ONLY:
        print("warning: no loopback-only network namespace (needs root): Ray may use this "
              "machine's own address rather than 127.0.0.1", file=sys.stderr)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="plait-ray-") as tmp:
        cluster = RayCluster(Path(tmp), head_cpus=1, node_cpus=1)
        try:
            cluster.start()
            os.environ.update(cluster.driver_env())
            ray.init(logging_level="WARNING")
            print(f"Ray {ray.__version__}: 2 nodes on {cluster.address}, 1 CPU each; "
                  f"{os.cpu_count()} cores here\n")  # fmt: skip
            asyncio.run(main(args))
        finally:
            if ray.is_initialized():
                ray.shutdown()
            cluster.stop()
