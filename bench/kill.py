"""Crash and resume: SIGKILL `plait exec` at random points, `plait resume`, check the contract.

The plan (examples/chains.py): 5 chains of 6 steps that sleep 20-80 ms each, some steps also
reading the neighbouring chain (joins across chains), one fan-in task at the end: 31 tasks,
each returning a value computed from its arguments alone. Every execution appends
"pid run_id task_id" to a log file, so each one is attributed to a process.

First an uninterrupted run (after a warm-up one) gives the reference results and the span of
a run (from spawn to the first task's start, and to exit). Then for each of --points kill
times drawn by a seeded random from that span: `plait exec ... --store URL --run-id R
--json` is started and SIGKILLed at that time (a point whose run finished first is reported
and skipped), the store is read for the tasks with a "settle" record, and `plait resume R
--json` finishes the run. Per point:

  settled   tasks with a settle record in the store at the kill
  ran again tasks the resume ran that the killed process had started but not settled
            (at-least-once: these may run twice)
  re-exec   tasks settled at the kill that the resume ran again       (must be 0)
  lost      tasks not done after the resume (or all, if it failed)    (must be 0)
  same      results and answer identical to the uninterrupted run

Exit status 1 if any point breaks the contract. Not a speed figure, so no ratio.

    python bench/kill.py [--points 20] [--seed 1] [--store sqlite:////tmp/x.db | postgresql://…]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import plait

TOOLS = Path(__file__).resolve().parent.parent / "examples" / "chains.py"


def _load_chains() -> ModuleType:
    """examples/chains.py, the plan and tools the kill harness runs."""
    spec = importlib.util.spec_from_file_location("plait_example_chains", TOOLS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_chains = _load_chains()
LOG_ENV, plan_text, read_log = _chains.LOG_ENV, _chains.plan_text, _chains.read_log
_SCRIPT = Path(sys.executable).with_name("plait")
PLAIT = (
    [str(_SCRIPT)]
    if _SCRIPT.is_file()
    else [sys.executable, "-c", "from plait.cli.main import main; main()"]
)
TIMEOUT = 120.0


def _env(log: Path) -> dict[str, str]:
    return {**os.environ, LOG_ENV: str(log)}


def _exec(plan: Path, url: str, run_id: str) -> list[str]:
    return [*PLAIT, "exec", str(plan), "--tools", str(TOOLS), "--store", url,
            "--run-id", run_id, "--json"]  # fmt: skip


def reference(plan: Path, url: str, tmp: Path) -> tuple[dict[int, Any], str, float, float]:
    """An uninterrupted run: results, answer, seconds to its first task, seconds to exit."""
    run_id = f"ref-{uuid.uuid4().hex[:8]}"
    log = tmp / f"{run_id}.log"
    start = time.perf_counter()
    proc = subprocess.Popen(
        _exec(plan, url, run_id), env=_env(log), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    first = None
    while proc.poll() is None:  # the JSON (~5 KB) fits the pipe: polling cannot block it
        if first is None and read_log(log, run_id):
            first = time.perf_counter() - start
        time.sleep(0.002)
    end = time.perf_counter() - start
    out, err = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"reference run failed ({proc.returncode}): {err.decode()}")
    result = json.loads(out)
    results = {t["id"]: t["result"] for t in result["tasks"]}
    return results, result["answer"], first or 0.0, end


def settled_ids(url: str, run_id: str) -> set[int] | None:
    store = plait.open_store(url)
    try:
        if store.get(run_id) is None:
            return None
        return {json.loads(r.data)["id"] for r in store.records(run_id) if r.kind == "settle"}
    finally:
        store.close()


def point(
    plan: Path, url: str, tmp: Path, run_id: str, at: float, ref: dict[int, Any], answer: str
) -> dict[str, Any]:
    log = tmp / f"{run_id}.log"
    start = time.perf_counter()
    proc = subprocess.Popen(
        _exec(plan, url, run_id), env=_env(log), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    time.sleep(max(0.0, at - (time.perf_counter() - start)))
    killed_at = time.perf_counter() - start
    proc.send_signal(signal.SIGKILL)  # harmless if it already exited: not reaped yet
    _, err = proc.communicate(timeout=TIMEOUT)
    row: dict[str, Any] = {"at": killed_at}
    if proc.returncode == 0:
        return {**row, "skipped": "finished before the kill"}
    if proc.returncode != -signal.SIGKILL:
        return {**row, "skipped": f"exec exited {proc.returncode}: {err.decode().strip()}"}
    settled = settled_ids(url, run_id)
    if settled is None:
        ran = bool(read_log(log, run_id))
        why = "killed before the run was created" + (" BUT TASKS RAN" if ran else "")
        return {**row, "skipped": why, "bad": ran}
    resume = subprocess.Popen(
        [*PLAIT, "resume", run_id, "--tools", str(TOOLS), "--store", url, "--json"],
        env=_env(log), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = resume.communicate(timeout=TIMEOUT)
    runs = read_log(log, run_id)
    by_resume = {t for (pid, t) in runs if pid == resume.pid}
    by_killed = {t for (pid, t) in runs if pid == proc.pid}
    row.update(
        settled=len(settled),
        again=len(by_resume & by_killed - settled),
        reexec=len(by_resume & settled),
        never=len(set(ref) - by_resume - by_killed),
    )
    if resume.returncode != 0:
        return {**row, "lost": len(ref), "same": False, "error": err.decode().strip()}
    result = json.loads(out)
    tasks = {t["id"]: t for t in result["tasks"]}
    row["lost"] = sum(1 for i in ref if tasks.get(i, {}).get("status") != "done")
    results = {i: t["result"] for i, t in tasks.items()}
    row["same"] = results == ref and result["answer"] == answer
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--store", default=None, help="store URL (default: a temp SQLite file)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="plait-kill-") as tmp_name:
        tmp = Path(tmp_name)
        url = args.store or f"sqlite:///{tmp / 'runs.db'}"
        plan = tmp / "chains.plan"
        plan.write_text(plan_text())
        reference(plan, url, tmp)  # warm the page cache and .pyc files
        ref, answer, first, end = reference(plan, url, tmp)
        rng = random.Random(args.seed)
        times = sorted(rng.uniform(first, end) for _ in range(args.points))
        shown = url.split("@")[-1] if url.startswith("postgres") else url
        print(f"store {shown}; {len(ref)} tasks; uninterrupted run: first task at {first:.3f} s,")
        print(f"exit at {end:.3f} s; {args.points} kill points (seed {args.seed}) in that span")
        print(f"{'#':>3} {'kill s':>7} {'settled':>8} {'ran again':>10} {'re-exec':>8} "
              f"{'lost':>5} {'same':>5}")  # fmt: skip
        prefix = uuid.uuid4().hex[:8]
        rows = []
        for i, at in enumerate(times, 1):
            row = point(plan, url, tmp, f"kill-{prefix}-{i}", at, ref, answer)
            rows.append(row)
            if "skipped" in row:
                print(f"{i:>3} {row['at']:>7.3f}  skipped: {row['skipped']}")
                continue
            same = "yes" if row["same"] else "NO"
            print(f"{i:>3} {row['at']:>7.3f} {row['settled']:>8} {row['again']:>10} "
                  f"{row['reexec']:>8} {row['lost']:>5} {same:>5}")  # fmt: skip
            if row.get("error"):
                print(f"      resume failed: {row['error']}")
            if row["never"]:
                print(f"      {row['never']} tasks never executed by either process")
    done = [r for r in rows if "skipped" not in r]
    reexec = sum(r["reexec"] for r in done)
    lost = sum(r["lost"] for r in done)
    same = sum(1 for r in done if r["same"])
    again = sum(r["again"] for r in done)
    bad = any(r.get("bad") for r in rows) or any(r["never"] for r in done)
    print(f"\ntotal: {len(done)} killed and resumed, {len(rows) - len(done)} skipped")
    print(f"  settled tasks re-executed {reexec} (must be 0), lost {lost} (must be 0)")
    print(f"  results identical {same}/{len(done)}")
    print(f"  unsettled tasks that ran again (at-least-once) {again}")
    return 1 if reexec or lost or same != len(done) or bad else 0


if __name__ == "__main__":
    sys.exit(main())
