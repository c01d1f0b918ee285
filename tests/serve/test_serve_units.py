"""The pieces of the server that need no server: stream ids, event names, and the
`on_scheduler` hook the server's live edits use (api.py)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

import plait
from plait import events as ev
from plait.serve import loopback
from plait.serve.app import Lockout
from plait.serve.metrics import Metrics
from plait.serve.runs import END, RunManager, event_name, key_text, parse_key


def test_stream_ids_round_trip_and_order() -> None:
    for key in [(1, 0), (12, 3), (12, END), (10**17, 7)]:
        assert parse_key(key_text(key)) == key
    assert parse_key("12") < parse_key("12.1") < parse_key("12.end") < parse_key("13")
    assert parse_key(None) == parse_key("") == parse_key("  ") == (0, -1)  # from the start
    for unreadable in ["abc", "1.2.3", "-1", "1.x", " 7 x", "1" * 19, "1.-1"]:
        with pytest.raises(ValueError, match="not an event id"):
            parse_key(unreadable)


def test_event_names_are_snake_case() -> None:
    assert event_name(ev.RunStarted(0.0, "r")) == "run_started"
    assert event_name(ev.LLMToken(0.0, 1, "x")) == "llm_token"
    assert event_name(ev.LLMFinished(0.0, 1)) == "llm_finished"
    assert event_name(ev.PlanInvalid(0.0, "e")) == "plan_invalid"
    assert event_name(ev.TaskFinished(0.0, 1, "done")) == "task_finished"


def test_loopback_hosts() -> None:
    assert all(loopback(h) for h in ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"])
    assert not any(loopback(h) for h in ["0.0.0.0", "::", "10.0.0.1", "example.com", ""])


async def test_on_scheduler_gives_the_run_s_scheduler_for_live_edits() -> None:
    @plait.tool
    async def double(x: int) -> int:
        return 2 * x

    seen: list[plait.Scheduler] = []

    def edit(scheduler: plait.Scheduler) -> None:
        seen.append(scheduler)

    def on_event(e: ev.Event) -> None:
        if isinstance(e, ev.TaskAdded) and e.task.id == 1:  # a live edit, as the server does
            (task,) = plait.parse_plan('{"tasks": [{"id": 5, "tool": "double", "args": ["$1"]}]}',
                                       {1}, seen[0].tools)  # fmt: skip
            seen[0].add(task)

    result = await plait.aexecute(
        "1. double(3)\n2. double($1)", tools=[double], on_scheduler=edit, on_event=on_event
    )
    assert len(seen) == 1 and isinstance(seen[0], plait.Scheduler)
    assert {t.id: t.result for t in result.tasks} == {1: 6, 5: 12, 2: 12}


async def test_a_cancel_that_comes_after_the_run_ended_says_how_it_ended(tmp_path: Path) -> None:
    """The route found the run live; it ended before the cancel reached it: not `cancelled`."""

    @plait.tool
    async def one() -> int:
        return 1

    store = plait.open_store(f"sqlite:///{tmp_path / 'runs.db'}")
    try:
        manager = RunManager(store, plait.Tools([one]), "local", Metrics())
        live = await manager.start_plan("1. one()", None)
        assert live.task is not None
        await live.task
        assert await manager.cancel(live) == "done"
        assert not live.cancelled_by_user
    finally:
        store.close()


async def test_a_plan_is_checked_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 100,000-task plan took seconds to check on the loop: every stream and /healthz
    stood still meanwhile."""
    import httpx

    from plait.serve.app import build_app

    @plait.tool
    async def one() -> int:
        return 1

    where: list[bool] = []
    parse = plait.parse_plan

    def watched(*args: Any, **kwargs: Any) -> Any:
        where.append(threading.current_thread() is threading.main_thread())
        return parse(*args, **kwargs)

    monkeypatch.setattr(plait, "parse_plan", watched)
    store = plait.open_store(f"sqlite:///{tmp_path / 'runs.db'}")
    try:
        manager = RunManager(store, plait.Tools([one]), "local", Metrics())
        app = build_app(manager, None, resume_on_start=False)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            response = await c.post("/v1/runs", json={"plan": "1. one()"})
            assert response.status_code == 201, response.text
            bad = await c.post("/v1/runs", json={"plan": "1. two()"})
            assert bad.status_code == 400 and "unknown tool 'two'" in bad.json()["error"]
        assert where == [False, False]  # both checks ran in a worker thread
        for live in list(manager.live.values()):
            assert live.task is not None
            await live.task
    finally:
        store.close()


