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

from .base import StoreError
from .sql import Dialect, SQLStore, check_version, statements

DIALECT = Dialect(mark="?", log_options=" WITHOUT ROWID")
MIGRATIONS: list[str] = DIALECT.migrations()  # applied once each, counted in user_version

BUSY_SECONDS = 5.0  # how long a write waits for the file's lock: well inside a lease


class SQLiteStore(SQLStore):
    """The file is created 0600 (SQLite gives its -wal and -shm files the same mode) and a
    directory plait makes for it 0700: a store holds questions, plans, results and answers.

    `readonly=True` opens with `mode=ro`, changing and creating nothing: a missing file reads
    as a store with no runs, and a file in a directory this user cannot write (where the
    WAL's side files cannot be made) is opened immutable."""

    dialect = DIALECT
    duplicate = sqlite3.IntegrityError

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
            _to_wal(self._db)
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
        try:
            version = check_version(self.url, db.execute("PRAGMA user_version").fetchone()[0])
        except StoreError:
            db.close()
            raise
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

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
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
            version = check_version(self.url, db.execute("PRAGMA user_version").fetchone()[0])
            for i, step in enumerate(MIGRATIONS[version:], version + 1):
                for statement in statements(step):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {i}")

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()


def _to_wal(db: sqlite3.Connection) -> None:
    """Put the file in WAL mode. Turning a new file to WAL needs it to itself, and SQLite
    answers "database is locked" at once (no busy timeout) while another connection is
    doing the same: so ask again, for up to `BUSY_SECONDS` (many open a new store at once:
    the attempts of `--samples`, processes started together)."""
    deadline = time.monotonic() + BUSY_SECONDS
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _make_private(path: Path) -> None:
    """Make the missing directories 0700 and a missing store file 0600, before SQLite opens
    it (its -wal and -shm files then take the file's mode)."""
    missing = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it first
            directory.mkdir(mode=0o700)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
