"""Run stores (plait.stores): one conformance suite for memory://, sqlite:/// and postgresql://,
an end-to-end run per store, and several processes writing one SQLite file at once."""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import plait
from pgserver import new_database
from plait.stores import (
    Progress,
    Record,
    RunExists,
    RunHeld,
    RunInfo,
    RunNotFound,
    Store,
    StoreError,
    open_store,
)

HOST = socket.gethostname()


def live_holder(tag: str) -> str:
    """A holder in this very process: never taken for dead."""
    return f"{HOST}:{os.getpid()}:{tag}"


def dead_pid() -> int:
    """The pid of a child that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def new_id(prefix: str = "run") -> str:
    # The PostgreSQL server is shared by the whole session: every run id is fresh.
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def info(run_id: str, **fields) -> RunInfo:
    base = {
        "kind": "plan",
        "source": "1. f()",
        "tools": ["f"],
        "created": time.time(),
        "holder": live_holder("owner"),
        "lease_until": time.time() + 60,
    }
    base.update(fields)
    return RunInfo(run_id, **base)


def rec(seq: int, kind: str = "start", data: dict | None = None) -> Record:
    return Record(seq, kind, seq / 10, json.dumps(data if data is not None else {"id": seq}))


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return f"memory://{new_id('stores')}"  # named, so a second open sees the same store
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"  # tmp_path is absolute: sqlite:////…
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    yield opened
    opened.close()


def kind_of(store: Store) -> str:
    return type(store).__name__


# -- the row ---------------------------------------------------------------------------------


def test_create_then_get_round_trips_every_field(store):
    run_id = new_id()
    original = RunInfo(
        id=run_id,
        kind="question",
        source="How tall?\nTwo lines, ünïcode.",
        model="replay:/tmp/replies.json",
        tools=["search", "calculate", "extract_number"],
        options={
            "max_replans": 3,
            "base_url": None,
            "examples": '1. search("x")',
            "nested": {"list": [1, 2.5, "three", None, True]},
        },
        created=1_700_000_000.125,
        updated=1_700_000_001.5,
        status="failed",
        answer="an answer",
        error="an error",
        holder="elsewhere:4242:abc123",
        lease_until=1_700_000_015.75,
        tasks_total=7,
        tasks_done=4,
    )
    store.create(original)
    got = store.get(run_id)
    assert got == original
    assert got is not original
    assert store.get(new_id("missing")) is None


def test_create_with_defaults_round_trips(store):
    run_id = new_id()
    original = RunInfo(run_id, "plan", "1. f()")
    store.create(original)
    assert store.get(run_id) == original


def test_the_stored_row_is_not_the_callers_object(store):
    run_id = new_id()
    mine = info(run_id, tools=["a"], options={"k": 1})
    store.create(mine)
    mine.tools.append("b")
    mine.options["k"] = 2
    mine.status = "done"
    got = store.get(run_id)
    assert got.tools == ["a"] and got.options == {"k": 1} and got.status == "running"


def test_create_twice_is_run_exists(store):
    run_id = new_id()
    store.create(info(run_id, source="first"))
    with pytest.raises(RunExists, match=re.escape(run_id)):
        store.create(info(run_id, source="second"))
    assert store.get(run_id).source == "first"
    assert issubclass(RunExists, StoreError)


# -- leases ----------------------------------------------------------------------------------


def test_claim_of_a_missing_run_is_run_not_found(store):
    run_id = new_id("missing")
    with pytest.raises(RunNotFound, match=re.escape(run_id)):
        store.claim(run_id, live_holder("me"), 15)
    assert store.get(run_id) is None


def test_claim_while_another_holder_is_live_is_run_held(store):
    run_id = new_id()
    first = live_holder("first")
    store.create(info(run_id, holder=first, lease_until=time.time() + 60))
    assert store.get(run_id).held
    with pytest.raises(RunHeld, match=re.escape(first)):
        store.claim(run_id, live_holder("second"), 15)
    assert store.get(run_id).holder == first


def test_a_holder_on_another_host_is_never_taken_for_dead(store):
    run_id = new_id()
    remote = "some-other-host.invalid:1:abc"
    store.create(info(run_id, holder=remote, lease_until=time.time() + 60))
    with pytest.raises(RunHeld, match=re.escape(remote)):
        store.claim(run_id, live_holder("me"), 15)


def test_the_holder_may_claim_again(store):
    run_id = new_id()
    me = live_holder("me")
    store.create(info(run_id, holder=me, lease_until=time.time() + 5))
    before = time.time()
    claimed = store.claim(run_id, me, 60)
    assert claimed.holder == me and claimed.lease_until >= before + 60


def test_claim_after_the_lease_expired_succeeds(store):
    run_id = new_id()
    store.create(info(run_id, holder="elsewhere:1:old", lease_until=time.time() - 1))
    assert not store.get(run_id).held
    assert store.get(run_id).state == "interrupted"
    me = live_holder("me")
    before = time.time()
    claimed = store.claim(run_id, me, 15)
    assert claimed.id == run_id and claimed.holder == me
    assert claimed.lease_until >= before + 15
    got = store.get(run_id)
    assert got.holder == me and got.held and got.state == "running"
    assert got.lease_until == pytest.approx(claimed.lease_until)


def test_claim_from_a_dead_local_holder_succeeds_at_once(store):
    run_id = new_id()
    dead = f"{HOST}:{dead_pid()}:x"
    store.create(info(run_id, holder=dead, lease_until=time.time() + 600))
    assert not store.get(run_id).held  # the lease is live but its holder is gone
    me = live_holder("me")
    assert store.claim(run_id, me, 15).holder == me
    assert store.get(run_id).holder == me


def test_claim_of_a_free_run_succeeds(store):
    run_id = new_id()
    store.create(info(run_id, holder=None, lease_until=0.0))
    me = live_holder("me")
    assert store.claim(run_id, me, 15).holder == me


def test_two_racing_claims_of_one_free_run_cannot_both_win(store_url, store):
    run_id = new_id()
    store.create(info(run_id, holder=None, lease_until=0.0))
    others = [open_store(store_url) for _ in range(2)]
    barrier = threading.Barrier(2)
    outcomes: dict[str, object] = {}

    def claim(i: int) -> None:
        holder = live_holder(f"racer{i}")
        barrier.wait()
        try:
            outcomes[holder] = others[i].claim(run_id, holder, 60).holder
        except RunHeld as e:
            outcomes[holder] = e

    try:
        threads = [threading.Thread(target=claim, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for s in others:
            s.close()
    winners = [h for h, o in outcomes.items() if o == h]
    losers = [o for o in outcomes.values() if isinstance(o, RunHeld)]
    assert len(winners) == 1 and len(losers) == 1
    assert store.get(run_id).holder == winners[0]


def test_renew_by_the_holder_extends_the_lease_and_by_another_is_refused(store):
    run_id = new_id()
    me = live_holder("me")
    store.create(info(run_id, holder=me, lease_until=time.time() + 5))
    before = time.time()
    assert store.renew(run_id, me, 120) is True
    extended = store.get(run_id).lease_until
    assert extended >= before + 120
    assert store.renew(run_id, live_holder("other"), 600) is False
    got = store.get(run_id)
    assert got.holder == me and got.lease_until == pytest.approx(extended)
    assert store.renew(new_id("missing"), me, 15) is False


def test_renew_after_losing_the_lease_is_refused(store):
    run_id = new_id()
    old = "elsewhere:1:old"
    store.create(info(run_id, holder=old, lease_until=time.time() - 1))
    store.claim(run_id, live_holder("new"), 15)
    assert store.renew(run_id, old, 15) is False
    assert store.get(run_id).holder == live_holder("new")


# -- the log ---------------------------------------------------------------------------------


def test_append_keeps_records_in_order_and_updates_progress(store):
    run_id = new_id()
    me = live_holder("me")
    store.create(info(run_id, holder=me))
    assert list(store.records(run_id)) == []
    first = [rec(1, "session", {"resumed": False}), rec(2, "task", {"id": 1}), rec(3)]
    store.append(run_id, me, first, Progress(tasks_total=2, tasks_done=0))
    got = store.get(run_id)
    assert (got.tasks_total, got.tasks_done, got.status) == (2, 0, "running")
    assert got.holder == me  # no release yet
    second = [rec(4, "settle", {"id": 1, "status": "done", "result": [1, "ü"]}), rec(5)]
    store.append(run_id, me, second, Progress(2, 1))
    assert list(store.records(run_id)) == first + second
    assert [r.seq for r in store.records(run_id)] == [1, 2, 3, 4, 5]
    assert json.loads(list(store.records(run_id))[3].data)["result"] == [1, "ü"]
    assert store.get(run_id).tasks_done == 1
    # an empty batch still carries progress
    store.append(run_id, me, [], Progress(2, 2, "failed", None, "task 2 failed"))
    got = store.get(run_id)
    assert (got.tasks_done, got.status, got.error) == (2, "failed", "task 2 failed")
    assert len(list(store.records(run_id))) == 5


def test_append_with_release_ends_the_run_and_frees_the_lease(store):
    run_id = new_id()
    me = live_holder("me")
    store.create(info(run_id, holder=me))
    store.append(run_id, me, [rec(1)], Progress(3, 3, "done", "42", None, release=True))
    got = store.get(run_id)
    assert (got.tasks_total, got.tasks_done, got.status, got.answer, got.error) == (
        3,
        3,
        "done",
        "42",
        None,
    )
    assert got.holder is None and not got.held and got.state == "done"
    # a free run can be claimed by anyone at once
    assert store.claim(run_id, live_holder("next"), 15).holder == live_holder("next")


def test_release_by_a_writer_that_is_not_the_holder_leaves_the_lease(store):
    run_id = new_id()
    me = live_holder("me")
    store.create(info(run_id, holder=me))
    with pytest.raises(StoreError):
        store.append(run_id, live_holder("stale"), [], Progress(1, 0, "cancelled", release=True))
    assert store.get(run_id).holder == me


def test_append_by_a_writer_that_lost_the_lease_is_refused(store):
    run_id = new_id()
    stale = "elsewhere:1:stale"
    store.create(info(run_id, holder=stale, lease_until=time.time() - 1))
    me = live_holder("me")
    store.claim(run_id, me, 60)  # the stale writer's lease ran out; this process took over
    store.append(run_id, me, [rec(1, "session", {"resumed": True})], Progress(2, 0))
    with pytest.raises(StoreError):
        store.append(run_id, stale, [rec(2, "settle", {"id": 1})], Progress(2, 2, "done", "x"))
    assert [r.seq for r in store.records(run_id)] == [1]
    got = store.get(run_id)
    assert (got.status, got.answer, got.tasks_done, got.holder) == ("running", None, 0, me)


def test_records_of_other_runs_are_kept_apart(store):
    a, b = new_id("a"), new_id("b")
    me = live_holder("me")
    store.create(info(a, holder=me))
    store.create(info(b, holder=me))
    store.append(a, me, [rec(1), rec(2)], Progress(1, 0))
    store.append(b, me, [rec(1, "session", {"resumed": False})], Progress(1, 0))
    assert [r.seq for r in store.records(a)] == [1, 2]
    assert [r.kind for r in store.records(b)] == ["session"]
    assert list(store.records(new_id("missing"))) == []


def _two_records(store: Store) -> tuple[str, str]:
    run_id = new_id()
    me = live_holder("me")
    store.create(info(run_id, holder=me))
    store.append(run_id, me, [rec(1, "session", {"resumed": False}), rec(2)], Progress(1, 0))
    return run_id, me


def _unchanged(store: Store, run_id: str) -> None:
    assert [(r.seq, r.kind) for r in store.records(run_id)] == [(1, "session"), (2, "start")]
    got = store.get(run_id)
    assert (got.tasks_total, got.tasks_done, got.status) == (1, 0, "running")


def test_a_batch_that_starts_at_a_written_seq_is_refused_and_changes_nothing(store):
    run_id, me = _two_records(store)
    # a second writer whose numbering overlaps the log's
    with pytest.raises(StoreError, match="already written"):
        store.append(run_id, me, [rec(2, "settle", {"id": 9}), rec(3)], Progress(9, 9, "done"))
    _unchanged(store, run_id)
    # the store is still usable afterwards
    store.append(run_id, me, [rec(3)], Progress(1, 1))
    assert [r.seq for r in store.records(run_id)] == [1, 2, 3]


def test_a_written_seq_later_in_a_batch_is_refused_and_changes_nothing(store):
    run_id, me = _two_records(store)
    with pytest.raises(StoreError, match="already written"):
        store.append(run_id, me, [rec(3), rec(2, "settle", {"id": 9})], Progress(9, 9, "done"))
    _unchanged(store, run_id)
    store.append(run_id, me, [rec(3)], Progress(1, 1))
    assert [r.seq for r in store.records(run_id)] == [1, 2, 3]


def test_a_seq_twice_in_one_batch_is_refused_and_changes_nothing(store):
    run_id, me = _two_records(store)
    with pytest.raises(StoreError, match="already written"):
        store.append(run_id, me, [rec(3), rec(3, "settle", {"id": 9})], Progress(9, 9, "done"))
    _unchanged(store, run_id)


def test_runs_lists_the_most_recently_updated_first_and_honours_limit(store):
    a, b, c = new_id("a"), new_id("b"), new_id("c")
    me = live_holder("me")
    for run_id in (a, b, c):
        store.create(info(run_id, holder=me, updated=0.0))
    for run_id in (b, c, a):  # the order they are last written in
        store.append(run_id, me, [rec(1)], Progress(1, 0))
    # the shared PostgreSQL server may hold runs of other tests, all written before these
    assert [r.id for r in store.runs(limit=3)] == [a, c, b]
    assert [r.id for r in store.runs(limit=1)] == [a]
    listed = store.runs(limit=2)
    assert [r.id for r in listed] == [a, c]
    assert all(isinstance(r, RunInfo) for r in listed)
    assert listed[0].tools == ["f"]
    store.append(b, me, [], Progress(1, 1))
    assert [r.id for r in store.runs(limit=3)] == [b, a, c]
    assert len(store.runs()) >= 3


def test_runs_of_an_empty_store(tmp_path):
    for url in ("memory://", f"sqlite:///{tmp_path / 'empty.db'}"):
        store = open_store(url)
        try:
            assert store.runs() == []
        finally:
            store.close()


# -- opening ---------------------------------------------------------------------------------


def test_reopening_the_url_sees_the_same_runs_and_keeps_them(store_url, store):
    run_id = new_id()
    me = live_holder("me")
    store.create(info(run_id, holder=me, tools=["x", "y"]))
    store.append(run_id, me, [rec(1), rec(2)], Progress(2, 1))
    again = open_store(store_url)
    try:
        assert again.get(run_id) == store.get(run_id)
        assert list(again.records(run_id)) == list(store.records(run_id))
        other = new_id()
        again.create(info(other))
        assert store.get(other) is not None
    finally:
        again.close()
    third = open_store(store_url)  # after the second one closed
    try:
        assert [r.seq for r in third.records(run_id)] == [1, 2]
        assert third.get(run_id).tasks_done == 1
    finally:
        third.close()


def test_reopening_sqlite_does_not_run_migrations_again(tmp_path):
    from plait.stores import sqlite as sqlite_store

    path = tmp_path / "runs.db"
    url = f"sqlite:///{path}"
    run_id = new_id()
    for _ in range(3):
        s = open_store(url)
        if s.get(run_id) is None:
            s.create(info(run_id))
        s.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(sqlite_store.MIGRATIONS)
        assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


@pytest.mark.postgres
def test_reopening_postgres_does_not_run_migrations_again(postgres_url):
    import psycopg

    from plait.stores import postgres as pg_store

    run_id = new_id()
    stores = [open_store(postgres_url) for _ in range(3)]
    try:
        stores[0].create(info(run_id))
        assert all(s.get(run_id) is not None for s in stores)
    finally:
        for s in stores:
            s.close()
    with psycopg.connect(postgres_url) as db:
        versions = [v for (v,) in db.execute("SELECT version FROM plait_schema ORDER BY version")]
    assert versions == list(range(1, len(pg_store.MIGRATIONS) + 1))


def test_a_relative_sqlite_url_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///rel/runs.db")
    try:
        store.create(info(new_id()))
    finally:
        store.close()
    assert (tmp_path / "rel" / "runs.db").is_file()


def test_plain_memory_urls_are_private_and_named_ones_shared():
    a, b = open_store("memory://"), open_store("memory://")
    run_id = new_id()
    a.create(info(run_id))
    assert b.get(run_id) is None
    name = f"memory://{new_id('shared')}"
    open_store(name).create(info(run_id))
    assert open_store(name).get(run_id) is not None


@pytest.mark.parametrize(
    "url", ["nope://x", "runs.db", "sqlite://runs.db", "sqlite:///", "memory:/x"]
)
def test_a_bad_url_is_a_store_error(url):
    with pytest.raises(StoreError):
        open_store(url)


# -- a whole run, end to end -----------------------------------------------------------------


@plait.tool
def double(n: int) -> int:
    return 2 * n


@plait.tool
async def add(a: int, b: int) -> int:
    return a + b


PLAN = "1. double(3)\n2. double(4)\n3. add($1, $2)"


def test_execute_records_the_run_in_the_store(store_url, store):
    run_id = new_id("e2e")
    result = plait.execute(PLAN, tools=[double, add], store=store_url, run_id=run_id)
    assert result.status == "done" and result.answer == "14"
    got = store.get(run_id)
    assert got.kind == "plan" and got.source == PLAN
    assert got.tools == ["double", "add"]
    assert got.state == "done" and got.status == "done" and got.answer == "14"
    assert got.tasks_total == got.tasks_done == 3
    assert got.holder is None and got.error is None
    assert got.updated >= got.created > 0
    records = list(store.records(run_id))
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    kinds = [r.kind for r in records]
    assert kinds[0] == "session" and kinds[-1] == "answer"
    assert sorted(kinds) == sorted(["session", "answer"] + ["task", "start", "settle"] * 3)
    data = [json.loads(r.data) for r in records]
    assert data[0] == {"resumed": False}
    assert data[-1] == {"answer": "14"}
    for task_id, value in [(1, 6), (2, 8), (3, 14)]:
        at = {
            kind: next(
                i
                for i, (k, d) in enumerate(zip(kinds, data, strict=True))
                if k == kind and d["id"] == task_id
            )
            for kind in ("task", "start", "settle")
        }
        assert at["task"] < at["start"] < at["settle"]
        assert data[at["settle"]] == {"id": task_id, "status": "done", "result": value}
    assert data[kinds.index("task")]["tool"] == "double"
    assert all(r.t >= 0 for r in records)


# -- SQLite: several processes, one file ---------------------------------------------------

TOOLS = """
import asyncio

