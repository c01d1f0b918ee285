"""Store overhead: the 50,000-trivial-task plan of scale.py, recorded in memory:// vs SQLite.

Every state change of a durable run (task added, started, settled) becomes a record that a
writer thread group-commits every 50 ms. This measures what that costs on the plan where it
costs the most: scale.py's seeded DAG of trivial `noop` tasks (0-2 references each), whose
own work is nothing.

1. In one process: `plait.aexecute(plan, tools=[noop], store=URL)` with `memory://` against
   a fresh `sqlite:////tmp/…/N.db` file each rep (and `--postgres URL` if given), reps
   interleaved, median wall time of each (commit of the last batch included: `aexecute`
   returns after it). No store at all is shown for reference. Ratio sqlite ÷ memory,
   target ≤ 2×. Also the records written per run and the SQLite file's size.
2. Whole process, what a CLI user sees: `plait exec plan.txt --tools tools.py --json
   --store memory://` against `--store sqlite:///…` (a fresh file each rep), interleaved.

    python bench/store.py [--tasks 50000] [--repeat 3] [--postgres postgresql://…]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import plait
from scale import TOOLS_PY, make_dag, noop, plan_text


def _size(db: Path) -> int:
    return sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists())


async def timed_run(plan: str, n: int, store: str | None) -> float:
    gc.collect()
    start = time.perf_counter()
    result = await plait.aexecute(plan, tools=[noop], store=store, run_id=uuid.uuid4().hex[:12])
    elapsed = time.perf_counter() - start
    assert result.status == "done" and len(result.tasks) == n, result
    return elapsed


async def in_process(n: int, repeat: int, tmp: Path, postgres: str | None) -> None:
    plan = plan_text(make_dag(n))
    small = plan_text(make_dag(1000))
    names = ["none", "memory", "sqlite"] + (["postgres"] if postgres else [])
    for name in names:  # warm-up: imports, the store modules, the tables
        url = {"none": None, "memory": "memory://", "sqlite": f"sqlite:///{tmp / 'warm.db'}"}
        await plait.aexecute(small, tools=[noop], store=url.get(name, postgres))
    times: dict[str, list[float]] = {name: [] for name in names}
    db = tmp / "none.db"
    for rep in range(repeat):
        for name in names:
            if name == "sqlite":
                db = tmp / f"inproc-{rep}.db"
                url: str | None = f"sqlite:///{db}"
            else:
                url = {"none": None, "memory": "memory://"}.get(name, postgres)
            times[name].append(await timed_run(plan, n, url))
    print(f"in one process: aexecute, {n:,} trivial tasks, median of {repeat} (interleaved)")
    med = {name: statistics.median(ts) for name, ts in times.items()}
    for name in names:
        label = {"none": "no store"}.get(name, f"{name}://")
        print(f"  {label:<12} {med[name]:7.3f} s  {med[name] / n * 1e6:6.1f} µs/task  "
              f"(runs: {', '.join(f'{t:.2f}' for t in times[name])})")  # fmt: skip
    print(f"  sqlite ÷ memory  {med['sqlite'] / med['memory']:5.2f} ×   (target ≤ 2×)")
    print(f"  memory ÷ none    {med['memory'] / med['none']:5.2f} ×")
    if postgres:
        print(f"  postgres ÷ memory {med['postgres'] / med['memory']:4.2f} ×")
    store = plait.open_store(f"sqlite:///{db}")
    try:
        (run,) = store.runs(1)
        kinds = Counter(r.kind for r in store.records(run.id))
    finally:
        store.close()
    total = sum(kinds.values())
    detail = ", ".join(f"{k} {v:,}" for k, v in kinds.most_common())
    print(f"  records per run: {total:,} ({detail})")
    size = _size(db)
    print(f"  SQLite file after one run: {size / 1e6:.1f} MB ({size / total:.0f} B/record)")


def _timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def whole_process(n: int, repeat: int, tmp: Path, postgres: str | None) -> None:
    plait_exe = shutil.which("plait") or str(Path(sys.executable).with_name("plait"))
    (tmp / "plan.txt").write_text(plan_text(make_dag(n)))
    (tmp / "tools.py").write_text(TOOLS_PY)
    base = [plait_exe, "exec", str(tmp / "plan.txt"), "--tools", str(tmp / "tools.py"), "--json"]

    def cmd(name: str, tag: str) -> list[str]:
        url = {"memory": "memory://", "sqlite": f"sqlite:///{tmp / f'proc-{tag}.db'}"}
        return [*base, "--store", url.get(name, postgres or ""), "--run-id", uuid.uuid4().hex]

    names = ["memory", "sqlite"] + (["postgres"] if postgres else [])
    for name in names:
        _timed(cmd(name, "warm"))  # warm the page cache and .pyc files
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(repeat):
        for name in names:
            times[name].append(_timed(cmd(name, str(rep))))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"\nwhole process: plait exec --json, {n:,} tasks, median of {repeat} (interleaved)")
    for name in names:
        print(f"  --store {name + '://':<12} {med[name]:7.3f} s  "
              f"(runs: {', '.join(f'{t:.2f}' for t in times[name])})")  # fmt: skip
    print(f"  sqlite ÷ memory  {med['sqlite'] / med['memory']:5.2f} ×")
    if postgres:
        print(f"  postgres ÷ memory {med['postgres'] / med['memory']:4.2f} ×")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--postgres", default=None, metavar="URL", help="also measure this store")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="plait-store-") as tmp_name:
        tmp = Path(tmp_name)
        asyncio.run(in_process(args.tasks, args.repeat, tmp, args.postgres))
        whole_process(args.tasks, args.repeat, tmp, args.postgres)
