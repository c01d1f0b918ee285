"""Run stores, chosen by URL; each in its own module, imported only when its scheme is used."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from .base import (
    LEASE_SECONDS,
    Progress,
    Record,
    RunExists,
    RunHeld,
    RunInfo,
    RunNotFound,
    Store,
    StoreError,
    redact_url,
)

# scheme -> "module:Class"; the class has `open(url)`.
SCHEMES = {
    "memory": "memory:MemoryStore",
    "sqlite": "sqlite:SQLiteStore",
    "postgresql": "postgres:PostgresStore",
    "postgres": "postgres:PostgresStore",
}


def open_store(url: str, *, readonly: bool = False) -> Store:
    """The store a URL names: memory://[NAME], sqlite:///PATH, postgresql://…

    `readonly=True` (for `plait runs` and `plait show`) changes nothing and creates nothing:
    a store that does not exist yet reads as one with no runs."""
    scheme, sep, _ = url.partition("://")
    target = SCHEMES.get(scheme) if sep else None
    if target is None:
        known = "memory://, sqlite:///PATH.db, postgresql://USER@HOST/DB"
        raise StoreError(f"unknown store URL {redact_url(url)!r} (use {known})")
    module, _, name = target.partition(":")
    cls = getattr(importlib.import_module(f".{module}", __name__), name)
    return cls.open(url, readonly=readonly)  # type: ignore[no-any-return]


def default_store_url() -> str:
    """$PLAIT_STORE, else a SQLite file in the per-user data directory."""
    if url := os.environ.get("PLAIT_STORE"):
        return url
    from platformdirs import user_data_dir

    return f"sqlite:///{Path(user_data_dir('plait')) / 'runs.db'}"


__all__ = [
    "LEASE_SECONDS",
    "Progress",
    "Record",
    "RunExists",
    "RunHeld",
    "RunInfo",
    "RunNotFound",
    "Store",
    "StoreError",
    "default_store_url",
    "open_store",
    "redact_url",
]