import plait


@plait.tool
async def step(n: int, prev: int = 0) -> int:
    await asyncio.sleep(0.001)
    return prev + n
"""
STEPS = 200


def test_several_processes_write_one_sqlite_file_at_once(tmp_path):
    tools = tmp_path / "steptools.py"
    tools.write_text(TOOLS)
    plan = tmp_path / "chain.plan"
    plan.write_text(
        "1. step(1)\n" + "".join(f"{k}. step({k}, ${k - 1})\n" for k in range(2, STEPS + 1))
    )
    db = tmp_path / "shared" / "runs.db"  # not there yet: the processes race to create it
    url = f"sqlite:///{db}"
    assert url.startswith("sqlite:////")
    run_ids = [new_id(f"p{i}") for i in range(4)]
    cli = [sys.executable, "-m", "plait.cli", "exec", str(plan), "--tools", str(tools)]
    procs = [
        subprocess.Popen(
            [*cli, "--store", url, "--run-id", run_id, "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for run_id in run_ids
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    expected = str(STEPS * (STEPS + 1) // 2)
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
        result = json.loads(out)
        assert result["status"] == "done" and result["answer"] == expected
    store = open_store(url)
    try:
        listed = {r.id: r for r in store.runs(limit=10)}
        assert set(listed) == set(run_ids)
        for run_id in run_ids:
            got = listed[run_id]
            assert got.state == "done" and got.answer == expected
            assert got.tasks_total == got.tasks_done == STEPS
            records = list(store.records(run_id))
            assert [r.seq for r in records] == list(range(1, len(records) + 1))
            kinds = [r.kind for r in records]
            assert kinds.count("settle") == kinds.count("task") == kinds.count("start") == STEPS
            assert kinds.count("session") == kinds.count("answer") == 1
    finally:
        store.close()
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        con.close()


@pytest.mark.postgres
def test_a_postgres_password_never_shows(postgres_url):
    url = postgres_url.replace("plait@", "plait:s3cret@")  # trust auth takes any password
    store = open_store(url)
    try:
        assert "s3cret" not in store.url and store.url.startswith("postgresql://plait:***@")
        with pytest.raises(RunNotFound) as info:
            store.claim("no-such-run", "me", 1.0)
        assert "s3cret" not in str(info.value)
    finally:
        store.close()
    with pytest.raises(StoreError) as info:
        open_store(url.rsplit("/", 1)[0] + "/no_such_db")
    assert "s3cret" not in str(info.value) and "no_such_db" in str(info.value)


# -- merged calls ----------------------------------------------------------------------------


def call(tool: str, **arguments) -> str:
    """A key shaped like shared.call_key's: the tool, ":", canonical JSON of the arguments."""
    return tool + ":" + json.dumps(arguments, sort_keys=True, separators=(",", ":"))


