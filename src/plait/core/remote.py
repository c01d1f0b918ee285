"""Results kept where they were made: a handle the driver, the store and the joiner see.

A backend that runs tools on a cluster (Ray) may keep a large result there and hand back a
`Remote`; later calls on the same backend get the value itself. Everything else in plait
sees only the handle's kind and size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

REMOTE = "$remote"  # a Remote's JSON form is {"$remote": {"remote": KIND, "bytes": N}}


class Remote:
    """A result kept where it was made (a Ray object store), too large to bring home.

    Later calls on the same backend get the value itself, moved between nodes without
    passing through the driver. The driver, the run store and the joiner see only this
    handle: its kind and size. A run store keeps no copy, so a resumed run makes it again.
    """

    __slots__ = ("_fetch", "kind", "nbytes", "ref")
    kept = True  # for code that must not hold on to it (shared calls)

    def __init__(self, ref: Any, kind: str, nbytes: int, fetch: Callable[[Any], Any]) -> None:
        self.ref = ref
        self.kind = kind
        self.nbytes = nbytes
        self._fetch = fetch

    def get(self) -> Any:
        """Bring the value to this process (while the backend that made it is open)."""
        return self._fetch(self.ref)

    def summary(self) -> dict[str, Any]:
        return {"remote": self.kind, "bytes": self.nbytes}

    def __repr__(self) -> str:
        return f"<{self.kind}, {self.nbytes:,} bytes, kept on the cluster>"


def json_fallback(value: Any) -> Any:
    """For JSON output: a Remote as its summary, anything else without a JSON form as repr."""
    if isinstance(value, Remote):
        return {REMOTE: value.summary()}
    return repr(value)


def holds_remote(value: Any) -> bool:
    """Whether a (nested) argument value holds a Remote."""
    if isinstance(value, Remote):
        return True
    if isinstance(value, dict):
        return any(holds_remote(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(holds_remote(v) for v in value)
    return False
