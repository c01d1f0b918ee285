"""Crash and resume with a real SIGKILL, on SQLite and on PostgreSQL.

`plait exec PLAN --store URL --run-id R --json` runs examples/chains.py's plan (5 chains of 6
sleeping steps with joins across chains, then one fan-in: 31 tasks) as a subprocess and is
killed with SIGKILL at a few points: one right after its first task starts, and a few at
times drawn by a seeded random from the span of an uninterrupted run. Then `plait resume R`
finishes it, and the test checks the durability contract:

- the resume exits 0 with every task done (none lost);
- no task the store had a "settle" record for at the kill ran again in the resume process;
- every task ran at least once overall;
- results and answer are those of an uninterrupted reference run.

No timing assertions: where a kill lands only changes which tasks are settled at the kill.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

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
SEED = 20261125
TIMED_POINTS = 3  # plus one kill right after the first task starts
TIMEOUT = 60.0


@dataclass
class Reference:
    results: dict[int, Any]
    answer: str
    first: float  # seconds from spawn to the first task's start
    end: float  # seconds from spawn to exit


def _env(log: Path) -> dict[str, str]:
    return {**os.environ, LOG_ENV: str(log)}


def _exec(plan: Path, url: str, run_id: str) -> list[str]:
    return [*PLAIT, "exec", str(plan), "--tools", str(TOOLS), "--store", url,
            "--run-id", run_id, "--json"]  # fmt: skip


def _logged(log: Path, run_id: str) -> bool:
    return bool(read_log(log, run_id))


def reference(plan: Path, url: str, tmp: Path) -> Reference:
    """An uninterrupted run: its results, and when its tasks started and it ended."""
    run_id = f"ref-{uuid.uuid4().hex[:8]}"
    log = tmp / f"{run_id}.log"
    start = time.perf_counter()
    proc = subprocess.Popen(
        _exec(plan, url, run_id), env=_env(log), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    first = None
    while proc.poll() is None:  # its JSON (~5 KB) fits the pipe: polling cannot block it
        if first is None and _logged(log, run_id):
            first = time.perf_counter() - start
        time.sleep(0.002)
    end = time.perf_counter() - start
    out, err = proc.communicate()
    assert proc.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["status"] == "done"
    return Reference(
        {t["id"]: t["result"] for t in result["tasks"]}, result["answer"], first or 0.0, end
    )


def settled_ids(url: str, run_id: str) -> set[int] | None:
    """Task ids with a "settle" record in the store; None if the run is not there at all."""
    store = plait.open_store(url)
    try:
        if store.get(run_id) is None:
            return None
        return {json.loads(r.data)["id"] for r in store.records(run_id) if r.kind == "settle"}
    finally:
        store.close()


@dataclass
class Point:
    at: float  # seconds after spawn
    settled: set[int]
    resume_pid: int
    resume_rc: int
    resume_err: str
    result: dict[str, Any] | None


def kill_and_resume(plan: Path, url: str, tmp: Path, run_id: str, at: float | None) -> Point | str:
    """Start exec, SIGKILL it at `at` s (None: as soon as a task starts), resume it.
    Returns why the point was skipped instead when there was nothing to resume."""
    log = tmp / f"{run_id}.log"
    start = time.perf_counter()
    proc = subprocess.Popen(
        _exec(plan, url, run_id), env=_env(log), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    if at is None:
        while proc.poll() is None and not _logged(log, run_id):
            time.sleep(0.001)
    else:
        time.sleep(max(0.0, at - (time.perf_counter() - start)))
    killed_at = time.perf_counter() - start
    proc.send_signal(signal.SIGKILL)  # harmless if it already exited: not reaped yet
    _, err = proc.communicate(timeout=TIMEOUT)
    if proc.returncode == 0:
        return "finished before the kill"
    assert proc.returncode == -signal.SIGKILL, err.decode()
    settled = settled_ids(url, run_id)
    if settled is None:  # killed before it created the run: nothing ran, nothing to resume
        assert not _logged(log, run_id), "tasks ran for a run the store does not have"
        return "killed before the run was created"
    resume = subprocess.Popen(
        [*PLAIT, "resume", run_id, "--tools", str(TOOLS), "--store", url, "--json"],
        env=_env(log), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = resume.communicate(timeout=TIMEOUT)
    result = json.loads(out) if resume.returncode == 0 else None
    return Point(killed_at, settled, resume.pid, resume.returncode, err.decode(), result)


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    return str(request.getfixturevalue("postgres_url"))


def test_sigkill_then_resume(store_url: str, tmp_path: Path) -> None:
    plan = tmp_path / "chains.plan"
    plan.write_text(plan_text())
    reference(plan, store_url, tmp_path)  # warm the page cache and .pyc files: a cold start
    ref = reference(plan, store_url, tmp_path)  # would stretch the span the kills are drawn from
    ids = set(ref.results)
    rng = random.Random(SEED)
    times: list[float | None] = [None]
    times += sorted(rng.uniform(ref.first, ref.end) for _ in range(TIMED_POINTS))
    prefix = uuid.uuid4().hex[:8]
    killed = 0
    for i, at in enumerate(times):
        run_id = f"kill-{prefix}-{i}"
        point = kill_and_resume(plan, store_url, tmp_path, run_id, at)
        if isinstance(point, str):
            print(f"point {i}: skipped, {point}")
            continue
        killed += 1
        where = f"point {i} (killed at {point.at:.3f}s, {len(point.settled)} settled)"
        print(where)
        assert point.resume_rc == 0, f"{where}: resume exited {point.resume_rc}: {point.resume_err}"
        result = point.result
        assert result is not None
        assert result["status"] == "done", f"{where}: {result['error']}"
        tasks = {t["id"]: t for t in result["tasks"]}
        lost = sorted(i for i in ids if tasks.get(i, {}).get("status") != "done")
        assert lost == [], f"{where}: tasks not done after resume: {lost}"
        runs = read_log(tmp_path / f"{run_id}.log", run_id)
        again = sorted(t for (pid, t) in runs if pid == point.resume_pid and t in point.settled)
        assert again == [], f"{where}: settled tasks ran again in the resume: {again}"
        executed = {t for (_, t) in runs}
        assert executed >= ids, f"{where}: tasks never executed: {sorted(ids - executed)}"
        assert {i: t["result"] for i, t in tasks.items()} == ref.results, where
        assert result["answer"] == ref.answer, where
        store = plait.open_store(store_url)
        try:
            info = store.get(run_id)
        finally:
            store.close()
        assert info is not None
        assert (info.state, info.tasks_done) == ("done", len(ids)), where
    assert killed >= 1, "every kill point came after its run had finished"
