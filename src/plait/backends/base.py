"""The execution-backend seam: where one tool call runs.

The scheduler decides *when* a call runs (inputs, limits, timeouts, retries, cancellation);
a backend decides only *where*. `local` runs it on the event loop or in a thread pool;
`ray` runs it as a Ray task or on a Ray actor. A backend turns its own failures into
plait's at this seam: the tool's exception as raised, `WorkerLost` when the worker died
under the call, so nothing above it catches a backend's exception types.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..tools import Tool


class Backend(Protocol):
    name: str

    async def call(self, tool: Tool, arguments: dict[str, Any]) -> Any:
        """Run one call and return its result. Cancelling the await stops the call where
        the backend can (a thread cannot be stopped; a Ray task can)."""

    async def aclose(self) -> None:
        """Wait for or stop what is still running, and let go of what was opened."""


class ToolRaised(Exception):
    """A tool raised a BaseException that is not an Exception (SystemExit, KeyboardInterrupt,
    GeneratorExit, its own CancelledError...): the tool's failure like any other, never the
    run's. Backends wrap such an exception in this where it would otherwise stop the loop."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(original)
        self.original = original


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
