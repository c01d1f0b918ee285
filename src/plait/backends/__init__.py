"""Execution backends, chosen by name; each in its own module, imported only when used."""

from __future__ import annotations

import importlib
from typing import Any

from ..core.backend import Backend
from ..core.remote import Remote
from ..errors import PlaitError

# name -> "module:Class"; the class takes the keyword options given to open_backend.
NAMES = {
    "local": "local:LocalBackend",
    "ray": "ray:RayBackend",
}


def open_backend(name: str, **options: Any) -> Backend:
    """The backend a name gives: "local" (the default) or "ray"."""
    target = NAMES.get(name)
    if target is None:
        raise PlaitError(f"unknown backend {name!r} (use {' or '.join(NAMES)})")
    module, _, cls_name = target.partition(":")
    cls = getattr(importlib.import_module(f".{module}", __name__), cls_name)
    return cls(**options)  # type: ignore[no-any-return]


__all__ = ["NAMES", "Backend", "Remote", "open_backend"]
