"""The SQL stores' one implementation: the schema and every statement, written once.

SQLite (sqlite.py) and PostgreSQL (postgres.py) keep the same three tables and run the same
statements. A `Dialect` names what differs (the driver's placeholder, the tables' prefix, two
column types, how a claim locks the run's row); a subclass of `SQLStore` brings only its
connection: one write transaction under its lock (`_write`), one read (`_read`), how it
keeps the schema's version, and any faster bulk insert of events.

Statements are written with `?` for a parameter and `{runs}`, `{events}`, `{calls}` for the
tables, `{columns}` and `{row}` for the runs table's columns and a row's placeholders, and
`{marks}` for a list of `n` placeholders.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar

from .base import (
    RUN_COLUMNS,
    Progress,
    Record,
    Row,
    RunExists,
    RunHeld,
    RunInfo,
    RunNotFound,
    StoreError,
    _exists,
    _not_held,
    call_digest,
    chunks,
    info_row,
    may_claim,
    row_info,
)

# Schema steps, in order: each store applies a step once and records how many it has.
# Table and column names never change: databases made by an earlier plait keep opening.
SCHEMA: list[str] = [
    """
    CREATE TABLE {runs} (
        id TEXT PRIMARY KEY, kind TEXT NOT NULL, source TEXT NOT NULL, model TEXT,
        tools {json} NOT NULL, options {json} NOT NULL, created {real} NOT NULL,
        updated {real} NOT NULL, status TEXT NOT NULL, answer TEXT, error TEXT,
        holder TEXT, lease_until {real} NOT NULL,
        tasks_total INTEGER NOT NULL, tasks_done INTEGER NOT NULL
    );
    CREATE INDEX {runs}_updated ON {runs} (updated);
    CREATE TABLE {events} (
        run TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, t {real} NOT NULL,
        data TEXT NOT NULL, PRIMARY KEY (run, seq)
    ){log_options};
    """,
    # 2: merged pure calls' results, by scope (a batch's run id) and the key's sha256 hex: keys
    # can be long (a PostgreSQL btree entry holds ~2.7 KB). The key is kept and compared on read.
    """
    CREATE TABLE {calls} (
        scope TEXT NOT NULL, digest TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
        PRIMARY KEY (scope, digest)
    );
    """,
]
_ROW = ", ".join("?" * len(RUN_COLUMNS.split(",")))  # a runs row's placeholders


@dataclass(frozen=True, slots=True)
class Dialect:
    mark: str  # the driver's placeholder
    prefix: str = ""  # before each table's name
    real: str = "REAL"
    json: str = "TEXT"  # the type of the runs' tools and options
    log_options: str = ""  # after the events table's definition
    lock_row: str = ""  # after a SELECT whose row a write transaction then changes

    def sql(self, text: str, n: int = 0) -> str:
        """`text` (see the module doc) as this dialect writes it; `{marks}` is `n` long."""
        return _render(self, text, n)

    def migrations(self) -> list[str]:
        """The schema's steps (SCHEMA) in this dialect."""
        return [self.sql(step) for step in SCHEMA]


@functools.lru_cache(maxsize=1024)  # the same few statements, rendered once each
def _render(d: Dialect, text: str, n: int) -> str:
    p = d.prefix
    return text.format(
        runs=f"{p}runs",
        events=f"{p}events",
        calls=f"{p}calls",
        columns=RUN_COLUMNS,
        row=_ROW,
        marks=", ".join("?" * n),
        real=d.real,
        json=d.json,
        log_options=d.log_options,
    ).replace("?", d.mark)


def check_version(url: str, version: int) -> int:
    """`version`, the store's schema version, unless a newer plait wrote the store: then
    StoreError (its tables may mean what this plait cannot read; writing could corrupt them)."""
    if version > len(SCHEMA):
        raise StoreError(
            f"{url}: written by a newer plait (schema version {version}; this plait knows "
            f"up to {len(SCHEMA)}): upgrade plait to open it"
        )
    return version


def statements(step: str) -> list[str]:
    """A schema step's statements, one by one (sqlite3 runs one statement a call)."""
    return [s for s in step.split(";") if s.strip()]


