"""The task graph's pure state transitions (plait.core.graph): no event loop involved."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.core.graph import (
    CANCELLED,
    DONE,
    FAILED,
    PENDING,
    READY,
    RUNNING,
    SETTLED,
    SKIPPED,
    Graph,
    GraphError,
)
from plait.core.task import Task


def t(task_id: int, *deps: int) -> Task:
    return Task(task_id, "tool", deps=frozenset(deps))


def statuses(g: Graph) -> dict[int, str]:
    return {i: n.status for i, n in g.nodes.items()}


def diamond() -> Graph:
    """1 -> 2, 1 -> 3, (2, 3) -> 4, and 5 on its own."""
    g = Graph()
    for task in (t(1), t(2, 1), t(3, 1), t(4, 2, 3), t(5)):
        g.add(task)
    return g


def test_add_ready_and_pending():
    g = diamond()
    assert statuses(g) == {1: READY, 2: PENDING, 3: PENDING, 4: PENDING, 5: READY}
    assert g.nodes[4].waiting == 2
    assert g.open == 5
    assert len(g.nodes) == 5 and 4 in g.nodes and 6 not in g.nodes


def test_finish_makes_dependents_ready():
    g = diamond()
    g.start(1)
    assert g.nodes[1].status == RUNNING
    ready = g.finish(1, "one")
    assert sorted(n.task.id for n in ready) == [2, 3]
    assert g.results == {1: "one"}
    assert g.nodes[1].result == "one"
    g.start(2)
    assert g.finish(2, 2) == []  # 4 still waits for 3
    assert g.nodes[4].status == PENDING and g.nodes[4].waiting == 1
    g.start(3)
    assert [n.task.id for n in g.finish(3, 3)] == [4]
    assert g.nodes[4].status == READY
    assert g.open == 2  # 4 and 5


def test_start_needs_ready():
    g = diamond()
    with pytest.raises(GraphError, match="not ready"):
        g.start(2)
    g.start(1)
    with pytest.raises(GraphError, match="not ready"):
        g.start(1)


def test_fail_skips_transitive_dependents():
    g = diamond()
    g.start(1)
    skipped = g.fail(1, "boom")
    assert sorted(n.task.id for n in skipped) == [2, 3, 4]
    assert statuses(g) == {1: FAILED, 2: SKIPPED, 3: SKIPPED, 4: SKIPPED, 5: READY}
    assert g.nodes[1].error == "boom"
    assert g.nodes[4].error is not None and "failed" in g.nodes[2].error
    assert g.open == 1
    assert g.results == {}


def test_fail_of_one_branch_skips_the_join_only():
    g = diamond()
    g.start(1)
    g.finish(1, 1)
    g.start(2)
    g.start(3)
    assert [n.task.id for n in g.fail(2, "x")] == [4]
    assert g.nodes[3].status == RUNNING
    assert g.finish(3, 3) == []  # 4 was skipped: it must not become ready again
    assert g.nodes[4].status == SKIPPED
    assert g.open == 1  # 5


def test_cancel_cancels_transitive_dependents():
    g = diamond()
    cancelled = g.cancel(1)
    assert cancelled[0].task.id == 1
    assert sorted(n.task.id for n in cancelled) == [1, 2, 3, 4]
    assert statuses(g) == {1: CANCELLED, 2: CANCELLED, 3: CANCELLED, 4: CANCELLED, 5: READY}
    assert g.open == 1
    assert g.cancel(1) == []  # already settled
    assert g.finish(1, "late") == []  # a result arriving after the cancel is dropped
    assert 1 not in g.results


def test_cancel_a_middle_task():
    g = diamond()
    g.start(1)
    g.finish(1, 1)
    assert sorted(n.task.id for n in g.cancel(3)) == [3, 4]
    assert g.nodes[2].status == READY


def test_cancel_unknown():
    with pytest.raises(GraphError, match="no task 9"):
        Graph().cancel(9)


def test_adding_a_task_whose_input_failed_is_skipped_at_once():
    g = diamond()
    g.start(1)
    g.fail(1, "boom")
    node = g.add(t(6, 5, 2))
    assert node.status == SKIPPED
    assert "$2" in node.error
    assert g.add(t(7, 6)).status == SKIPPED  # an input that was skipped
    g.cancel(5)
    assert g.add(t(8, 5)).status == CANCELLED
    assert g.open == 0


def test_adding_after_inputs_finished_is_ready_at_once():
    g = Graph()
    g.add(t(1))
    g.start(1)
    g.finish(1, "x")
    g.add(t(2))
    node = g.add(t(3, 1, 2))
    assert node.status == PENDING and node.waiting == 1
    assert g.add(t(4, 1)).status == READY


def test_duplicate_id_and_unknown_dependency():
    g = diamond()
    with pytest.raises(GraphError, match="already in the graph"):
        g.add(t(1))
    with pytest.raises(GraphError, match="unknown task 9"):
        g.add(t(6, 1, 9))
    assert 6 not in g.nodes and g.open == 5  # a rejected add changes nothing
    assert g.nodes[1].dependents == [2, 3]


@st.composite
def dags(draw):
    n = draw(st.integers(min_value=1, max_value=25))
    deps = [
        frozenset(draw(st.sets(st.integers(min_value=1, max_value=i - 1), max_size=3)))
        if i > 1
        else frozenset()
        for i in range(1, n + 1)
    ]
    return deps


@settings(max_examples=300, deadline=None)
@given(dags(), st.data())
def test_random_runs_settle_consistently(deps, data):
    g = Graph()
    added = 0
    # Tasks are added in order, interleaved with progress (a plan streaming in).
    while True:
        can_add = added < len(deps)
        ready = [i for i, n in g.nodes.items() if n.status == READY]
        running = [i for i, n in g.nodes.items() if n.status == RUNNING]
        unsettled = [i for i, n in g.nodes.items() if n.status not in SETTLED]
        moves = (["add"] if can_add else []) + (["start"] if ready else [])
        moves += ["finish", "fail"] if running else []
        moves += ["cancel"] if unsettled else []
        if not moves:
            break
        move = data.draw(st.sampled_from(moves))
        if move == "add":
            added += 1
            g.add(Task(added, "tool", deps=deps[added - 1]))
        elif move == "start":
            g.start(data.draw(st.sampled_from(ready)))
        elif move == "finish":
            i = data.draw(st.sampled_from(running))
            g.finish(i, i * 10)
        elif move == "fail":
            g.fail(data.draw(st.sampled_from(running)), "boom")
        else:
            g.cancel(data.draw(st.sampled_from(unsettled)))
        assert g.open == sum(n.status not in SETTLED for n in g.nodes.values())

    assert g.open == 0
    assert len(g.nodes) == len(deps)
    for i, node in g.nodes.items():
        task_deps = [g.nodes[d] for d in node.task.deps]
        if node.status == DONE:
            assert all(d.status == DONE for d in task_deps)
            assert g.results[i] == i * 10
        else:
            assert i not in g.results
        if node.status == SKIPPED:
            assert any(d.status in (FAILED, SKIPPED) for d in task_deps)
        if node.status == FAILED:
            assert node.error == "boom"
        assert node.status in SETTLED
