"""A live edit and the planner never fight over ids (serve/app.py `add_task`, agent/loop.py
`PLANNER_IDS`): a task a user adds while the planner streams takes an id above the planner's
range, so the planner's next line is not refused as a duplicate and the run does not replan;
in a replan and after a resume too. A written plan's edits take ids above the plan's.

The server tests run a real `plait serve` app under uvicorn on 127.0.0.1 (in a thread of
this process, so the model can be a scripted one), whose planner is held mid-plan by a
handshake: the model says when it has handed over its first lines, and waits for the test
to let it go.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import plait
from plait.llm.base import Delta, Request

uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

from plait.serve import bind  # noqa: E402
from plait.serve.app import build_app  # noqa: E402
from plait.serve.metrics import Metrics  # noqa: E402
from plait.serve.runs import RunManager  # noqa: E402

WAIT = 60.0
HOLD = "<HOLD>"  # where a scripted reply stops until the test releases it
EDITS = 1_000_000  # agent/loop.py PLANNER_IDS: a live edit's id is above it


@plait.tool
async def add(a: int, b: int) -> int:
    """a + b."""
    return a + b


@plait.tool
async def echo(text: str) -> str:
    """The text back."""
    ECHOED.append(text)
    return text


@plait.tool
async def gate(x: int) -> int:
    """x, once the test opens the gate."""
    await _until(GATE)
    return x


ECHOED: list[str] = []  # what echo was asked to say, every run of it
GATE = threading.Event()


async def _until(event: threading.Event) -> None:
    """Until the test sets `event` (at most WAIT seconds), without holding a thread: a run
    cancelled while it waits leaves nothing behind for the server's loop to wait for."""
    for _ in range(int(WAIT / 0.005)):
        if event.is_set():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the test never let it go on")


class Held:
    """A model that streams its replies line by line, in call order; at each `HOLD` in a
    reply it says so (`held`) and waits until the test lets it go on (`release`)."""

    name = "held"
    supports_json_schema = False

    def __init__(self, *replies: str) -> None:
        self.replies = list(replies)
        self.requests: list[Request] = []
        self.held = threading.Event()
        self.release = threading.Event()

    async def stream(self, request: Request) -> AsyncIterator[Delta]:
        self.requests.append(request)
        reply = self.replies.pop(0)
        for i, part in enumerate(reply.split(HOLD)):
            if i:  # past a HOLD: what came before it has been read
                self.held.set()
                await _until(self.release)
                self.release.clear()
            for line in part.splitlines(keepends=True):
                yield Delta(line)

    def hold_then(self, c: httpx.Client, run_id: str, last: int, edit: Any) -> Any:
        """Once the model is held and the run has added task `last` (the last before the
        hold: the model's client may read ahead of the planner), do `edit()`, then let the
        model go on; edit()'s value."""
        assert self.held.wait(WAIT), "the planner never reached its hold"
        self.held.clear()
        try:
            _events_until(c, run_id, "task_added", lambda data: data["task"]["id"] == last)
            return edit()
        finally:
            self.release.set()


class LiveServer:
    """`plait serve`'s app under uvicorn on 127.0.0.1, on its own loop in a thread."""

    def __init__(self, store_url: str, model: Held, resume: bool = False) -> None:
        self.store = plait.open_store(store_url)
        tools = plait.Tools([add, echo, gate])
        manager = RunManager(self.store, tools, model, Metrics())  # type: ignore[arg-type]
        app = build_app(manager, None, resume_on_start=resume)
        self.sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=3
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})

    def __enter__(self) -> httpx.Client:
        self.thread.start()
        self.client = httpx.Client(base_url=self.url, timeout=WAIT)
        for _ in range(int(WAIT * 20)):
            if self.server.started:
                return self.client
            if not self.thread.is_alive():
                break
            threading.Event().wait(0.05)
        raise AssertionError("the server did not start")

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(WAIT)
        self.sock.close()
        self.store.close()


@pytest.fixture
def store_url(tmp_path: Path) -> Iterator[str]:
    GATE.clear()
    ECHOED.clear()
    yield f"sqlite:///{tmp_path / 'runs.db'}"
    GATE.set()  # a gate a failed test left shut stops no one