class _HeldClose:
    """A store whose final commit of a run (its status, the lease let go) waits for
    `release`: the run is held in its last moment, after run_finished."""

    def __init__(self, store: Any) -> None:
        self.inner = store
        self.url = store.url
        self.reached = threading.Event()
        self.release = threading.Event()

    def append(self, run_id: str, holder: str, records: Any, progress: Any) -> None:
        if progress.release:
            self.reached.set()
            assert self.release.wait(60)
        self.inner.append(run_id, holder, records, progress)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_run_that_is_finishing_takes_no_edit_and_no_cancel(tmp_path: Path) -> None:
    """Between run_finished and its log's last commit, an edit was a 500 that left a task
    `pending` forever in a run stored `done`; a cancel said `cancelled` of a run the store
    says is `done`."""
    import httpx

    from plait.serve.app import build_app

    @plait.tool
    async def one() -> int:
        return 1

    store = plait.open_store(f"sqlite:///{tmp_path / 'runs.db'}")
    held = _HeldClose(store)
    try:
        manager = RunManager(held, plait.Tools([one]), "local", Metrics())  # type: ignore[arg-type]
        app = build_app(manager, None, resume_on_start=False)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            run_id = (await c.post("/v1/runs", json={"plan": "1. one()"})).json()["run_id"]
            assert await asyncio.to_thread(held.reached.wait, 60)
            live = manager.live[run_id]
            assert live.closing and not live.ended
            edit = await c.post(f"/v1/runs/{run_id}/tasks", json={"tool": "one", "args": []})
            assert edit.status_code == 409 and "finishing" in edit.json()["error"], edit.text
            gone = await c.delete(f"/v1/runs/{run_id}/tasks/1")
            assert gone.status_code == 409, gone.text
            asked = asyncio.Event()
            cancel_run = manager.cancel

            async def cancel_seen(live: Any) -> str:
                asked.set()
                return await cancel_run(live)

            manager.cancel = cancel_seen  # type: ignore[method-assign]
            cancelling = asyncio.create_task(c.post(f"/v1/runs/{run_id}/cancel"))
            await asyncio.wait_for(asked.wait(), 60)  # the cancel reached the run, still closing
            held.release.set()
            cancel = await cancelling
            assert cancel.status_code == 409, cancel.text
            assert cancel.json()["error"] == f"run {run_id} had already finished: done"
            run = (await c.get(f"/v1/runs/{run_id}")).json()
        assert run["status"] == "done"
        assert [(t["id"], t["status"]) for t in run["tasks"]] == [(1, "done")]
    finally:
        held.release.set()
        store.close()


def test_a_lockout_refuses_a_client_after_too_many_wrong_tokens_until_the_window_passes() -> None:
    now = [1000.0]
    lockout = Lockout(clock=lambda: now[0])
    for _ in range(Lockout.ATTEMPTS - 1):
        lockout.failed("10.0.0.1")
        now[0] += 1
    assert lockout.refusal("10.0.0.1") is None  # one guess short of the limit
    lockout.failed("10.0.0.1")
    refused = lockout.refusal("10.0.0.1")
    assert refused is not None and refused.status_code == 429
    # The oldest failure (at 1000) leaves the window at 1000 + WINDOW: 51 s from now (1009).
    assert refused.headers["Retry-After"] == str(round(1000 + Lockout.WINDOW - now[0]))
    assert lockout.refusal("10.0.0.2") is None  # another client is not held back
    now[0] = 1000 + Lockout.WINDOW  # the oldest failure has left the window
    assert lockout.refusal("10.0.0.1") is None
    lockout.failed("10.0.0.1")
    assert lockout.refusal("10.0.0.1") is not None  # back at the limit at once


def test_a_lockout_remembers_a_bounded_number_of_clients(monkeypatch) -> None:
    monkeypatch.setattr(Lockout, "CLIENTS", 3)
    lockout = Lockout(clock=lambda: 0.0)
    for client in ["a", "b", "c", "d"]:
        for _ in range(Lockout.ATTEMPTS):
            lockout.failed(client)
    assert lockout.refusal("a") is None  # forgotten: the least recent of four
    assert all(lockout.refusal(c) is not None for c in "bcd")


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_the_page_cookie_is_secure_when_the_page_came_over_https(tmp_path: Path, scheme) -> None:
    from starlette.testclient import TestClient

    from plait.serve.app import build_app

    store = plait.open_store(f"sqlite:///{tmp_path / 'runs.db'}")
    try:
        manager = RunManager(store, plait.Tools([]), "local", Metrics())
        app = build_app(manager, "tok", resume_on_start=False)
        with TestClient(app, base_url=f"{scheme}://127.0.0.1") as client:
            login = client.post("/login", data={"token": "tok"}, follow_redirects=False)
        assert login.status_code == 303
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert ("secure" in cookie.split("; ")) == (scheme == "https")
    finally:
        store.close()