def test_calls_round_trip(store):
    scope = new_id("scope")
    a, b = call("search", query="x"), call("calculate", expression="1 + 2")
    store.put_calls(scope, [(a, '"found x"'), (b, "3")])
    assert store.get_calls(scope, [a, b]) == {a: '"found x"', b: "3"}
    assert store.get_calls(scope, [b]) == {b: "3"}


def test_calls_absent_keys_are_absent(store):
    scope = new_id("scope")
    a, missing = call("search", query="x"), call("search", query="y")
    assert store.get_calls(scope, [a]) == {}  # a scope with nothing yet
    store.put_calls(scope, [(a, "1")])
    assert store.get_calls(scope, [missing]) == {}
    assert store.get_calls(scope, [missing, a, missing]) == {a: "1"}
    assert store.get_calls(new_id("scope"), [a]) == {}


def test_calls_empty_inputs_are_no_ops(store):
    scope = new_id("scope")
    store.put_calls(scope, [])
    assert store.get_calls(scope, []) == {}
    store.put_calls(scope, [(call("f", n=1), "1")])
    assert store.get_calls(scope, []) == {}


def test_calls_first_value_wins(store):
    scope = new_id("scope")
    a, b = call("f", n=1), call("f", n=2)
    store.put_calls(scope, [(a, '"first"')])
    store.put_calls(scope, [(a, '"second"'), (b, '"b"')])  # the new key is still stored
    assert store.get_calls(scope, [a, b]) == {a: '"first"', b: '"b"'}
    c = call("f", n=3)
    store.put_calls(scope, [(c, "1"), (c, "2")])  # twice in one put: the first again
    assert store.get_calls(scope, [c]) == {c: "1"}