def _events_until(
    c: httpx.Client, run_id: str, name: str, check: Any = None, nth: int = 1
) -> dict[str, Any]:
    """Read the run's event stream until the `nth` event `name` whose data passes `check`;
    its data."""
    with c.stream("GET", f"/v1/runs/{run_id}/events") as response:
        assert response.status_code == 200
        event = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == name:
                data = json.loads(line[6:])
                if check is None or check(data):
                    nth -= 1
                    if not nth:
                        return data  # type: ignore[no-any-return]
    raise AssertionError(f"run {run_id} ended with no {name} event as looked for")


def _finished(c: httpx.Client, run_id: str) -> dict[str, Any]:
    """The run's result once it has ended (its event stream read to run_finished)."""
    _events_until(c, run_id, "run_finished")
    run = c.get(f"/v1/runs/{run_id}").json()
    assert run["status"] != "running", run
    return run  # type: ignore[no-any-return]


def _tasks(run: dict[str, Any]) -> dict[int, Any]:
    return {t["id"]: (t["status"], t["result"]) for t in run["tasks"]}


def test_a_task_added_while_the_planner_writes_takes_no_id_of_the_planner(
    store_url: str,
) -> None:
    """The old code gave the edit id 2, the planner's next: its `2.` line was refused as a
    duplicate and the run replanned (and here, out of replies, failed)."""
    model = Held(
        f"1. add(1, 2)\n{HOLD}2. add($1, 10)\n3. join()\n",
        "Thought: task 2 has it.\nAction: Finish(13)",
    )
    with LiveServer(store_url, model) as c:
        start = c.post("/v1/runs", json={"question": "What is 1 + 2 + 10?", "max_replans": 0})
        run_id = start.json()["run_id"]
        added = model.hold_then(
            c,
            run_id,
            1,
            lambda: c.post(f"/v1/runs/{run_id}/tasks", json={"tool": "echo", "args": ["saw $1"]}),
        )
        assert added.status_code == 201, added.text
        assert added.json()["task_id"] == EDITS + 1
        run = _finished(c, run_id)
    assert run["status"] == "done" and run["answer"] == "13", run
    assert _tasks(run) == {1: ("done", 3), 2: ("done", 13), EDITS + 1: ("done", "saw 3")}
    assert len(model.requests) == 2  # the plan and the join: no replan


def test_edits_during_a_plan_and_its_replan_leave_the_replan_its_own_ids(
    store_url: str,
) -> None:
    """The replan numbers on from the planner's last id, not from the edit's, and an edit
    made while the replan streams takes no id the replan writes (the old code gave the
    first edit id 2, so the replan had to start at 3: its `2.` was refused)."""
    model = Held(
        f"1. add(1, 2)\n{HOLD}2. join()\n",
        "Action: Replan(add ten to it)",
        f"2. add($1, 10)\n{HOLD}3. echo('total $2')\n4. join()\n",
        "Action: Finish(total 13)",
    )
    with LiveServer(store_url, model) as c:
        start = c.post("/v1/runs", json={"question": "What is 1 + 2 + 10?", "max_replans": 1})
        run_id = start.json()["run_id"]
        edit = f"/v1/runs/{run_id}/tasks"
        first = model.hold_then(
            c, run_id, 1, lambda: c.post(edit, json={"tool": "add", "args": ["$1", 100]})
        )
        assert first.status_code == 201 and first.json()["task_id"] == EDITS + 1, first.text
        second = model.hold_then(
            c,
            run_id,
            2,
            lambda: c.post(edit, json={"tool": "echo", "args": ["$2 and ${1000001}"]}),
        )
        assert second.status_code == 201 and second.json()["task_id"] == EDITS + 2, second.text
        run = _finished(c, run_id)
    assert run["status"] == "done" and run["answer"] == "total 13", run
    assert _tasks(run) == {
        1: ("done", 3),
        2: ("done", 13),
        3: ("done", "total 13"),
        EDITS + 1: ("done", 103),
        EDITS + 2: ("done", "13 and 103"),
    }
    assert len(model.requests) == 4  # plan, join, replan, join: no second replan
    assert "numbered from 2." in model.requests[2].messages[-1]["content"]


