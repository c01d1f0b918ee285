"""The run store seam: what a store must do, in a few synchronous methods.

A store keeps, per run, one `RunInfo` row (what was asked, who holds it, how far it got) and
an append-only log of `Record`s, the run's events as JSON. It never stores a snapshot of a
running graph: the resume rule (a task recorded finished never runs again) follows from the
log alone. Methods are blocking; `runlog.RunLog` calls them from its writer thread, off the
event loop. One file per implementation: memory.py, sqlite.py, postgres.py.

Calls: a store also keeps the results of a run's merged pure calls (core/shared.py), by call key
under a scope (the batch's run id), so a resumed batch does not make them again. A key is
stored once: its first value stays. Keys can be long (canonical JSON of arguments), so the
SQL stores index a digest of the key (`call_digest`) and keep and compare the key itself.

Leases: a run is held by one process at a time. `claim` succeeds when the run is free, its
lease has expired, or its holder is a dead process on this host (so a resume right after a
crash need not wait out the lease). Holders renew while they run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol
from urllib.parse import unquote

from ..errors import PlaitError

LEASE_SECONDS = 15.0
REDACTED = "***"
CALLS_CHUNK = 500  # keys per query when reading calls: no statement with 10,000 parameters


class StoreError(PlaitError):
    """The store cannot do what was asked: a bad URL, a missing run, a run held elsewhere."""


class RunNotFound(StoreError):
    pass


class RunExists(StoreError):
    pass


def _not_held(run_id: str, holder: str | None, writer: str) -> str:
    return f"run {run_id} is held by {holder or 'nobody'}, not by this writer ({writer})"


def _exists(run_id: str, url: str) -> str:
    return f"run {run_id} already exists in {url} (finish it with `plait resume {run_id}`)"


class RunHeld(StoreError):
    pass


@dataclass(slots=True)
class RunInfo:
    """One run's row. `kind` is "plan" (a written plan, `source` is its text) or "question"."""

    id: str
    kind: str
    source: str
    model: str | None = None
    tools: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0  # unix time
    updated: float = 0.0
    status: str = "running"  # running, done, failed, cancelled
    answer: str | None = None
    error: str | None = None
    holder: str | None = None
    lease_until: float = 0.0
    tasks_total: int = 0
    tasks_done: int = 0

    @property
    def held(self) -> bool:
        """Someone is running it now (its lease is live and its holder not known dead)."""
        return self.holder is not None and self.lease_until > time.time() and not dead(self.holder)

    @property
    def state(self) -> str:
        """status, with a run nobody holds any more shown as interrupted."""
        if self.status == "running" and not self.held:
            return "interrupted"
        return self.status


class Record(NamedTuple):
    """One entry of a run's log: `data` is the event as JSON text, `t` seconds since created.

    Writers may pass plain `(seq, kind, t, data)` tuples: the garbage collector stops
    tracking tuples of plain values, which matters with a million queued records.
    """

    seq: int
    kind: str
    t: float
    data: str


Row = tuple[int, str, float, str]


@dataclass(slots=True)
class Progress:
    """Written with each batch so `plait runs` need not read the log."""

    tasks_total: int
    tasks_done: int
    status: str = "running"
    answer: str | None = None
    error: str | None = None
    release: bool = False  # the run ended: give up the lease
    lease_until: float | None = None  # else keep it: a commit renews the lease it writes under


class Store(Protocol):
    url: str

    def create(self, info: RunInfo) -> None:
        """Insert a new run held by `info.holder`; RunExists if the id is taken."""

    def claim(self, run_id: str, holder: str, ttl: float) -> RunInfo:
        """Take the run's lease (see module doc); RunNotFound or RunHeld if not possible."""

    def renew(self, run_id: str, holder: str, ttl: float) -> bool:
        """Extend the lease; False if `holder` no longer holds it."""

    def append(self, run_id: str, holder: str, records: Sequence[Row], progress: Progress) -> None:
        """Add records (Records or plain tuples) and update the run's row in one transaction."""

    def get(self, run_id: str) -> RunInfo | None: ...

    def records(self, run_id: str) -> Iterator[Record]:
        """The run's log in order."""

    def runs(self, limit: int = 50) -> list[RunInfo]:
        """The most recently updated runs first."""

    def delete(
        self, run_ids: Sequence[str], keep: Callable[[RunInfo], bool] | None = None
    ) -> list[str]:
        """Remove these runs and their logs, in one transaction; return the ids that went.
        The caller decides what may go: `keep`, asked of each run as that transaction sees
        it, spares those it is true of (a run claimed since the caller looked, for `plait
        runs prune`), and may raise: then nothing goes (`plait runs rm` refuses a held run)."""

    def get_calls(self, scope: str, keys: Sequence[str]) -> dict[str, str]:
        """The stored results (JSON text) of those of `keys` that `scope` has; others absent."""

    def put_calls(self, scope: str, items: Sequence[tuple[str, str]]) -> None:
        """Store (key, result JSON text) pairs under `scope`, in one transaction; a key already
        stored keeps its first value (INSERT ... ON CONFLICT DO NOTHING)."""

    def close(self) -> None: ...


