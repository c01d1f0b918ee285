"""sqlite:///PATH — the embedded default store: one file, WAL, many processes.

`sqlite:///runs.db` is relative to the working directory, `sqlite:////abs/runs.db` absolute
(SQLAlchemy's convention). WAL lets readers (`plait runs`) and one writer at a time work side
by side; writes take the lock up front (BEGIN IMMEDIATE) and wait up to `busy_timeout` for
it, so several processes can write one file. synchronous=NORMAL: a killed process loses
nothing committed; only a power cut can lose the last commits.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

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

# Schema steps, in order; applied once each and counted in user_version.
MIGRATIONS: list[str] = [
    """
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
    """,
    # 2: merged pure calls' results, by scope (a batch's run id) and the key's sha256 hex.
    # A rowid table: values can be large. The key is kept and compared on read.
    """
    CREATE TABLE calls (
        scope TEXT NOT NULL, digest TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
        PRIMARY KEY (scope, digest)
    );
    """,
]

BUSY_SECONDS = 5.0  # how long a write waits for the file's lock: well inside a lease


class SQLiteStore:
    """The file is created 0600 (SQLite gives its -wal and -shm files the same mode) and a
    directory plait makes for it 0700: a store holds questions, plans, results and answers.

    `readonly=True` opens with `mode=ro`, changing and creating nothing: a missing file reads
    as a store with no runs, and a file in a directory this user cannot write (where the
    WAL's side files cannot be made) is opened immutable."""

    def __init__(self, path: str | Path, url: str | None = None, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.url = url or f"sqlite:///{self.path}"
        self.readonly = readonly
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        try:
            if readonly:
                self._db = self._open_readonly()
                return
            _make_private(self.path)
            self._db = sqlite3.connect(
                self.path, timeout=BUSY_SECONDS, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        except (OSError, sqlite3.Error) as e:
            if self._db is not None:
                self._db.close()
            raise StoreError(f"cannot open {self.url}: {e}") from None
        try:
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def _open_readonly(self) -> sqlite3.Connection | None:
        """A read-only connection, or None when there is no store file (no runs)."""
        if not self.path.is_file():
            if self.path.exists():
                raise StoreError(f"cannot open {self.url}: {self.path} is not a file")
            return None
        target = f"file:{quote(str(self.path.absolute()))}"
        try:
            db = self._connect(f"{target}?mode=ro")
        except sqlite3.OperationalError:
            if os.access(self.path.parent, os.W_OK):
                raise
            # A WAL reader must make the -shm file; where it cannot, read the file as it is.
            db = self._connect(f"{target}?immutable=1")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:  # an empty file, never set up: no runs
            db.close()
            return None
        return db

    @staticmethod
    def _connect(uri: str) -> sqlite3.Connection:
        db = sqlite3.connect(
            uri, uri=True, timeout=BUSY_SECONDS, isolation_level=None, check_same_thread=False
        )
        try:
            db.execute("PRAGMA user_version").fetchone()  # opening is lazy: read something
        except BaseException:
            db.close()
            raise
        return db

    @classmethod
    def open(cls, url: str, *, readonly: bool = False) -> SQLiteStore:
        path = url.removeprefix("sqlite:///")
        if not path or path == url:
            raise StoreError(
                f"bad sqlite URL {url!r}: use sqlite:///relative.db or sqlite:////abs.db"
            )
        return cls(path, url, readonly=readonly)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the file's write lock from its start."""
        db = self._db
        if db is None or self.readonly:
            raise StoreError(f"{self.url} is open read-only")
        with self._lock:
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise StoreError(f"{self.url}: {e}") from None
            try:
                yield db
                db.execute("COMMIT")
            except BaseException as e:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error) and not isinstance(e, sqlite3.IntegrityError):
                    raise StoreError(f"{self.url}: {e}") from None
                raise

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        db = self._db
        if db is None:
            return []  # read-only, and no store file: no runs
        with self._lock:
            try:
                return db.execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise StoreError(f"{self.url}: {e}") from None

    def _migrate(self) -> None:
        with self._write() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for i, step in enumerate(MIGRATIONS[version:], version + 1):
                for statement in step.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {i}")

    def create(self, info: RunInfo) -> None:
        try:
            with self._write() as db:
                db.execute(
                    f"INSERT INTO runs ({RUN_COLUMNS}) VALUES ({', '.join('?' * 15)})",
                    info_row(info),
                )
        except sqlite3.IntegrityError:
            raise RunExists(_exists(info.id, self.url)) from None

    def claim(self, run_id: str, holder: str, ttl: float) -> RunInfo:
        with self._write() as db:
            row = db.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFound(f"no run {run_id} in {self.url}")
            info = row_info(row)
            may_claim(info, holder)
            info.holder, info.lease_until = holder, time.time() + ttl
            db.execute(
                "UPDATE runs SET holder = ?, lease_until = ? WHERE id = ?",
                (holder, info.lease_until, run_id),
            )
        return info

    def renew(self, run_id: str, holder: str, ttl: float) -> bool:
        with self._write() as db:
            cur = db.execute(
                "UPDATE runs SET lease_until = ? WHERE id = ? AND holder = ?",
                (time.time() + ttl, run_id, holder),
            )
            return cur.rowcount == 1

    def append(self, run_id: str, holder: str, records: Sequence[Row], progress: Progress) -> None:
        rows = [(run_id, *r) for r in records]
        with self._write() as db:
            row = db.execute("SELECT holder FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None or row[0] != holder:
                raise RunHeld(_not_held(run_id, row[0] if row else None, holder))
            db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?)", rows)
            db.execute(
                "UPDATE runs SET tasks_total = ?, tasks_done = ?, status = ?, answer = ?, "
                "error = ?, updated = ? WHERE id = ?",
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
                db.execute(
                    "UPDATE runs SET lease_until = ? WHERE id = ?", (progress.lease_until, run_id)
                )
            if progress.release:
                db.execute(
                    "UPDATE runs SET holder = NULL, lease_until = 0 WHERE id = ? AND holder = ?",
                    (run_id, holder),
                )

    def get(self, run_id: str) -> RunInfo | None:
        rows = self._read(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
        return row_info(rows[0]) if rows else None

    def records(self, run_id: str) -> Iterator[Record]:
        rows = self._read(
            "SELECT seq, kind, t, data FROM events WHERE run = ? ORDER BY seq", (run_id,)
        )
        return (Record(*row) for row in rows)

    def runs(self, limit: int = 50) -> list[RunInfo]:
        rows = self._read(f"SELECT {RUN_COLUMNS} FROM runs ORDER BY updated DESC LIMIT ?", (limit,))
        return [row_info(r) for r in rows]

    def delete(self, run_ids: Sequence[str]) -> list[str]:
        ids = list(dict.fromkeys(run_ids))
        gone: set[str] = set()
        with self._write() as db:
            for part in chunks(ids):
                marks = ", ".join("?" * len(part))
                rows = db.execute(f"SELECT id FROM runs WHERE id IN ({marks})", tuple(part))
                gone.update(row[0] for row in rows)
                db.execute(f"DELETE FROM events WHERE run IN ({marks})", tuple(part))
                db.execute(f"DELETE FROM runs WHERE id IN ({marks})", tuple(part))
        return [i for i in ids if i in gone]

    def get_calls(self, scope: str, keys: Sequence[str]) -> dict[str, str]:
        by_digest = {call_digest(k): k for k in keys}
        digests = list(by_digest)
        found: dict[str, str] = {}
        for part in chunks(digests):
            rows = self._read(
                f"SELECT digest, key, value FROM calls WHERE scope = ? "
                f"AND digest IN ({', '.join('?' * len(part))})",
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
                "INSERT INTO calls (scope, digest, key, value) VALUES (?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                rows,
            )

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()


def _make_private(path: Path) -> None:
    """Make the missing directories 0700 and a missing store file 0600, before SQLite opens
    it (its -wal and -shm files then take the file's mode)."""
    missing = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it first
            directory.mkdir(mode=0o700)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
