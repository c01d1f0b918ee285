"""Node loss on a real Ray cluster (after ElasWave and C4): SIGKILL every process of the
second node while its calls run. They are retried on the head, the run finishes with the
right results, and the run store shows each retry and why.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from plait import aexecute, open_store
from plait.backends.ray import RayBackend
from plait.core.tools import tool

pytestmark = pytest.mark.ray

CALLS = 8


@tool
def work(i: int, marks: str) -> list[Any]:
    """Mark where it runs, then work for a while: long enough to be caught by the kill."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    Path(marks, f"{i}-{node}-{os.getpid()}").touch()
    time.sleep(2.0)
    return [i, i * i]


async def test_calls_on_a_lost_node_are_retried_elsewhere(ray_driver: Any, tmp_path: Path):
    import ray

    cluster = ray_driver
    node_b = next(
        n["NodeID"] for n in ray.nodes() if n["Alive"] and "plait_node_b" in n["Resources"]
    )
    marks = tmp_path / "marks"
    marks.mkdir()
    plan = "".join(f'{i}. work({i}, "{marks}")\n' for i in range(1, CALLS + 1))
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    backend = RayBackend()
    try:
        run = asyncio.create_task(
            aexecute(plan, tools=[work], backend=backend, store=store, run_id="loss")
        )
        async with asyncio.timeout(60):
            while not any(node_b in p.name for p in marks.iterdir()):
                await asyncio.sleep(0.02)
        on_b = {p.name.split("-")[0] for p in marks.iterdir() if node_b in p.name}
        await asyncio.to_thread(cluster.kill_node)
        async with asyncio.timeout(120):
            result = await run
    finally:
        await backend.aclose()
        if cluster.node is None:
            await asyncio.to_thread(cluster.add_node)  # the rest of the session has two nodes

    assert result.status == "done", result.error
    assert {t.id: t.result for t in result.tasks} == {i: [i, i * i] for i in range(1, CALLS + 1)}
    # Every call that was on node B when it died ran again, and finished on the head.
    survivors = {p.name.split("-")[0] for p in marks.iterdir() if node_b not in p.name}
    assert on_b <= survivors
    opened = open_store(store)
    try:
        retries = [r for r in opened.records("loss") if r.kind == "retry"]
    finally:
        opened.close()
    retried = {json.loads(r.data)["id"]: json.loads(r.data)["error"] for r in retries}
    assert {int(i) for i in on_b} <= set(retried)
    assert all(error.startswith("worker lost: ") for error in retried.values()), retried
    # The task records say so too (what `plait show` prints).
    assert all(result.task(i).attempts > 1 for i in map(int, on_b))
