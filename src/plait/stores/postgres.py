"""postgresql://… — a run store for teams, on PostgreSQL through psycopg 3 (`plait[postgres]`).

The same tables as sqlite.py. Claims lock the run's row (SELECT … FOR UPDATE), so two
processes resuming one run cannot both win; migrations run under an advisory lock, so
processes starting together do not race to create the tables.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .base import StoreError, redact_url, scrub
from .sql import Dialect, SQLStore, check_version, statements

try:
    import psycopg
except ImportError:  # pragma: no cover - depends on the extra
    psycopg = None  # type: ignore[assignment]

DIALECT = Dialect(
    mark="%s", prefix="plait_", real="DOUBLE PRECISION", json="JSONB", lock_row=" FOR UPDATE"
)
MIGRATIONS: list[str] = DIALECT.migrations()  # applied once each, counted in plait_schema
_LOCK_KEY = 0x706C6169  # "plai": the advisory lock that serializes migrations


class PostgresStore(SQLStore):
    """`readonly=True` sets up nothing: its session is read-only, and a database without
    plait's tables reads as a store with no runs."""

    dialect = DIALECT
    duplicate = psycopg.errors.UniqueViolation if psycopg is not None else ()

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
            with self._errors():
                if readonly:
                    self._db.read_only = True
                    row = self._db.execute("SELECT to_regclass('plait_runs')").fetchone()
                    self._empty = row is None or row[0] is None
                    if not self._empty:  # read-only too: a newer plait's tables are not ours
                        row = self._db.execute("SELECT max(version) FROM plait_schema").fetchone()
                        check_version(self.url, (row[0] if row else None) or 0)
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

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """psycopg's errors as StoreError, one line, naming the store (never its password);
        a unique key's violation passes unchanged, for `create` and `append` to name."""
        try:
            yield
        except self.duplicate:
            raise
        except psycopg.Error as e:
            raise StoreError(f"{self.url}: {self._first_line(e)}") from None

    def _migrate(self) -> None:
        with self._lock, self._db.transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            self._db.execute("CREATE TABLE IF NOT EXISTS plait_schema (version INTEGER NOT NULL)")
            row = self._db.execute("SELECT max(version) FROM plait_schema").fetchone()
            version = check_version(self.url, (row[0] if row else None) or 0)
            for i, step in enumerate(MIGRATIONS[version:], version + 1):
                for statement in statements(step):
                    self._db.execute(statement)  # type: ignore[arg-type]
                self._db.execute("INSERT INTO plait_schema VALUES (%s)", (i,))
        self._db.commit()

    @contextmanager
    def _write(self) -> Iterator[Any]:
        with self._errors(), self._lock:
            try:
                with self._db.transaction(), self._db.cursor() as cur:
                    yield cur
            finally:
                self._db.commit()

    def _insert_events(self, cur: Any, rows: list[tuple[Any, ...]]) -> None:
        with cur.copy(self._q("COPY {events} (run, seq, kind, t, data) FROM STDIN")) as copy:
            for row in rows:
                copy.write_row(row)

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        if self._empty:
            return []
        with self._errors(), self._lock:
            try:
                return self._db.execute(sql, args).fetchall()  # type: ignore[arg-type]
            finally:
                self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