def test_an_edit_giving_an_id_that_clashes_is_refused_in_one_line(store_url: str) -> None:
    """An id already in the graph is a 400; one the planner may still write (the old code
    took it, and the planner's line was then refused) is a 409 saying which ids to give."""
    model = Held(f"1. add(1, 2)\n{HOLD}2. add($1, 10)\n3. join()\n", "Action: Finish(13)")
    with LiveServer(store_url, model) as c:
        start = c.post("/v1/runs", json={"question": "What is 1 + 2 + 10?", "max_replans": 0})
        run_id = start.json()["run_id"]
        edit = f"/v1/runs/{run_id}/tasks"

        def edits() -> list[httpx.Response]:
            return [
                c.post(edit, json={"id": 1, "tool": "echo", "args": ["a"]}),
                c.post(edit, json={"id": 2, "tool": "echo", "args": ["b"]}),
                c.post(edit, json={"id": EDITS + 5, "tool": "echo", "args": ["c $1"]}),
                c.post(edit, json={"id": EDITS + 5, "tool": "echo", "args": ["d"]}),
            ]

        taken, planners, own, twice = model.hold_then(c, run_id, 1, edits)
        run = _finished(c, run_id)
    assert taken.status_code == 400
    assert taken.json()["error"] == f"task id 1 is already in run {run_id}'s graph"
    assert planners.status_code == 409
    assert planners.json()["error"] == (
        f'task id 2 is the planner\'s to give (ids 1 to {EDITS}): leave "id" out, '
        f"or give one above {EDITS}"
    )
    assert own.status_code == 201 and own.json()["task_id"] == EDITS + 5, own.text
    assert twice.status_code == 400 and str(EDITS + 5) in twice.json()["error"]
    assert run["status"] == "done" and run["answer"] == "13", run
    assert _tasks(run) == {1: ("done", 3), 2: ("done", 13), EDITS + 5: ("done", "c 3")}


def test_a_resumed_question_run_keeps_its_edits_and_their_ids(
    store_url: str, tmp_path: Path
) -> None:
    """A run edited while its planner wrote, stopped (the server went down) and resumed by
    the next server: the planner's tasks come back under their own ids, the edit under its
    own (restored, not run again), and an edit made in the resumed session takes a new id."""
    joiner = tmp_path / "joiner.json"
    joiner.write_text(json.dumps(["Action: Finish(3, seen)"]))
    model = Held(f"1. add(1, 2)\n{HOLD}2. gate($1)\n3. join()\n")
    model.name = f"replay:{joiner}"  # what the run records, and so what resumes it
    with LiveServer(store_url, model) as c:
        start = c.post("/v1/runs", json={"question": "What is 1 + 2?", "max_replans": 0})
        run_id = start.json()["run_id"]
        edit = f"/v1/runs/{run_id}/tasks"
        first = model.hold_then(
            c, run_id, 1, lambda: c.post(edit, json={"tool": "echo", "args": ["saw $1"]})
        )
        assert first.status_code == 201 and first.json()["task_id"] == EDITS + 1, first.text
        _events_until(c, run_id, "task_finished", lambda d: d["id"] == EDITS + 1)
        _events_until(c, run_id, "task_started", lambda d: d["id"] == 2)
    # The server stopped with the gate shut: the run is left running, to resume.
    with LiveServer(store_url, model, resume=True) as c:
        _events_until(c, run_id, "task_started", lambda d: d["id"] == 2, nth=2)  # resumed
        again = c.post(edit, json={"id": EDITS + 1, "tool": "echo", "args": ["x"]})
        # Refused whether the resumed graph holds the edit again yet (400) or only its log (409).
        assert again.status_code in (400, 409), again.text
        assert str(EDITS + 1) in again.json()["error"]
        second = c.post(edit, json={"tool": "echo", "args": ["then $1"]})
        assert second.status_code == 201 and second.json()["task_id"] == EDITS + 2, second.text
        GATE.set()
        resumed = _events_until(c, run_id, "run_finished")["result"]  # the first stopped unsaid
        stored = _finished(c, run_id)
    for run in (resumed, stored):
        assert run["status"] == "done" and run["answer"] == "3, seen", run
        assert _tasks(run) == {
            1: ("done", 3),
            2: ("done", 3),
            EDITS + 1: ("done", "saw 3"),
            EDITS + 2: ("done", "then 3"),
        }
    assert ECHOED == ["saw 3", "then 3"]  # the first edit was restored, not run again
    assert len(model.requests) == 1  # the plan was asked once; the resume replayed it


