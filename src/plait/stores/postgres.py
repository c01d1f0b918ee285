"""postgresql://… — a run store for teams, on PostgreSQL through psycopg 3 (`plait[postgres]`).

The same tables as sqlite.py. Claims lock the run's row (SELECT … FOR UPDATE), so two
processes resuming one run cannot both win; migrations run under an advisory lock, so
processes starting together do not race to create the tables.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

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
    redact_url,
    row_info,
    scrub,
)

try:
    import psycopg
except ImportError:  # pragma: no cover - depends on the extra
    psycopg = None  # type: ignore[assignment]

MIGRATIONS: list[str] = [
    """
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
    """,
    # 2: merged pure calls' results, by scope (a batch's run id) and the key's sha256 hex: a
    # btree entry is limited to ~2.7 KB and keys can be longer. The key is kept and compared.
    """
    CREATE TABLE plait_calls (
        scope TEXT NOT NULL, digest TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
        PRIMARY KEY (scope, digest)
    );
    """,
]
_LOCK_KEY = 0x706C6169  # "plai": the advisory lock that serializes migrations


class PostgresStore:
    """`readonly=True` sets up nothing: its session is read-only, and a database without
    plait's tables reads as a store with no runs."""

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        if psycopg is None:
            raise StoreError("postgresql:// stores need psycopg: pip install 'plait[postgres]'")
        self.url = redact_url(url)  # shown in messages; the password stays in the connection
        self._secret_url = url  # to scrub a driver's message that quotes it
        self.readonly = readonly
        try:
            self._db = psycopg.connect(url, autocommit=False)
        except psycopg.Error as e:
            raise StoreError(f"cannot connect to {self.url}: {self._first_line(e)}") from None
        self._lock = threading.Lock()
        self._empty = False  # read-only, and no tables yet: no runs
        try:
            with _errors(self):
                if readonly:
                    self._db.read_only = True
                    row = self._db.execute("SELECT to_regclass('plait_runs')").fetchone()
                    self._empty = row is None or row[0] is None
                    self._db.commit()
                else:
                    self._migrate()
        except BaseException:
            self._db.close()
            raise

    @classmethod
    def open(cls, url: str, *, readonly: bool = False) -> PostgresStore:
        return cls(url, readonly=readonly)

    def _first_line(self, e: BaseException) -> str:
        return scrub(_first_line(e), self._secret_url)

    def _migrate(self) -> None:
        with self._lock, self._db.transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            self._db.execute("CREATE TABLE IF NOT EXISTS plait_schema (version INTEGER NOT NULL)")
            row = self._db.execute("SELECT max(version) FROM plait_schema").fetchone()
            version = (row[0] if row else None) or 0
            for i, step in enumerate(MIGRATIONS[version:], version + 1):
                self._db.execute(step)  # type: ignore[arg-type]
                self._db.execute("INSERT INTO plait_schema VALUES (%s)", (i,))
        self._db.commit()

    def _tx(self) -> Any:
        return self._db.transaction()

    def create(self, info: RunInfo) -> None:
        with _errors(self), self._lock:
            try:
                with self._tx():
                    self._db.execute(
                        f"INSERT INTO plait_runs ({RUN_COLUMNS}) VALUES ({', '.join(['%s'] * 15)})",
                        info_row(info),
                    )
            except psycopg.errors.UniqueViolation:
                raise RunExists(_exists(info.id, self.url)) from None
            finally:
                self._db.commit()

    def claim(self, run_id: str, holder: str, ttl: float) -> RunInfo:
        with _errors(self), self._lock:
            try:
                with self._tx():
                    row = self._db.execute(
                        f"SELECT {RUN_COLUMNS} FROM plait_runs WHERE id = %s FOR UPDATE", (run_id,)
                    ).fetchone()
                    if row is None:
                        raise RunNotFound(f"no run {run_id} in {self.url}")
                    info = row_info(row)
                    may_claim(info, holder)
                    info.holder, info.lease_until = holder, time.time() + ttl
                    self._db.execute(
                        "UPDATE plait_runs SET holder = %s, lease_until = %s WHERE id = %s",
                        (holder, info.lease_until, run_id),
                    )
            finally:
                self._db.commit()
        return info

    def renew(self, run_id: str, holder: str, ttl: float) -> bool:
        with _errors(self), self._lock:
            try:
                with self._tx():
                    cur = self._db.execute(
                        "UPDATE plait_runs SET lease_until = %s WHERE id = %s AND holder = %s",
                        (time.time() + ttl, run_id, holder),
                    )
                    return cur.rowcount == 1
            finally:
                self._db.commit()

    def append(self, run_id: str, holder: str, records: Sequence[Row], progress: Progress) -> None:
        rows = [(run_id, *r) for r in records]
        with _errors(self), self._lock:
            try:
                with self._tx(), self._db.cursor() as cur:
                    cur.execute("SELECT holder FROM plait_runs WHERE id = %s FOR UPDATE", (run_id,))
                    row = cur.fetchone()
                    if row is None or row[0] != holder:
                        raise RunHeld(_not_held(run_id, row[0] if row else None, holder))
                    if rows:
                        with cur.copy(
                            "COPY plait_events (run, seq, kind, t, data) FROM STDIN"
                        ) as copy:
                            for row in rows:
                                copy.write_row(row)
                    cur.execute(
                        "UPDATE plait_runs SET tasks_total = %s, tasks_done = %s, status = %s, "
                        "answer = %s, error = %s, updated = %s WHERE id = %s",
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
                    if progress.lease_until is not None and not progress.release:
                        cur.execute(
                            "UPDATE plait_runs SET lease_until = %s WHERE id = %s",
                            (progress.lease_until, run_id),
                        )
                    if progress.release:
                        cur.execute(
                            "UPDATE plait_runs SET holder = NULL, lease_until = 0 "
                            "WHERE id = %s AND holder = %s",
                            (run_id, holder),
                        )
            finally:
                self._db.commit()

    def get(self, run_id: str) -> RunInfo | None:
        rows = self._read(f"SELECT {RUN_COLUMNS} FROM plait_runs WHERE id = %s", (run_id,))
        return row_info(rows[0]) if rows else None

    def records(self, run_id: str) -> Iterator[Record]:
        rows = self._read(
            "SELECT seq, kind, t, data FROM plait_events WHERE run = %s ORDER BY seq", (run_id,)
        )
        return (Record(*row) for row in rows)

    def runs(self, limit: int = 50) -> list[RunInfo]:
        rows = self._read(
            f"SELECT {RUN_COLUMNS} FROM plait_runs ORDER BY updated DESC LIMIT %s", (limit,)
        )
        return [row_info(r) for r in rows]

    def delete(self, run_ids: Sequence[str]) -> list[str]:
        ids = list(dict.fromkeys(run_ids))
        with _errors(self), self._lock:
            try:
                with self._tx(), self._db.cursor() as cur:
                    cur.execute("DELETE FROM plait_events WHERE run = ANY(%s)", (ids,))
                    cur.execute("DELETE FROM plait_runs WHERE id = ANY(%s) RETURNING id", (ids,))
                    gone = {row[0] for row in cur.fetchall()}
            finally:
                self._db.commit()
        return [i for i in ids if i in gone]

    def get_calls(self, scope: str, keys: Sequence[str]) -> dict[str, str]:
        by_digest = {call_digest(k): k for k in keys}
        digests = list(by_digest)
        found: dict[str, str] = {}
        for part in chunks(digests):
            rows = self._read(
                "SELECT digest, key, value FROM plait_calls WHERE scope = %s AND digest = ANY(%s)",
                (scope, list(part)),
            )
            for digest, key, value in rows:
                if by_digest.get(digest) == key:  # a digest collision is a miss, never a mixup
                    found[key] = value
        return found

    def put_calls(self, scope: str, items: Sequence[tuple[str, str]]) -> None:
        rows = [(scope, call_digest(key), key, value) for key, value in items]
        if not rows:
            return
        with _errors(self), self._lock:
            try:
                with self._tx(), self._db.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO plait_calls (scope, digest, key, value) "
                        "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                        rows,
                    )
            finally:
                self._db.commit()

    def _read(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        if self._empty:
            return []
        with _errors(self), self._lock:
            try:
                return self._db.execute(sql, args).fetchall()  # type: ignore[arg-type]
            finally:
                self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()


@contextmanager
def _errors(store: PostgresStore) -> Iterator[None]:
    """psycopg's errors as StoreError, one line, naming the store (never its password)."""
    try:
        yield
    except psycopg.Error as e:
        raise StoreError(f"{store.url}: {store._first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
