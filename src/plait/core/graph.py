"""The task graph of one run: pure state and transitions, no I/O and no event loop.

State, per node (`Node`):

    task        the Task (arguments bound, references intact)
    status      pending   waiting for `waiting` more inputs
                ready     inputs done, not yet started (the scheduler may hold it for a limit)
                running   started
                done      finished with `result`
                failed    the tool raised for good; `error` says why
                skipped   an input failed or was skipped, so it never ran
                cancelled cancelled by an edit, or an input was cancelled
    waiting     how many inputs are not done yet
    dependents  ids of nodes that reference this one

Graph-wide: `results` maps done ids to their values (what references resolve against) and
`open` counts nodes not yet settled, so "is the run idle?" is O(1).

Each transition returns the nodes whose status it changed beyond the one named, so the
scheduler can dispatch or report them. References may only point at nodes already in the
graph, so the graph is acyclic by construction. Every transition is O(degree): nothing here
scans the whole graph, which keeps the per-task cost flat as plans grow.
"""

from __future__ import annotations

from typing import Any

from .task import Task

PENDING, READY, RUNNING = "pending", "ready", "running"
DONE, FAILED, SKIPPED, CANCELLED = "done", "failed", "skipped", "cancelled"
SETTLED = frozenset({DONE, FAILED, SKIPPED, CANCELLED})


class Node:
    __slots__ = ("dependents", "error", "result", "status", "task", "waiting")

    def __init__(self, task: Task) -> None:
        self.task = task
        self.status = PENDING
        self.waiting = 0
        self.dependents: list[int] = []
        self.result: Any = None
        self.error: str | None = None

    def __repr__(self) -> str:
        return f"<Node {self.task.id} {self.task.tool} {self.status}>"


class GraphError(ValueError):
    """An edit the graph cannot take (duplicate id, unknown reference, wrong state)."""


class Graph:
    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        self.results: dict[int, Any] = {}
        self.open = 0

    def add(self, task: Task) -> Node:
        """Add a task. Its status is ready, pending, or already skipped/cancelled by an input."""
        if task.id in self.nodes:
            raise GraphError(f"task id {task.id} is already in the graph")
        for d in task.deps:
            if d not in self.nodes:
                raise GraphError(f"task {task.id} depends on unknown task {d}")
        node = self.nodes[task.id] = Node(task)
        self.open += 1
        waits = [self.nodes[d] for d in task.deps]
        for dep in waits:
            if dep.status in (FAILED, SKIPPED, CANCELLED):  # it never runs, nor waits
                status = CANCELLED if dep.status == CANCELLED else SKIPPED
                self._settle(node, status, f"input ${dep.task.id} {dep.status}")
                return node
        for dep in waits:
            if dep.status != DONE:
                dep.dependents.append(task.id)
                node.waiting += 1
        if node.waiting == 0:
            node.status = READY
        return node

    def start(self, task_id: int) -> Node:
        node = self.nodes[task_id]
        if node.status != READY:
            raise GraphError(f"task {task_id} is {node.status}, not ready")
        node.status = RUNNING
        return node

    def finish(self, task_id: int, result: Any) -> list[Node]:
        """Record a result; return the dependents it made ready."""
        node = self.nodes[task_id]
        if node.status in SETTLED:
            return []  # e.g. cancelled while its call was returning
        self._settle(node, DONE, None)
        node.result = result
        self.results[task_id] = result
        ready = []
        for d in node.dependents:
            dep = self.nodes[d]
            if dep.status == PENDING:
                dep.waiting -= 1
                if dep.waiting == 0:
                    dep.status = READY
                    ready.append(dep)
        return ready

    def fail(self, task_id: int, error: str) -> list[Node]:
        """Record a failure; return the dependents (transitively) now skipped."""
        node = self.nodes[task_id]
        if node.status in SETTLED:
            return []
        self._settle(node, FAILED, error)
        return self._propagate(node, SKIPPED, f"input ${task_id} failed")

    def cancel(self, task_id: int) -> list[Node]:
        """Cancel a task that has not settled and everything that depends on it.

        Returns every node cancelled, the named one first; empty if it had already settled.
        """
        node = self.nodes.get(task_id)
        if node is None:
            raise GraphError(f"no task {task_id} to cancel")
        if node.status in SETTLED:
            return []
        self._settle(node, CANCELLED, "cancelled")
        return [node, *self._propagate(node, CANCELLED, f"input ${task_id} cancelled")]

    def _propagate(self, root: Node, status: str, why: str) -> list[Node]:
        out = []
        stack = list(root.dependents)
        while stack:
            dep = self.nodes[stack.pop()]
            if dep.status in SETTLED:
                continue
            self._settle(dep, status, why)
            out.append(dep)
            stack.extend(dep.dependents)
        return out

    def _settle(self, node: Node, status: str, error: str | None) -> None:
        node.status = status
        node.error = error
        self.open -= 1