def test_a_written_plan_s_edits_take_ids_above_the_plan_s_highest() -> None:
    """A big written plan is added 32 tasks at a time (execute_plan), so an edit can come
    while the plan's later ids are not in the graph yet: the old max(graph)+1 took the id
    of the plan's next task, whose add then failed the run."""
    from plait.agent.loop import PLANNER_IDS, edit_floor
    from plait.serve.app import EditIds

    tools = plait.Tools([add, echo, gate])
    plan = "\n".join(f"{i}. add({i}, 1)" for i in range(1, 41))
    assert edit_floor(plan, tools) == 40 and edit_floor(None, tools) == PLANNER_IDS
    written = EditIds(40, "the plan's", set())
    assert written.next(range(1, 33)) == 41  # 32 of its 40 tasks added so far
    assert written.next([*range(1, 41), 41]) == 42
    refused = written.refused(35, range(1, 33))
    assert (
        refused
        == 'task id 35 is the plan\'s to give (ids 1 to 40): leave "id" out, or give one above 40'
    )
    assert written.refused(41, range(1, 33)) is None
    resumed = EditIds(PLANNER_IDS, "the planner's", {1, 2, EDITS + 1})
    assert resumed.next({1}) == EDITS + 2  # an earlier session's edit, not back in the graph yet
    assert "earlier session" in (resumed.refused(EDITS + 1, {1}) or "")


def test_an_edit_of_a_written_plan_run_keeps_clear_of_the_plan_s_ids(store_url: str) -> None:
    plan = '1. add(1, 2)\n2. gate($1)\n9. echo("nine")'
    with LiveServer(store_url, Held()) as c:
        run_id = c.post("/v1/runs", json={"plan": plan}).json()["run_id"]
        _events_until(c, run_id, "task_started", lambda d: d["id"] == 2)
        edit = f"/v1/runs/{run_id}/tasks"
        inside = c.post(edit, json={"id": 5, "tool": "echo", "args": ["five"]})
        auto = c.post(edit, json={"tool": "echo", "args": ["after $1"]})
        given = c.post(edit, json={"id": 12, "tool": "add", "args": ["$2", 1]})
        GATE.set()
        run = _finished(c, run_id)
    assert inside.status_code == 409 and "the plan's to give (ids 1 to 9)" in inside.text
    assert auto.status_code == 201 and auto.json()["task_id"] == 10, auto.text
    assert given.status_code == 201 and given.json()["task_id"] == 12, given.text
    assert run["status"] == "done", run
    assert _tasks(run) == {
        1: ("done", 3),
        2: ("done", 3),
        9: ("done", "nine"),
        10: ("done", "after 3"),
        12: ("done", 4),
    }


async def test_a_resumed_written_plan_puts_its_edits_back(tmp_path: Path) -> None:
    """A written plan's run, edited live, then stopped: its resume puts the edit back into
    the graph after the plan (its result restored, its tool not run again), so the resumed
    result holds it as the first session did, not only the log."""
    from plait.core import events as ev

    said: list[str] = []
    held = asyncio.Event()

    @plait.tool(name="say")
    def say(x: str) -> str:
        said.append(x)
        return f"said {x}"

    @plait.tool(name="hold")
    async def hold(x: int) -> int:
        held.set()
        await asyncio.Event().wait()  # until the run is stopped
        return x

    @plait.tool(name="hold")
    async def release(x: int) -> int:
        return x

    plan = '1. say("one")\n2. hold(2)\n3. say("three after $2")'
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    edited, edit_done = asyncio.Event(), asyncio.Event()

    def heard(e: Any) -> None:
        if isinstance(e, ev.TaskFinished) and e.id == 4 and e.status == "done":
            edit_done.set()

    def edit(scheduler: Any) -> None:
        async def when_held() -> None:
            await held.wait()
            (task,) = plait.parse_plan(
                json.dumps({"tasks": [{"id": 4, "tool": "say", "args": ["after $1"]}]}),
                set(scheduler.graph.nodes),
                scheduler.tools,
            )
            scheduler.add(task)
            edited.set()

        asyncio.get_running_loop().create_task(when_held())

    first = asyncio.create_task(
        plait.aexecute(
            plan, tools=[say, hold], store=store, run_id="p", on_scheduler=edit, on_event=heard
        )
    )
    await edited.wait()
    await edit_done.wait()
    assert said == ["one", "after said one"]
    first.cancel()  # stopped as a killed process would be, the edit's result recorded
    with pytest.raises(asyncio.CancelledError):
        await first

    resumed = await plait.aresume("p", tools=[say, release], store=store)
    assert resumed.status == "done", resumed.error
    tasks = {t.id: (t.status, t.result) for t in resumed.tasks}
    assert tasks == {
        1: ("done", "said one"),
        2: ("done", 2),
        3: ("done", "said three after 2"),
        4: ("done", "said after said one"),
    }
    assert said == ["one", "after said one", "three after 2"]  # 1 and the edit not run again
    assert resumed.answer == "said three after 2"  # still the plan's last task's
