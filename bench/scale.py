"""Per-task overhead: many trivial async tasks, plait against bare asyncio.

Task i calls `noop(i)`, or `noop(i, [$a, $b])` with references to earlier tasks. Four DAG
shapes (seeded), `--shape chain|fanout|web|layered|all`:

    chain    10 long chains: task i references task i-10
    fanout   one source, every other task references it (a 50k-wide fan-out)
    web      0-2 references to random earlier tasks: a realistic web of dependencies
    layered  layers of 100 tasks, each referencing 1-2 tasks of the layer before

1. Whole process, 50,000 tasks: `plait exec plan.txt --tools tools.py --json > /dev/null`
   as a subprocess, with its default SQLite run store and with `--store memory://`,
   against a subprocess running a bare-asyncio script over the same DAG (one asyncio task
   per node that awaits its inputs' tasks, then the same trivial coroutine). Both include
   interpreter start and reading their input; plait's time also includes parsing and
   validating the plan and building the --json result. Median of --repeat runs; the
   ratio is plait ÷ bare asyncio, per shape (targets: ≤ 5× SQLite, ≤ 4× memory://).
2. In one process (no interpreter start): `plait.aexecute` at 1k, 10k, 50k and 100k tasks,
   in µs per task, beside bare asyncio in the same process. Flat µs/task means the
   per-task cost does not grow with the size of the plan. On the web shape, or the one
   shape given.

    python bench/scale.py [--shape all] [--tasks 50000] [--repeat 3] [--sizes 1000,...]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import plait

TOOLS_PY = """\
import plait


@plait.tool
async def noop(x: int, inputs: list | None = None) -> int:
    return x
"""

# The baseline: the same DAG, the same trivial coroutine, no framework.
BARE_PY = """\
import asyncio
import json
import sys


async def noop(x, inputs=None):
    return x


async def node(i, deps, tasks):
    inputs = [await tasks[d] for d in deps]
    return await noop(i, inputs or None)


async def main(path):
    dag = json.load(open(path))
    tasks = {}
    for i, deps in enumerate(dag, start=1):
        tasks[i] = asyncio.create_task(node(i, deps, tasks))
    results = await asyncio.gather(*tasks.values())
    assert len(results) == len(dag)


