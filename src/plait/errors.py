"""plait's exceptions: every error a user can cause is a PlaitError with a one-line message.

The CLI turns a PlaitError into one line on stderr and exit code 2, so messages must name
what is wrong and where, and must not rely on a traceback to be understood.
"""

from __future__ import annotations


class PlaitError(Exception):
    """Invalid input: a bad plan, tools file, model spec or flag."""


class PlanError(PlaitError):
    """A plan that cannot be run. `line` is 1-based in the plan text, when known."""

    def __init__(self, message: str, *, line: int | None = None, source: str | None = None) -> None:
        self.message = message
        self.line = line
        self.source = source
        where = f"line {line}: " if line is not None else ""
        super().__init__(f"{where}{message}")


class ToolError(PlaitError):
    """A tools module that cannot be loaded, or arguments that can never fit a tool."""


class TaskFailed(Exception):
    """Raised inside the scheduler when a tool call failed for good (after retries)."""


class WorkerLost(Exception):
    """A call's work was lost with the process or node running it, not failed by the tool.

    Backends raise it at their seam; the scheduler runs the call again elsewhere, within a
    budget of its own that does not spend the tool's `retries`.
    """
