"""Hostile checks of the redesign (issue 15): the fast paths against the general ones they
stand in for, and durable runs whose records must read back as they were written."""

from __future__ import annotations

from pathlib import Path

import plait
from plait.runs.runlog import Restored
from plait.stores import open_store


def test_a_result_too_large_to_read_back_fails_its_task_instead_of_breaking_the_run(
    tmp_path: Path,
) -> None:
    # An int of 5,000 digits encodes to JSON, but no decoder reads it back (Python's and
    # pydantic_core's stop at 4,300 digits): recorded as done, it made the run's log
    # unreadable, so `plait resume` and `plait show` ended in an internal error.
    @plait.tool
    def big() -> int:
        return 10**5000

    @plait.tool
    def small() -> int:
        return -(10**4298)  # 4,299 digits and a sign: still read back

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    result = plait.execute("1. big()\n2. small()\n", tools=[big, small], store=url, run_id="r")
    tasks = {t.id: t for t in result.tasks}
    assert tasks[1].status == "failed"
    assert "result cannot be stored" in (tasks[1].error or "")
    assert (tasks[2].status, tasks[2].result) == ("done", -(10**4298))
    store = open_store(url)
    try:
        restored = Restored(store.records("r"))  # raised ValueError before
    finally:
        store.close()
    assert restored.tasks[2][1] is not None and restored.tasks[2][1].result == -(10**4298)