def test_calls_scopes_are_separate(store):
    one, two = new_id("scope"), new_id("scope")
    a = call("search", query="x")
    store.put_calls(one, [(a, '"one"')])
    store.put_calls(two, [(a, '"two"')])
    assert store.get_calls(one, [a]) == {a: '"one"'}
    assert store.get_calls(two, [a]) == {a: '"two"'}
    b = call("search", query="only in two")
    store.put_calls(two, [(b, "null")])
    assert store.get_calls(one, [a, b]) == {a: '"one"'}


def test_calls_many_keys_in_one_put_and_one_get(store):
    scope = new_id("scope")
    items = [(call("double", n=i), str(2 * i)) for i in range(2_000)]
    store.put_calls(scope, items)
    keys = [k for k, _ in items] + [call("double", n=-1)]  # and one missing
    got = store.get_calls(scope, keys)
    assert got == dict(items)
    # a get that straddles chunks unevenly, with repeats
    some = keys[499:1502] + keys[:3]
    assert store.get_calls(scope, some) == {k: v for k, v in items if k in set(some)}


def test_calls_a_long_unicode_key(store):
    scope = new_id("scope")
    long_key = call("extract", text=("ünïcødé ☃ 漢字 🚀 " * 400)[:5_000])
    assert len(long_key) > 5_000
    near = long_key[:-2] + 'x"}'  # same length, differs at the end
    store.put_calls(scope, [(long_key, '"long"')])
    assert store.get_calls(scope, [long_key, near]) == {long_key: '"long"'}
    store.put_calls(scope, [(near, '"near"')])
    assert store.get_calls(scope, [long_key, near]) == {long_key: '"long"', near: '"near"'}