def call_digest(key: str) -> str:
    """The SQL stores' index on a call key: sha256 hex, short whatever the key's length."""
    return hashlib.sha256(key.encode()).hexdigest()


def chunks(keys: Sequence[str], size: int = CALLS_CHUNK) -> Iterator[Sequence[str]]:
    """`keys` in slices of at most `size`, for queries with a bounded number of parameters."""
    for start in range(0, len(keys), size):
        yield keys[start : start + size]


# The runs table's columns, in RunInfo's field order; `info_row` and `row_info` convert.
RUN_COLUMNS = (
    "id, kind, source, model, tools, options, created, updated, status, answer, error, "
    "holder, lease_until, tasks_total, tasks_done"
)


def info_row(i: RunInfo) -> tuple[Any, ...]:
    """A RunInfo as the SQL stores' row: tools and options as JSON text."""
    return (
        i.id,
        i.kind,
        i.source,
        i.model,
        json.dumps(i.tools),
        json.dumps(i.options),
        i.created,
        i.updated,
        i.status,
        i.answer,
        i.error,
        i.holder,
        i.lease_until,
        i.tasks_total,
        i.tasks_done,
    )


def row_info(row: Any) -> RunInfo:
    """A SQL stores' row as a RunInfo (JSON columns may come back decoded, as JSONB does)."""
    values = list(row)
    for i in (4, 5):
        if isinstance(values[i], str):
            values[i] = json.loads(values[i])
    return RunInfo(*values)


def new_holder() -> str:
    """host:pid:nonce, so a claim can tell a dead local holder from a live remote one."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def dead(holder: str) -> bool:
    """True only when `holder` is a process on this host that no longer exists."""
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _zombie(pid)


def _zombie(pid: int) -> bool:
    # A SIGKILLed child that its parent has not reaped yet still answers kill(pid, 0).
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def may_claim(info: RunInfo, holder: str) -> None:
    """Raise RunHeld unless `holder` may take `info`'s lease now."""
    if info.holder is None or info.holder == holder or not info.held:
        return
    left = info.lease_until - time.time()
    raise RunHeld(
        f"run {info.id} is held by {info.holder} (its lease ends in {left:.0f}s unless renewed)"
    )


# A keyword/value connection string's password (libpq: `password = 'it\\'s'`, `sslpassword=x`).
_KEYWORD_SECRET = re.compile(r"\b(?:ssl)?password\s*=\s*('(?:[^'\\]|\\.)*(?:'|$)|\S*)", re.I)
_SECRET_PARAMS = ("password", "sslpassword")
_PARAM = re.compile(r"[?&]([^?&=]*)=([^&]*)")


def _secret_spans(url: str) -> list[tuple[int, int]]:
    """Where the credentials are in a store URL or connection string (start, end), in order:
    the password in `scheme://user:PW@host`, `password=` and `sslpassword=` query parameters
    (names percent-decoded, as libpq does), and `password=` in a keyword/value string."""
    scheme, sep, rest = url.partition("://")
    spans = []
    if not sep:  # a keyword/value string, or something mistyped: `postgres:u:PW@host`
        spans = [m.span(1) for m in _KEYWORD_SECRET.finditer(url)]
        at, colon = url.rfind("@"), url.find(":")
        if 0 <= colon < at:
            spans.append((colon + 1, at))
        return _merged(spans)
    base = len(scheme) + len(sep)
    at = rest.rfind("@")  # the last @: a password holding a raw @, / or ? is hidden whole
    if at > 0 and not rest.startswith("/"):
        colon = rest.find(":", 0, at)
        if colon >= 0:
            spans.append((base + colon + 1, base + at))
    for m in _PARAM.finditer(rest):  # any ?key= or &key=, wherever the userinfo ends
        if unquote(m.group(1)).strip().lower() in _SECRET_PARAMS:
            spans.append((base + m.start(2), base + m.end(2)))
    return _merged(spans)


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged


def redact_url(url: str) -> str:
    """A store URL (or any connection string) as it may be shown: every credential libpq
    accepts replaced by ***. Every message, hint and header that shows a store URL goes
    through this one helper."""
    out, last = [], 0
    for start, end in _secret_spans(url):
        out += [url[last:start], REDACTED]
        last = end
    return "".join([*out, url[last:]])


def url_secrets(url: str) -> list[str]:
    """The credentials `redact_url` hides, as written and decoded: to scrub them from a
    driver's error message, which may quote what it could not parse."""
    found = {url[a:b] for a, b in _secret_spans(url)}
    found |= {unquote(x) for x in found}
    found |= {x.strip("'").replace("\\'", "'").replace("\\\\", "\\") for x in found}
    return sorted((x for x in found if len(x) >= 3), key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """`text` with the URL's credentials replaced by ***."""
    for secret in url_secrets(url):
        text = text.replace(secret, REDACTED)
    return text