class SQLStore:
    """The Store contract over a SQL connection; see stores/base.py for what each method
    promises. Subclasses set `dialect` and `duplicate` (the driver's unique-key error, which
    `_write` lets through unchanged) and implement `_write` and `_read`."""

    dialect: ClassVar[Dialect]
    duplicate: ClassVar[type[Exception] | tuple[type[Exception], ...]]
    url: str

    def _write(self) -> AbstractContextManager[Any]:
        """One write transaction under the store's lock, yielding what runs its statements
        (`execute`, `executemany`); other driver errors become one-line StoreErrors."""
        raise NotImplementedError

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """The rows of one query (none when read-only and the store does not exist yet)."""
        raise NotImplementedError

    def _insert_events(self, db: Any, rows: list[tuple[Any, ...]]) -> None:
        db.executemany(
            self._q("INSERT INTO {events} (run, seq, kind, t, data) VALUES (?, ?, ?, ?, ?)"), rows
        )

    def _q(self, text: str, n: int = 0) -> str:
        return self.dialect.sql(text, n)

    def create(self, info: RunInfo) -> None:
        try:
            with self._write() as db:
                db.execute(self._q("INSERT INTO {runs} ({columns}) VALUES ({row})"), info_row(info))
        except self.duplicate:
            raise RunExists(_exists(info.id, self.url)) from None

    def claim(self, run_id: str, holder: str, ttl: float) -> RunInfo:
        lock = self.dialect.lock_row
        with self._write() as db:
            row = db.execute(
                self._q("SELECT {columns} FROM {runs} WHERE id = ?") + lock, (run_id,)
            ).fetchone()
            if row is None:
                raise RunNotFound(f"no run {run_id} in {self.url}")
            info = row_info(row)
            may_claim(info, holder)
            info.holder, info.lease_until = holder, time.time() + ttl
            db.execute(
                self._q("UPDATE {runs} SET holder = ?, lease_until = ? WHERE id = ?"),
                (holder, info.lease_until, run_id),
            )
        return info

    def renew(self, run_id: str, holder: str, ttl: float) -> bool:
        with self._write() as db:
            cur = db.execute(
                self._q("UPDATE {runs} SET lease_until = ? WHERE id = ? AND holder = ?"),
                (time.time() + ttl, run_id, holder),
            )
            return bool(cur.rowcount == 1)

    def append(self, run_id: str, holder: str, records: Sequence[Row], progress: Progress) -> None:
        rows = [(run_id, *r) for r in records]
        lock = self.dialect.lock_row
        try:
            with self._write() as db:
                row = db.execute(
                    self._q("SELECT holder FROM {runs} WHERE id = ?") + lock, (run_id,)
                ).fetchone()
                if row is None or row[0] != holder:
                    raise RunHeld(_not_held(run_id, row[0] if row else None, holder))
                if rows:
                    self._insert_events(db, rows)
                db.execute(
                    self._q(
                        "UPDATE {runs} SET tasks_total = ?, tasks_done = ?, status = ?, "
                        "answer = ?, error = ?, updated = ? WHERE id = ?"
                    ),
                    (
                        progress.tasks_total,
                        progress.tasks_done,
                        progress.status,
                        progress.answer,
                        progress.error,
                        time.time(),
                        run_id,
                    ),
                )
                if progress.release:
                    db.execute(
                        self._q(
                            "UPDATE {runs} SET holder = NULL, lease_until = 0 "
                            "WHERE id = ? AND holder = ?"
                        ),
                        (run_id, holder),
                    )
                elif progress.lease_until is not None:
                    db.execute(
                        self._q("UPDATE {runs} SET lease_until = ? WHERE id = ?"),
                        (progress.lease_until, run_id),
                    )
        except self.duplicate:
            raise StoreError(f"run {run_id}: a record of this batch is already written") from None

    def get(self, run_id: str) -> RunInfo | None:
        rows = self._read(self._q("SELECT {columns} FROM {runs} WHERE id = ?"), (run_id,))
        return row_info(rows[0]) if rows else None

    def records(self, run_id: str) -> Iterator[Record]:
        rows = self._read(
            self._q("SELECT seq, kind, t, data FROM {events} WHERE run = ? ORDER BY seq"), (run_id,)
        )
        return (Record(*row) for row in rows)

    def runs(self, limit: int = 50) -> list[RunInfo]:
        rows = self._read(
            self._q("SELECT {columns} FROM {runs} ORDER BY updated DESC LIMIT ?"), (limit,)
        )
        return [row_info(r) for r in rows]

    def delete(
        self, run_ids: Sequence[str], keep: Callable[[RunInfo], bool] | None = None
    ) -> list[str]:
        ids = list(dict.fromkeys(run_ids))
        gone: set[str] = set()
        lock = self.dialect.lock_row
        with self._write() as db:
            for part in chunks(ids):
                q = self._q("SELECT {columns} FROM {runs} WHERE id IN ({marks})", len(part))
                infos = [row_info(r) for r in db.execute(q + lock, tuple(part)).fetchall()]
                gone.update(i.id for i in infos if keep is None or not keep(i))
            for part in chunks([i for i in ids if i in gone]):
                n, args = len(part), tuple(part)
                db.execute(self._q("DELETE FROM {events} WHERE run IN ({marks})", n), args)
                db.execute(self._q("DELETE FROM {runs} WHERE id IN ({marks})", n), args)
        return [i for i in ids if i in gone]

    def get_calls(self, scope: str, keys: Sequence[str]) -> dict[str, str]:
        by_digest = {call_digest(k): k for k in keys}
        found: dict[str, str] = {}
        for part in chunks(list(by_digest)):
            rows = self._read(
                self._q(
                    "SELECT digest, key, value FROM {calls} WHERE scope = ? "
                    "AND digest IN ({marks})",
                    len(part),
                ),
                (scope, *part),
            )
            for digest, key, value in rows:
                if by_digest.get(digest) == key:  # a digest collision is a miss, never a mixup
                    found[key] = value
        return found

    def put_calls(self, scope: str, items: Sequence[tuple[str, str]]) -> None:
        rows = [(scope, call_digest(key), key, value) for key, value in items]
        if not rows:
            return
        with self._write() as db:
            db.executemany(
                self._q(
                    "INSERT INTO {calls} (scope, digest, key, value) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT DO NOTHING"
                ),
                rows,
            )