def test_calls_values_are_returned_exactly_as_given(store):
    scope = new_id("scope")
    values = [
        '{"b": 1,  "a": [1, 2.50, {"z": null}]}',  # spacing and key order kept, not normalized
        '"ünïcode ☃ 🚀 \\u0000 \\n"',
        "[]",
        "12345678901234567890",
        json.dumps({"nested": {"deep": [[["x"]], {"y": "ÿ" * 3_000}]}}, ensure_ascii=False),
    ]
    items = [(call("tool", i=i), v) for i, v in enumerate(values)]
    store.put_calls(scope, items)
    got = store.get_calls(scope, [k for k, _ in items])
    assert got == dict(items)
    assert all(type(v) is str for v in got.values())


def test_calls_are_shared_by_every_opener_of_the_url(store_url, store):
    scope = new_id("scope")
    a = call("search", query="x")
    store.put_calls(scope, [(a, "1")])
    again = open_store(store_url)
    try:
        assert again.get_calls(scope, [a]) == {a: "1"}
        again.put_calls(scope, [(a, "2")])
        assert store.get_calls(scope, [a]) == {a: "1"}
    finally:
        again.close()


def test_an_old_sqlite_database_is_migrated_on_open_and_keeps_its_runs(tmp_path, monkeypatch):
    from plait.stores import sqlite as sqlite_store

    path = tmp_path / "old.db"
    url = f"sqlite:///{path}"
    current = sqlite_store.MIGRATIONS
    run_id, me = new_id("old"), live_holder("me")
    # a database written by a plait that knew only the first schema step
    with monkeypatch.context() as m:
        m.setattr(sqlite_store, "MIGRATIONS", current[:1])
        old = open_store(url)
        try:
            old.create(info(run_id, holder=me))
            old.append(run_id, me, [rec(1), rec(2)], Progress(2, 1))
        finally:
            old.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
        tables = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "calls" not in tables and {"runs", "events"} <= tables
    finally:
        db.close()
    assert len(current) > 1
    store = open_store(url)
    try:
        assert store.get(run_id).tasks_done == 1
        assert [r.seq for r in store.records(run_id)] == [1, 2]
        key = call("f", n=1)
        store.put_calls(run_id, [(key, "2")])
        assert store.get_calls(run_id, [key]) == {key: "2"}
    finally:
        store.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(current)
        assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
    finally:
        db.close()


