"""Attacks on the ids live edits take (serve/app.py `EditIds`, `add_task`; agent/loop.py
`_edits_again`): edits racing for a run's first reading of its ids, an edit that takes the
highest id there is, and a resumed run whose edit reads an edit of a higher id."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from tests.test_live_edit_ids import (
    GATE,
    HOLD,
    WAIT,
    Held,
    LiveServer,
    _events_until,
    _finished,
    _tasks,
    add,
    echo,
    gate,
    store_url,  # noqa: F401  (the fixture)
)

import plait
from plait.agent.loop import PLANNER_IDS, Agent
from plait.errors import PlanError

pytest.importorskip("uvicorn")
from plait.serve import app as serve_app
from plait.serve.app import EditIds

TOP = 10**18 - 1  # the highest id a task may have: 18 digits


def test_edits_racing_for_a_run_s_first_ids_read_them_once_and_take_one_each(
    store_url: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The old `edit_ids` cached a run's EditIds only once read, so each edit arriving
    while the first read them read them again, in a thread of its own: a burst of edits to
    a 100,000-task plan run parsed the plan and read its log once per edit, at once. Here
    the first reading waits until every edit's body is in; the old code then read 4 times."""
    n = 4
    bodies = [0]
    read = threading.Event()  # every edit's body is in
    readings: list[str] = []
    json_body, logged = serve_app._json_body, serve_app.logged_task_ids

    async def counted_body(request: Any) -> Any:
        body = await json_body(request)
        bodies[0] += 1
        if bodies[0] == n:
            read.set()
        return body

    def held_log(store: Any, run_id: str) -> set[int]:
        readings.append(run_id)
        assert read.wait(WAIT), "not every edit came"
        return logged(store, run_id)  # type: ignore[no-any-return]

    monkeypatch.setattr(serve_app, "_json_body", counted_body)
    monkeypatch.setattr(serve_app, "logged_task_ids", held_log)
    plan = "1. add(1, 2)\n2. gate($1)\n9. echo('nine')"
    with LiveServer(store_url, Held()) as c:
        run_id = c.post("/v1/runs", json={"plan": plan}).json()["run_id"]
        _events_until(c, run_id, "task_started", lambda d: d["id"] == 2)
        replies: list[httpx.Response] = []

        def edit(k: int) -> None:
            with httpx.Client(base_url=c.base_url, timeout=WAIT) as own:
                body = {"tool": "echo", "args": [f"edit {k} saw $1"]}
                replies.append(own.post(f"/v1/runs/{run_id}/tasks", json=body))

        threads = [threading.Thread(target=edit, args=(k,)) for k in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        GATE.set()
        run = _finished(c, run_id)
    assert [r.status_code for r in replies] == [201] * n, [r.text for r in replies]
    assert sorted(r.json()["task_id"] for r in replies) == [10, 11, 12, 13]
    assert readings == [run_id]  # one reading for all four
    assert run["status"] == "done" and len(run["tasks"]) == 3 + n


def test_an_edit_after_one_with_the_highest_id_takes_a_free_id_below_it() -> None:
    """The old next id was the highest + 1: after an edit that gave 999…9 (18 digits), every
    edit without an id was refused for an id 'needs 0 to 18 digits' it never gave."""
    ids = EditIds(PLANNER_IDS, "the planner's", {1, PLANNER_IDS + 1})
    assert ids.next({1, 2, TOP}) == PLANNER_IDS + 2
    assert ids.next({1, 2, PLANNER_IDS + 2, TOP}) == PLANNER_IDS + 3
    assert EditIds(9, "the plan's", set()).next({1, 9, 10, TOP}) == 11


def test_a_server_s_edit_after_the_highest_id_is_still_added(
    store_url: str,  # noqa: F811
) -> None:
    plan = "1. add(1, 2)\n2. gate($1)"
    with LiveServer(store_url, Held()) as c:
        run_id = c.post("/v1/runs", json={"plan": plan}).json()["run_id"]
        _events_until(c, run_id, "task_started", lambda d: d["id"] == 2)
        edit = f"/v1/runs/{run_id}/tasks"
        top = c.post(edit, json={"id": TOP, "tool": "echo", "args": ["top"]})
        after = c.post(edit, json={"tool": "echo", "args": ["after $1"]})
        GATE.set()
        run = _finished(c, run_id)
    assert top.status_code == 201, top.text
    assert after.status_code == 201 and after.json()["task_id"] == 3, after.text
    assert run["status"] == "done"
    assert _tasks(run) == {
        1: ("done", 3),
        2: ("done", 3),
        3: ("done", "after 3"),
        TOP: ("done", "top"),
    }


class Graph:
    """The scheduler `_edits_again` sees: its graph's nodes, and `add` (refusing `refuse`)."""

    def __init__(self, tasks: list[plait.Task], refuse: int | None = None) -> None:
        self.graph = SimpleNamespace(nodes={t.id: t for t in tasks})
        self.refuse = refuse
        self.added: list[int] = []

    def add(self, task: plait.Task) -> None:
        if task.id == self.refuse:
            raise PlanError(f"task {task.id} refused")
        self.graph.nodes[task.id] = task
        self.added.append(task.id)


def _defined() -> dict[int, plait.Task]:
    """The planner's task 1 and two edits: A (id 2,000,000, reading $1), then B (id
    1,500,000: given by its user, above the planner's range) reading A."""
    plan = {
        "tasks": [
            {"id": 1, "tool": "add", "args": [1, 2]},
            {"id": 2_000_000, "tool": "echo", "args": ["A saw $1"]},
            {"id": 1_500_000, "tool": "echo", "args": ["B saw $2000000"]},
        ]
    }
    tools = plait.Tools([add, echo, gate])
    return {t.id: t for t in plait.parse_plan(json.dumps(plan), tools=tools)}


def test_a_resumed_edit_reading_an_edit_of_a_higher_id_is_put_back() -> None:
    """The old `_edits_again` went once through the edits in id order: B (1,500,000) came
    before the A it reads was back, and was left out of the resumed graph for good."""
    defined = _defined()
    scheduler = Graph([defined[1]])
    Agent._edits_again(SimpleNamespace(scheduler=scheduler, defined=defined))  # type: ignore[arg-type]
    assert scheduler.added == [2_000_000, 1_500_000]


def test_a_resumed_edit_its_tool_refuses_is_tried_once() -> None:
    defined = _defined()
    scheduler = Graph([defined[1]], refuse=2_000_000)
    Agent._edits_again(SimpleNamespace(scheduler=scheduler, defined=defined))  # type: ignore[arg-type]
    assert scheduler.added == []  # B reads the refused A: it stays in the log only


def test_an_edit_may_not_take_id_0_which_a_resume_would_drop(
    store_url: str,  # noqa: F811
    tmp_path: Any,
) -> None:
    """Id 0 is no planner's (it numbers from 1) and no edit's (above PLANNER_IDS): the old
    code let an edit take it, and a resume, putting back only ids above PLANNER_IDS, left
    the edit out of the resumed graph and result (the stored run kept it: two answers to
    what the run holds). Now it is refused, in one line."""
    joiner = tmp_path / "joiner.json"
    joiner.write_text(json.dumps(["Action: Finish(3)"]))
    model = Held(f"1. add(1, 2)\n{HOLD}2. gate($1)\n3. join()\n")
    model.name = f"replay:{joiner}"
    with LiveServer(store_url, model) as c:
        run_id = c.post("/v1/runs", json={"question": "1 + 2?", "max_replans": 0}).json()["run_id"]
        edit = f"/v1/runs/{run_id}/tasks"
        zero = model.hold_then(
            c, run_id, 1, lambda: c.post(edit, json={"id": 0, "tool": "echo", "args": ["0 saw $1"]})
        )
        _events_until(c, run_id, "task_started", lambda d: d["id"] == 2)
    with LiveServer(store_url, model, resume=True) as c:
        _events_until(c, run_id, "task_started", lambda d: d["id"] == 2, nth=2)  # resumed
        GATE.set()
        resumed = _events_until(c, run_id, "run_finished")["result"]
        run = _finished(c, run_id)
    assert zero.status_code == 409, zero.text
    assert zero.json()["error"] == (
        f'task id 0 is no edit\'s to take: leave "id" out, or give one above {PLANNER_IDS}'
    )
    for ended in (resumed, run):  # the old resumed session's result had no task 0, the store's had
        assert ended["status"] == "done" and _tasks(ended) == {1: ("done", 3), 2: ("done", 3)}
