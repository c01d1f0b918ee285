"""Deleting runs: `Store.delete` on every store (memory, SQLite, PostgreSQL), and the
`plait runs rm` / `plait runs prune` commands over it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from plait.stores import Progress, Record, RunInfo, Store, open_store
from test_cli import assert_one_line, plait_main
from test_stores import live_holder, new_id


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return f"memory://{new_id('delete')}"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    yield opened
    opened.close()


def finished_run(store: Store, run_id: str, updated_ago: float = 0.0) -> None:
    """A run with a log of two records, finished and released."""
    me = live_holder("writer")
    now = time.time()
    store.create(
        RunInfo(run_id, "plan", "1. f()", tools=["f"], created=now, holder=me, lease_until=now + 60)
    )
    records = [
        Record(1, "session", 0.0, '{"resumed": false}'),
        Record(2, "start", 0.1, '{"id": 1}'),
    ]
    store.append(run_id, me, records, Progress(1, 1, "done", "x", None, release=True))
    if updated_ago:
        _age(store, run_id, updated_ago)


def _age(store: Store, run_id: str, seconds: float) -> None:
    """Make a run look last updated `seconds` ago (no store method sets `updated`)."""
    when = time.time() - seconds
    kind = type(store).__name__
    if kind == "MemoryStore":
        store._runs[run_id].updated = when  # type: ignore[attr-defined]
    elif kind == "SQLiteStore":
        with store._write() as db:  # type: ignore[attr-defined]
            db.execute("UPDATE runs SET updated = ? WHERE id = ?", (when, run_id))
    else:
        with store._lock:  # type: ignore[attr-defined]
            store._db.execute(  # type: ignore[attr-defined]
                "UPDATE plait_runs SET updated = %s WHERE id = %s", (when, run_id)
            )
            store._db.commit()  # type: ignore[attr-defined]


def test_delete_removes_the_runs_and_their_logs_and_says_which(store):
    a, b, keep = new_id("a"), new_id("b"), new_id("keep")
    for run_id in (a, b, keep):
        finished_run(store, run_id)
    gone = store.delete([b, "no-such-run", a, b])
    assert gone == [b, a]  # in the order asked, each once; an unknown id is not "deleted"
    assert store.get(a) is None and store.get(b) is None
    assert list(store.records(a)) == [] and list(store.records(b)) == []
    assert store.get(keep) is not None
    assert len(list(store.records(keep))) == 2
    assert store.delete([a]) == []
    assert store.delete([]) == []


def test_a_deleted_id_can_name_a_new_run(store):
    run_id = new_id()
    finished_run(store, run_id)
    store.delete([run_id])
    finished_run(store, run_id)  # no RunExists, no leftover log records in the way
    assert [r.seq for r in store.records(run_id)] == [1, 2]


def test_delete_is_seen_by_another_connection(store_url, store):
    run_id = new_id()
    finished_run(store, run_id)
    other = open_store(store_url)
    try:
        assert other.get(run_id) is not None
        assert other.delete([run_id]) == [run_id]
    finally:
        other.close()
    assert store.get(run_id) is None


def test_delete_of_many_ids_at_once(store):
    ids = [new_id(f"m{i}") for i in range(1203)]  # more than a statement's chunk of parameters
    for run_id in ids[:5]:
        finished_run(store, run_id)
    assert store.delete(ids) == ids[:5]


# -- plait runs rm / prune ---------------------------------------------------------------


def test_runs_rm_deletes_and_prints_what_it_deleted(capsys, store_url, store):
    a, b, keep = new_id("a"), new_id("b"), new_id("keep")
    for run_id in (a, b, keep):
        finished_run(store, run_id)
    code, out, err = plait_main(capsys, "runs", "rm", a, b, "--store", store_url)
    assert code == 0
    assert out.split() == [a, b]
    assert "deleted 2 runs" in assert_one_line(err)
    code, out, _ = plait_main(capsys, "runs", "--store", store_url, "--json", "--limit", "1000")
    listed = {r["id"] for r in json.loads(out)}  # PostgreSQL's is shared by the session
    assert keep in listed and not {a, b} & listed


def test_runs_rm_takes_the_store_given_to_runs_too(capsys, store_url, store):
    run_id = new_id()
    finished_run(store, run_id)
    code, out, _ = plait_main(capsys, "runs", "--store", store_url, "rm", run_id)
    assert (code, out.split()) == (0, [run_id])
    assert store.get(run_id) is None


def test_runs_rm_deletes_nothing_unless_every_id_can_go(capsys, store_url, store):
    done, running = new_id("done"), new_id("running")
    finished_run(store, done)
    now = time.time()
    store.create(RunInfo(running, "plan", "1. f()", holder=live_holder("x"), lease_until=now + 60))
    code, out, err = plait_main(capsys, "runs", "rm", done, "missing", "--store", store_url)
    assert (code, out) == (2, "")
    assert "no run missing" in assert_one_line(err) and "nothing deleted" in err
    code, out, err = plait_main(capsys, "runs", "rm", done, running, "--store", store_url)
    assert (code, out) == (2, "")
    assert f"run {running} (held by" in assert_one_line(err)
    assert store.get(done) is not None and store.get(running) is not None


def test_runs_prune_deletes_runs_older_than_the_age_and_never_a_held_one(capsys, store_url, store):
    old, fresh, held = new_id("old"), new_id("fresh"), new_id("held")
    finished_run(store, old, updated_ago=8 * 86400)
    finished_run(store, fresh, updated_ago=3600)
    now = time.time()
    store.create(RunInfo(held, "plan", "1. f()", holder=live_holder("x"), lease_until=now + 60))
    _age(store, held, 30 * 86400)
    # (PostgreSQL's store is shared by the session: other tests' old runs may be listed too.)
    code, out, err = plait_main(
        capsys, "runs", "prune", "--older-than", "7d", "--dry-run", "--store", store_url
    )
    assert code == 0
    assert old in out.split() and not {fresh, held} & set(out.split())
    assert f"would delete {len(out.split())} run" in assert_one_line(err)
    assert store.get(old) is not None
    code, out, err = plait_main(capsys, "runs", "prune", "--older-than", "7d", "--store", store_url)
    assert code == 0
    assert old in out.split() and not {fresh, held} & set(out.split())
    assert f"deleted {len(out.split())} run" in assert_one_line(err)
    assert "last updated before" in err
    assert store.get(old) is None
    assert store.get(fresh) is not None and store.get(held) is not None
    code, out, _ = plait_main(
        capsys, "runs", "prune", "--older-than", "30m", "--dry-run", "--store", store_url
    )
    assert fresh in out.split() and held not in out.split()


@pytest.mark.parametrize("age", ["7", "7x", "d7", "-1d", "", "7d junk"])
def test_runs_prune_with_a_bad_age_exits_2(capsys, tmp_path, age):
    code, out, err = plait_main(
        capsys, "runs", "prune", "--older-than", age, "--store", f"sqlite:///{tmp_path}/r.db"
    )
    assert (code, out) == (2, "")
    assert "--older-than" in assert_one_line(err)


@pytest.mark.parametrize("age", ["99999999999999999999w", "9" * 400 + "s", "2000000w", "3200w"])
def test_runs_prune_with_an_age_older_than_the_epoch_exits_2(capsys, tmp_path, age):
    # 99999999999999999999w was an internal error (OverflowError); 3200w is before 1970.
    code, out, err = plait_main(
        capsys, "runs", "prune", "--older-than", age, "--store", f"sqlite:///{tmp_path}/r.db"
    )
    assert (code, out) == (2, "")
    assert "older than the epoch" in assert_one_line(err)


def test_plain_runs_keeps_its_flags(capsys, tmp_path):
    # `runs` became a group: its own flags, and no subcommand, still list the runs.
    url = f"sqlite:///{tmp_path}/r.db"
    opened = open_store(url)
    for i in range(3):
        finished_run(opened, f"r{i}")
    opened.close()
    code, out, _ = plait_main(capsys, "runs", "--store", url, "--limit", "2", "--json")
    assert code == 0
    assert len(json.loads(out)) == 2


def test_a_wrong_store_url_or_id_creates_no_store(capsys, tmp_path, example_tools):
    # A typo in --store (or an ID that is not there) must not leave an empty store behind,
    # which a later `plait runs` would then read as "no runs" instead of the real store.
    for argv in (
        ["runs", "rm", "nope"],
        ["resume", "nope", "--tools", example_tools],
    ):
        url = f"sqlite:///{tmp_path / 'typo' / 'runs.db'}"
        code, out, err = plait_main(capsys, *argv, "--store", url)
        assert (code, out) == (2, "")
        assert "no run nope" in assert_one_line(err)
        assert not (tmp_path / "typo").exists(), argv
    url = f"sqlite:///{tmp_path / 'typo' / 'runs.db'}"
    code, _, err = plait_main(capsys, "runs", "prune", "--older-than", "1d", "--store", url)
    assert code == 0 and "deleted 0 runs" in assert_one_line(err)
    assert not (tmp_path / "typo").exists()