def test_a_v1_sqlite_file_built_by_hand_is_migrated(tmp_path):
    from plait.stores import sqlite as sqlite_store

    path = tmp_path / "v1.db"
    db = sqlite3.connect(path)
    try:
        db.executescript(sqlite_store.MIGRATIONS[0])
        db.execute("PRAGMA user_version = 1")
        db.execute(
            "INSERT INTO runs VALUES ('v1-run', 'plan', '1. f()', NULL, '[\"f\"]', '{}', "
            "1.0, 2.0, 'done', '42', NULL, NULL, 0, 1, 1)"
        )
        db.commit()
    finally:
        db.close()
    store = open_store(f"sqlite:///{path}")
    try:
        got = store.get("v1-run")
        assert (got.status, got.answer, got.tools) == ("done", "42", ["f"])
        store.put_calls("v1-run", [("f:{}", "1")])
        assert store.get_calls("v1-run", ["f:{}"]) == {"f:{}": "1"}
    finally:
        store.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(sqlite_store.MIGRATIONS)
    finally:
        db.close()


@pytest.mark.postgres
def test_an_old_postgres_database_is_migrated_on_open_and_keeps_its_runs(postgres_url, monkeypatch):
    import psycopg

    from plait.stores import postgres as pg_store

    url = new_database(postgres_url, "plait_old")
    current = pg_store.MIGRATIONS
    run_id, me = new_id("old"), live_holder("me")
    with monkeypatch.context() as m:
        m.setattr(pg_store, "MIGRATIONS", current[:1])
        old = open_store(url)
        try:
            old.create(info(run_id, holder=me))
            old.append(run_id, me, [rec(1)], Progress(1, 0))
        finally:
            old.close()
    store = open_store(url)
    try:
        assert [r.seq for r in store.records(run_id)] == [1]
        assert store.get(run_id).holder == me
        key = call("f", text="é" * 5_000)
        store.put_calls(run_id, [(key, "1")])
        assert store.get_calls(run_id, [key]) == {key: "1"}
    finally:
        store.close()
    with psycopg.connect(url) as db:
        versions = [v for (v,) in db.execute("SELECT version FROM plait_schema ORDER BY version")]
    assert versions == list(range(1, len(current) + 1))


# The schema exactly as plait wrote it before the SQL stores shared one implementation
# (stores/sql.py): databases made then must keep opening, with every operation working.
OLD_SQLITE_SCHEMA = """
CREATE TABLE runs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, source TEXT NOT NULL, model TEXT,
    tools TEXT NOT NULL, options TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
    status TEXT NOT NULL, answer TEXT, error TEXT, holder TEXT, lease_until REAL NOT NULL,
    tasks_total INTEGER NOT NULL, tasks_done INTEGER NOT NULL
);
CREATE INDEX runs_updated ON runs (updated);
CREATE TABLE events (
    run TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, t REAL NOT NULL,
    data TEXT NOT NULL, PRIMARY KEY (run, seq)
) WITHOUT ROWID;
CREATE TABLE calls (
    scope TEXT NOT NULL, digest TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (scope, digest)
);
"""
OLD_POSTGRES_SCHEMA = """
CREATE TABLE plait_schema (version INTEGER NOT NULL);
INSERT INTO plait_schema VALUES (1), (2);
CREATE TABLE plait_runs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, source TEXT NOT NULL, model TEXT,
    tools JSONB NOT NULL, options JSONB NOT NULL, created DOUBLE PRECISION NOT NULL,
    updated DOUBLE PRECISION NOT NULL, status TEXT NOT NULL, answer TEXT, error TEXT,
    holder TEXT, lease_until DOUBLE PRECISION NOT NULL,
    tasks_total INTEGER NOT NULL, tasks_done INTEGER NOT NULL
);
CREATE INDEX plait_runs_updated ON plait_runs (updated);
CREATE TABLE plait_events (
    run TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,
    t DOUBLE PRECISION NOT NULL, data TEXT NOT NULL, PRIMARY KEY (run, seq)
);
CREATE TABLE plait_calls (
    scope TEXT NOT NULL, digest TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (scope, digest)
);
"""


def _works_on_an_old_database(url: str) -> None:
    run_id, me = new_id("old"), live_holder("me")
    store = open_store(url)
    try:
        store.create(info(run_id, holder=me, tools=["f", "g"]))
        store.append(run_id, me, [rec(1), rec(2)], Progress(2, 1))
        with pytest.raises(StoreError, match="already written"):
            store.append(run_id, me, [rec(2)], Progress(2, 2))
        assert store.claim(run_id, me, 30).holder == me
        assert store.renew(run_id, me, 30)
        store.append(run_id, me, [rec(3)], Progress(2, 2, "done", "42", release=True))
        got = store.get(run_id)
        assert (got.status, got.answer, got.holder, got.tools) == ("done", "42", None, ["f", "g"])
        assert [r.seq for r in store.records(run_id)] == [1, 2, 3]
        assert [r.id for r in store.runs()] == [run_id]
        store.put_calls(run_id, [("f:{}", "1")])
        assert store.get_calls(run_id, ["f:{}", "g:{}"]) == {"f:{}": "1"}
        assert store.delete([run_id, "no-such-run"]) == [run_id]
        assert store.get(run_id) is None and list(store.records(run_id)) == []
    finally:
        store.close()


