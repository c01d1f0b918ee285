"""memory:// — a run store in this process's memory, for tests and throwaway runs.

`memory://NAME` names a store shared by everything in the process that opens the same URL;
plain `memory://` is a fresh, private one.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from .base import (
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
    may_claim,
)

_named: dict[str, MemoryStore] = {}


class MemoryStore:
    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._lock = threading.Lock()
        self._runs: dict[str, RunInfo] = {}
        self._log: dict[str, list[Row]] = {}
        self._calls: dict[str, dict[str, str]] = {}  # scope -> key -> result JSON

    @classmethod
    def open(cls, url: str, *, readonly: bool = False) -> MemoryStore:
        name = url.removeprefix("memory://")
        if not name:
            return cls(url)
        if readonly:  # only looks: names no store into being
            return _named.get(name) or cls(url)
        return _named.setdefault(name, cls(url))

    def create(self, info: RunInfo) -> None:
        with self._lock:
            if info.id in self._runs:
                raise RunExists(_exists(info.id, self.url))
            self._runs[info.id] = copy.deepcopy(info)
            self._log[info.id] = []

    def claim(self, run_id: str, holder: str, ttl: float) -> RunInfo:
        with self._lock:
            info = self._runs.get(run_id)
            if info is None:
                raise RunNotFound(f"no run {run_id} in {self.url}")
            may_claim(info, holder)
            info.holder, info.lease_until = holder, time.time() + ttl
            return copy.deepcopy(info)

    def renew(self, run_id: str, holder: str, ttl: float) -> bool:
        with self._lock:
            info = self._runs.get(run_id)
            if info is None or info.holder != holder:
                return False
            info.lease_until = time.time() + ttl
            return True

    def append(self, run_id: str, holder: str, records: Sequence[Row], progress: Progress) -> None:
        with self._lock:
            info = self._runs[run_id]
            if info.holder != holder:
                raise RunHeld(_not_held(run_id, info.holder, holder))
            log = self._log[run_id]
            last = log[-1][0] if log else 0
            for r in records:
                if r[0] <= last:
                    raise StoreError(f"run {run_id}: record {r[0]} is already written")
                last = r[0]
            log.extend((r[0], r[1], r[2], r[3]) for r in records)
            info.tasks_total, info.tasks_done = progress.tasks_total, progress.tasks_done
            info.status, info.answer, info.error = progress.status, progress.answer, progress.error
            info.updated = time.time()
            if progress.lease_until is not None:
                info.lease_until = progress.lease_until
            if progress.release and info.holder == holder:
                info.holder, info.lease_until = None, 0.0

    def get(self, run_id: str) -> RunInfo | None:
        with self._lock:
            info = self._runs.get(run_id)
            return None if info is None else copy.deepcopy(info)

    def records(self, run_id: str) -> Iterator[Record]:
        with self._lock:
            log = list(self._log.get(run_id, ()))
        return (Record(*r) for r in log)

    def runs(self, limit: int = 50) -> list[RunInfo]:
        with self._lock:
            infos = sorted(self._runs.values(), key=lambda i: i.updated, reverse=True)
            return [copy.deepcopy(i) for i in infos[:limit]]

    def delete(
        self, run_ids: Sequence[str], keep: Callable[[RunInfo], bool] | None = None
    ) -> list[str]:
        with self._lock:
            gone = [i for i in dict.fromkeys(run_ids) if i in self._runs]
            if keep is not None:
                gone = [i for i in gone if not keep(copy.deepcopy(self._runs[i]))]
            for run_id in gone:
                del self._runs[run_id]
                self._log.pop(run_id, None)
            return gone

    def get_calls(self, scope: str, keys: Sequence[str]) -> dict[str, str]:
        with self._lock:
            stored = self._calls.get(scope)
            if not stored:
                return {}
            return {k: stored[k] for k in keys if k in stored}

    def put_calls(self, scope: str, items: Sequence[tuple[str, str]]) -> None:
        pairs = [(key, value) for key, value in items]  # all or nothing, like a transaction
        if not pairs:
            return
        with self._lock:
            stored = self._calls.setdefault(scope, {})
            for key, value in pairs:
                stored.setdefault(key, value)

    def close(self) -> None:
        pass
