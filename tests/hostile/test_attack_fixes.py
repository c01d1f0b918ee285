"""Adversarial pass on the day's small fixes: pure-call keys (core/shared.py `call_key`),
store version checks, read-only look-ups, Tool's options, the serve lockout.

Each test is a defect found and fixed: it failed before its fix.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
from collections import Counter

import pydantic
import pytest

import plait
from plait.core.shared import call_key
from plait.core.tools import tool


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Point(pydantic.BaseModel):
    x: int
    y: int


async def test_a_pure_tool_whose_parameters_pydantic_coerces_still_shares_equal_calls():
    # The plan writes JSON literals; validation turns them into an Enum, a model, a date.
    # Their keys were None after validation, so equal calls of such a tool all ran.
    ran: Counter[str] = Counter()

    @tool(pure=True)
    def paint(color: Color, at: Point, day: datetime.date) -> str:
        ran[color.value] += 1
        return f"{color.value} at {at.x},{at.y} on {day}"

    plan = (
        '1. paint("red", {"x": 1, "y": 2}, "2026-01-02")\n'
        '2. paint(color="red", at={"y": 2, "x": 1}, day="2026-01-02")\n'
        '3. paint("blue", {"x": 1, "y": 2}, "2026-01-02")\n'
    )
    result = await plait.aexecute(plan, tools=[paint])
    assert result.status == "done"
    assert [t.result for t in result.tasks] == [
        "red at 1,2 on 2026-01-02", "red at 1,2 on 2026-01-02", "blue at 1,2 on 2026-01-02"
    ]  # fmt: skip
    assert ran == {"red": 1, "blue": 1}


@dataclasses.dataclass
class Box:
    item: object


class Label(str):
    pass


def test_keys_of_non_json_values_tell_their_types_and_contents_apart():
    # Shared at last, but never merged with a value of another type or another content.
    assert call_key("f", {"q": Color.RED}) == call_key("f", {"q": Color.RED}) is not None
    assert call_key("f", {"q": Point(x=1, y=2)}) == call_key("f", {"q": Point(x=1, y=2)})
    distinct = [
        Color.RED, "red", Label("red"), b"red", ["red"], {"\x00": ["red"]},
        Point(x=1, y=2), {"x": 1, "y": 2}, Point(x=1, y=3),
        datetime.date(2026, 1, 2), "2026-01-02", datetime.datetime(2026, 1, 2),
    ]  # fmt: skip
    keys = [call_key("f", {"q": v}) for v in distinct]
    assert None not in keys
    assert len(set(keys)) == len(keys), keys
    # A plain dict cannot pose as a tagged value, however its keys are spelled.
    tagged = call_key("f", {"q": b"red"})
    forged = [{"\x00": v} for v in (["builtins.bytes", '"red"'], ["builtins.bytes", "red"])]
    assert all(call_key("f", {"q": f}) not in (tagged, None) for f in forged)
    # A set's (or any other container's) items lose their types in JSON: never merged.
    assert call_key("f", {"q": {b"a"}}) is None
    assert call_key("f", {"q": Box("a")}) is None
    assert call_key("f", {"q": frozenset({"a"})}) is None


def _served(tmp_path, token: str):
    from plait.serve.app import build_app
    from plait.serve.metrics import Metrics
    from plait.serve.runs import RunManager

    store = plait.open_store(f"sqlite:///{tmp_path / 'runs.db'}")
    manager = RunManager(store, plait.Tools([]), "local", Metrics())
    return store, build_app(manager, token, resume_on_start=False)


def test_a_stale_cookie_sent_again_and_again_does_not_lock_its_browser_out(tmp_path, monkeypatch):
    # `plait serve` restarted with a new token: every open tab polls /v1/runs with the old
    # cookie, gets 401 and reloads (GET / with the old cookie again). That one wrong value,
    # repeated, tells a guesser nothing: it counted once per request, so the browser (and
    # every client on its address: all of them on 127.0.0.1) was refused the right token.
    from starlette.testclient import TestClient

    from plait.serve.app import Lockout

    monkeypatch.setattr(Lockout, "WINDOW", 1e9)  # no failure leaves the window in this test
    store, app = _served(tmp_path, "new-token")
    try:
        with TestClient(app, base_url="http://127.0.0.1") as client:
            client.cookies.set("plait_token", "digest-of-the-old-token")
            for _ in range(3 * Lockout.ATTEMPTS):
                assert client.get("/v1/runs").status_code == 401
                assert client.get("/").status_code == 401
            login = client.post("/login", data={"token": "new-token"}, follow_redirects=False)
            assert login.status_code == 303
            right = client.get("/v1/runs", headers={"Authorization": "Bearer new-token"})
            assert right.status_code == 200
            # Distinct guesses still add up, the stale cookie's among them.
            client.cookies.clear()
            for i in range(Lockout.ATTEMPTS - 1):
                wrong = client.get("/v1/runs", headers={"Authorization": f"Bearer guess{i}"})
                assert wrong.status_code == 401
            assert client.get("/v1/runs", headers={"Authorization": "Bearer x"}).status_code == 429
    finally:
        store.close()


def test_a_lockout_counts_an_ipv6_client_by_its_network_not_each_address():
    # One host is handed a /64 (2**64 addresses): keyed by the whole address, it could
    # make a fresh client of each guess. An IPv4-mapped address is its IPv4 client.
    from plait.serve.app import _client

    def key(host: str) -> str:
        return _client({"client": (host, 4242)})

    assert key("2001:db8:1:2::1") == key("2001:db8:1:2:ffff:ffff:ffff:ffff")
    assert key("2001:db8:1:2::1") != key("2001:db8:1:3::1")
    assert key("::ffff:10.0.0.1") == key("10.0.0.1") != key("10.0.0.2")
    assert key("127.0.0.1") != key("::1")
    assert key("testclient") == "testclient"  # not an address: as it is
    assert _client({}) == ""


@pytest.mark.parametrize("command", ["rm", "prune"])
def test_a_run_resumed_between_the_look_and_the_delete_is_not_deleted(
    tmp_path, monkeypatch, command
):
    # rm and prune look read-only, close, then open for writing to delete: a `plait resume`
    # that claims the run in between was running a run whose rows were deleted under it.
    import time

    from plait.cli import report
    from plait.errors import PlaitError
    from plait.stores import RunInfo, open_store
    from plait.stores.base import new_holder

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = open_store(url)
    store.create(RunInfo("r1", "plan", "1. f()", created=1.0, updated=1.0))
    store.close()
    real = open_store

    def resumed_meanwhile(url: str, *, readonly: bool = False):
        if not readonly:  # another process resumes r1 just before the delete
            other = real(url)
            other.claim("r1", new_holder(), 60)
            other.close()
        return real(url, readonly=readonly)

    monkeypatch.setattr(report, "open_store", resumed_meanwhile)
    if command == "rm":
        with pytest.raises(PlaitError, match="being run now; nothing deleted"):
            report.remove_runs(url, ["r1"])
    else:
        report.prune_runs(url, time.time(), dry_run=False)
    store = real(url, readonly=True)
    try:
        kept = store.get("r1")
        assert kept is not None and kept.held
    finally:
        store.close()