def test_a_sqlite_file_made_by_the_schema_before_sql_py_keeps_working(tmp_path):
    path = tmp_path / "before.db"
    db = sqlite3.connect(path)
    try:
        db.executescript(OLD_SQLITE_SCHEMA)
        db.execute("PRAGMA user_version = 2")
        db.commit()
    finally:
        db.close()
    _works_on_an_old_database(f"sqlite:///{path}")
    db = sqlite3.connect(path)
    try:  # nothing was migrated again
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    finally:
        db.close()


@pytest.mark.postgres
def test_a_postgres_database_made_by_the_schema_before_sql_py_keeps_working(postgres_url):
    import psycopg

    url = new_database(postgres_url, "plait_before")
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(OLD_POSTGRES_SCHEMA)
    _works_on_an_old_database(url)
    with psycopg.connect(url) as db:
        versions = [v for (v,) in db.execute("SELECT version FROM plait_schema ORDER BY version")]
    assert versions == [1, 2]


def test_sqlite_get_calls_stays_under_a_small_parameter_limit(tmp_path):
    from plait.stores.base import CALLS_CHUNK

    store = open_store(f"sqlite:///{tmp_path / 'runs.db'}")
    try:
        store._db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, CALLS_CHUNK + 1)
        scope = new_id("scope")
        items = [(call("f", n=i), str(i)) for i in range(10_000)]
        store.put_calls(scope, items)
        assert store.get_calls(scope, [k for k, _ in items]) == dict(items)
    finally:
        store.close()


# -- credentials, file modes, read-only opening ----------------------------------------------

SECRET = "Pw-s3cret"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:Pw-s3cret@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgres://:Pw-s3cret@h/db", "postgres://:***@h/db"),
        ("postgresql+psycopg://u:Pw-s3cret@h/db", "postgresql+psycopg://u:***@h/db"),
        ("postgresql://u@h/db?password=Pw-s3cret", "postgresql://u@h/db?password=***"),
        (
            "postgresql://u@h/db?sslmode=require&sslpassword=Pw-s3cret&application_name=x@y",
            "postgresql://u@h/db?sslmode=require&sslpassword=***&application_name=x@y",
        ),
        ("postgresql://u@h/db?%70assword=Pw-s3cret", "postgresql://u@h/db?%70assword=***"),
        ("postgresql://u:Pw@s3cret/x?y@h/db", "postgresql://u:***@h/db"),  # raw @ / ? inside
        ("host=h password=Pw-s3cret dbname=d", "host=h password=*** dbname=d"),
        ("host=h password = 'Pw s3cret\\' x' dbname=d", "host=h password = *** dbname=d"),
        ("host=h PASSWORD=Pw-s3cret", "host=h PASSWORD=***"),
        ("postgres:u:Pw-s3cret@h/db", "postgres:***@h/db"),  # mistyped: still hidden
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://h:5432/db", "postgresql://h:5432/db"),
        ("sqlite:///a:b@c.db", "sqlite:///a:b@c.db"),
        ("sqlite:////abs/runs.db", "sqlite:////abs/runs.db"),
        ("memory://x", "memory://x"),
    ],
)
def test_redact_url_hides_every_credential_form_libpq_accepts(url, shown):
    from plait.stores import redact_url

    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://u:{SECRET}@h/db",
        f"mysql://u:{SECRET}@h/db?password={SECRET}",
        f"host=127.0.0.1 password={SECRET}",
        f"host=127.0.0.1 password='{SECRET} x'",
        f"postgres:u:{SECRET}@h/db",
    ],
)
def test_an_unknown_store_url_is_named_without_its_password(url):
    with pytest.raises(StoreError) as info:
        open_store(url)
    assert "unknown store URL" in str(info.value)
    assert SECRET not in str(info.value)


def test_a_new_sqlite_store_is_private_to_its_user(tmp_path):
    tmp_path.chmod(0o755)
    path = tmp_path / "made" / "by" / "plait" / "runs.db"
    store = open_store(f"sqlite:///{path}")
    try:
        store.create(info("private"))
        files = [path, path.with_name("runs.db-wal"), path.with_name("runs.db-shm")]
        assert all(f.exists() for f in files)  # WAL mode: the side files exist while open
        assert {f.name: f.stat().st_mode & 0o777 for f in files} == {f.name: 0o600 for f in files}
        for directory in (path.parent, path.parent.parent, path.parent.parent.parent):
            assert directory.stat().st_mode & 0o777 == 0o700, directory
    finally:
        store.close()
    assert tmp_path.stat().st_mode & 0o777 == 0o755  # a directory it did not make: as it was


def test_opening_read_only_creates_nothing_where_no_store_is(tmp_path):
    path = tmp_path / "missing" / "runs.db"
    store = open_store(f"sqlite:///{path}", readonly=True)
    try:
        assert store.runs() == [] and store.get("any") is None
        assert list(store.records("any")) == []
        with pytest.raises(StoreError, match="read-only"):
            store.create(info("nope"))
    finally:
        store.close()
    assert not path.parent.exists()


def test_opening_read_only_reads_and_changes_nothing(tmp_path):
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    writer = open_store(url)
    writer.create(info("kept"))
    writer.append("kept", live_holder("owner"), [rec(1)], Progress(1, 1, "done", release=True))
    writer.close()
    before = (tmp_path / "runs.db").read_bytes()
    reader = open_store(url, readonly=True)
    try:
        assert [r.id for r in reader.runs()] == ["kept"]
        assert [r.seq for r in reader.records("kept")] == [1]
        with pytest.raises(StoreError, match="read-only"):
            reader.claim("kept", live_holder("thief"), 60)
    finally:
        reader.close()
    assert (tmp_path / "runs.db").read_bytes() == before