asyncio.run(main(sys.argv[1]))
"""


SHAPES = ("chain", "fanout", "web", "layered")


def make_dag(n: int, shape: str = "web", seed: int = 1) -> list[list[int]]:
    """deps[i-1] = the earlier task ids task i references."""
    rng = random.Random(seed)
    if shape == "chain":
        return [[i - 10] if i > 10 else [] for i in range(1, n + 1)]
    if shape == "fanout":
        return [[1] if i > 1 else [] for i in range(1, n + 1)]
    dag: list[list[int]] = [[]]
    for i in range(2, n + 1):
        if shape == "layered":
            layer = (i - 1) // 100
            lo = (layer - 1) * 100 + 1
            k = rng.randint(1, 2) if layer else 0
            dag.append(sorted(rng.sample(range(lo, lo + 100), k)))
        else:
            k = rng.choice((0, 1, 1, 2, 2)) if i > 2 else rng.randint(0, 1)
            dag.append(sorted(set(rng.sample(range(1, i), k))))
    return dag


def plan_text(dag: list[list[int]]) -> str:
    lines = []
    for i, deps in enumerate(dag, start=1):
        refs = f", [{', '.join(f'${d}' for d in deps)}]" if deps else ""
        lines.append(f"{i}. noop({i}{refs})")
    lines.append(f"{len(dag) + 1}. join()")
    return "\n".join(lines) + "\n"


@plait.tool
async def noop(x: int, inputs: list | None = None) -> int:
    return x


async def bare(dag: list[list[int]]) -> None:
    async def node(i: int, deps: list[int]) -> int:
        inputs = [await tasks[d] for d in deps]
        return await noop.fn(i, inputs or None)

    tasks: dict[int, asyncio.Task[int]] = {}
    for i, deps in enumerate(dag, start=1):
        tasks[i] = asyncio.create_task(node(i, deps))
    await asyncio.gather(*tasks.values())


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def whole_process(n: int, repeat: int, shapes: tuple[str, ...]) -> None:
    plait_exe = shutil.which("plait") or str(Path(sys.executable).with_name("plait"))
    print(f"whole process, {n:,} tasks, median of {repeat}; plait ÷ bare asyncio")
    head = ("shape", "SQLite s", "×", "memory s", "×", "bare s", "empty s")
    print("{:>8} {:>9} {:>6} {:>9} {:>6} {:>7} {:>8}".format(*head))
    for shape in shapes:
        s, m, b, e = _whole_process(plait_exe, make_dag(n, shape), repeat)
        print(f"{shape:>8} {s:9.3f} {s / b:6.2f} {m:9.3f} {m / b:6.2f} {b:7.3f} {e:8.3f}")
    print("  (targets: ≤ 5× with the default SQLite store, ≤ 4× with --store memory://)")


def _whole_process(
    plait_exe: str, dag: list[list[int]], repeat: int
) -> tuple[float, float, float, float]:
    with tempfile.TemporaryDirectory(prefix="plait-bench-") as tmp:
        d = Path(tmp)
        (d / "plan.txt").write_text(plan_text(dag))
        (d / "dag.json").write_text(json.dumps(dag))
        (d / "tools.py").write_text(TOOLS_PY)
        (d / "bare.py").write_text(BARE_PY)
        tools = str(d / "tools.py")
        ours_cmd = [plait_exe, "exec", str(d / "plan.txt"), "--tools", tools, "--json"]
        # The default: every event recorded in a SQLite run store (a fresh file each time).
        db = d / "runs.db"
        stored_cmd = [*ours_cmd, "--store", f"sqlite:///{db}"]
        memory_cmd = [*ours_cmd, "--store", "memory://"]
        bare_cmd = [sys.executable, str(d / "bare.py"), str(d / "dag.json")]
        empty_cmd = [sys.executable, "-c", "pass"]
        timed(memory_cmd)  # warm the page cache and .pyc files
        stored, memory, base, empty = [], [], [], []
        for _ in range(repeat):
            for f in d.glob("runs.db*"):
                f.unlink()
            stored.append(timed(stored_cmd))
            memory.append(timed(memory_cmd))
            base.append(timed(bare_cmd))
            empty.append(timed(empty_cmd))
    s, m, b, e = (statistics.median(x) for x in (stored, memory, base, empty))
    return s, m, b, e


async def in_process(sizes: list[int], repeat: int, shape: str) -> None:
    print(f"\nin one process, {shape} (aexecute, plan parsing included; no interpreter start)")
    print(f"{'tasks':>8} {'plait s':>8} {'µs/task':>8} {'bare s':>8} {'µs/task':>8} {'ratio':>6}")
    await plait.aexecute(plan_text(make_dag(1000)), tools=[noop])  # warm-up
    for n in sizes:
        dag = make_dag(n, shape)
        plan = plan_text(dag)
        ours, base = [], []
        for _ in range(repeat):
            gc.collect()
            start = time.perf_counter()
            result = await plait.aexecute(plan, tools=[noop])
            ours.append(time.perf_counter() - start)
            assert result.status == "done" and len(result.tasks) == n
            del result
            gc.collect()
            start = time.perf_counter()
            await bare(dag)
            base.append(time.perf_counter() - start)
        o, b = statistics.median(ours), statistics.median(base)
        print(f"{n:>8,} {o:>8.3f} {o / n * 1e6:>8.1f} {b:>8.3f} {b / n * 1e6:>8.1f} {o / b:>6.1f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=(*SHAPES, "all"), default="all")
    ap.add_argument("--tasks", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sizes", default="1000,10000,50000,100000")
    args = ap.parse_args()
    shapes = SHAPES if args.shape == "all" else (args.shape,)
    whole_process(args.tasks, args.repeat, shapes)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if sizes:
        shape = "web" if args.shape == "all" else args.shape
        asyncio.run(in_process(sizes, args.repeat, shape))