def test_an_empty_sqlite_file_opened_read_only_has_no_runs(tmp_path):
    (tmp_path / "runs.db").touch()
    store = open_store(f"sqlite:///{tmp_path / 'runs.db'}", readonly=True)
    try:
        assert store.runs() == []
    finally:
        store.close()
    assert (tmp_path / "runs.db").read_bytes() == b""


def test_a_corrupted_sqlite_file_is_a_store_error_and_is_left_alone(tmp_path):
    path = tmp_path / "runs.db"
    garbage = b"this is not a database\n" * 100
    path.write_bytes(garbage)
    for readonly in (False, True):
        with pytest.raises(StoreError, match="file is not a database"):
            store = open_store(f"sqlite:///{path}", readonly=readonly)
            try:
                store.runs()
            finally:
                store.close()
    assert path.read_bytes() == garbage


@pytest.mark.postgres
def test_opening_postgres_read_only_sets_nothing_up(postgres_url):
    import psycopg

    from plait.stores.postgres import PostgresStore

    url = new_database(postgres_url, "ro")
    store = open_store(url, readonly=True)
    try:
        assert isinstance(store, PostgresStore)
        assert store.runs() == [] and store.get("x") is None
    finally:
        store.close()
    with psycopg.connect(url) as db:
        assert db.execute("SELECT to_regclass('plait_runs')").fetchone() == (None,)
    writer = open_store(url)
    writer.create(info("pg-kept"))
    writer.close()
    reader = open_store(url, readonly=True)
    try:
        assert [r.id for r in reader.runs()] == ["pg-kept"]
        with pytest.raises(StoreError):
            reader.create(info("pg-nope"))
    finally:
        reader.close()


@pytest.mark.postgres
def test_a_postgres_password_never_shows_in_any_form(postgres_url):
    host = postgres_url.split("@", 1)[1]  # 127.0.0.1:PORT/postgres
    for url in (
        f"postgresql://plait:{SECRET}@{host}",
        f"postgresql://plait@{host}?password={SECRET}",
    ):
        store = open_store(url)  # trust auth takes any password
        try:
            assert SECRET not in store.url
            with pytest.raises(RunNotFound) as missing:
                store.claim("no-such-run", "me", 1.0)
            assert SECRET not in str(missing.value)
        finally:
            store.close()
    port = host.split(":")[1].split("/")[0]
    closed = f"postgresql://plait:{SECRET}@127.0.0.1:1/postgres?password={SECRET}"
    bad_port = f"postgresql://plait:{SECRET}@127.0.0.1:{port}x/postgres"
    for url in (closed, bad_port):
        with pytest.raises(StoreError) as failed:
            open_store(url)
        assert SECRET not in str(failed.value)


def test_a_sqlite_store_written_by_a_newer_plait_is_refused_not_misread(tmp_path):
    # A newer plait's schema may store what this one cannot read: opening it for writing
    # (migrating "up to" an older version) or reading it must fail with one clear line.
    from plait.stores import sqlite as sqlite_store

    path = tmp_path / "runs.db"
    url = f"sqlite:///{path}"
    run_id = new_id()
    s = open_store(url)
    s.create(info(run_id))
    s.close()
    newer = len(sqlite_store.MIGRATIONS) + 1
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {newer}")
    db.close()
    for readonly in (False, True):
        with pytest.raises(StoreError) as raised:
            open_store(url, readonly=readonly).get(run_id)
        assert "newer plait" in str(raised.value) and f"version {newer}" in str(raised.value)
        assert "\n" not in str(raised.value)
    db = sqlite3.connect(path)
    try:  # nothing was written: the file is as the newer plait left it
        assert db.execute("PRAGMA user_version").fetchone()[0] == newer
        assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
    finally:
        db.close()


@pytest.mark.postgres
def test_a_postgres_store_written_by_a_newer_plait_is_refused(postgres_url):
    # Opened for writing, or read-only (`plait runs`, `show`, the read-only look of
    # `resume`/`runs rm`): a newer schema is never read as this plait's own.
    import psycopg

    from plait.stores import postgres as pg_store

    url = new_database(postgres_url, "plait_new")
    open_store(url).close()
    newer = len(pg_store.MIGRATIONS) + 1
    with psycopg.connect(url) as db:
        db.execute("INSERT INTO plait_schema VALUES (%s)", (newer,))
    with pytest.raises(StoreError) as raised:
        open_store(url)
    assert "newer plait" in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(StoreError) as raised:
        open_store(url, readonly=True).runs()
    assert "newer plait" in str(raised.value) and f"version {newer}" in str(raised.value)
    assert "\n" not in str(raised.value)


def test_many_opening_a_new_sqlite_store_at_once_all_open_it(tmp_path):
    # Attempts of `--samples N` (or two plait processes started together) open a store that
    # does not exist yet at the same moment: turning a new file to WAL needs it to itself,
    # and SQLite answered "database is locked" at once, not after its busy timeout, so one
    # attempt failed with "cannot open".
    def open_it(url: str, start: threading.Barrier, errors: list[BaseException]) -> None:
        start.wait()
        try:
            open_store(url).close()
        except BaseException as e:
            errors.append(e)

    for round_ in range(15):
        url = f"sqlite:///{tmp_path / f'new{round_}.db'}"
        start = threading.Barrier(6)
        errors: list[BaseException] = []
        threads = [threading.Thread(target=open_it, args=(url, start, errors)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, (round_, errors[0])
