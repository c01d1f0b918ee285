"""What the speed-up tests share (test_speedups, test_plan_cache, test_speculative_join): a
two-landmark question, the plan a planner writes for it, and pure tools that log their calls."""

from __future__ import annotations

import plait

PLAN = (
    "Thought: both at once.\n"
    '1. search("Eiffel Tower")\n'
    '2. search("Statue of Liberty")\n'
    "3. compare($1, $2)\n"
    "4. join()\n<END_OF_PLAN>"
)
Q1 = "Which is taller, the Eiffel Tower or the Statue of Liberty?"
Q2 = "Which is taller, the Burj Khalifa or the Tokyo Skytree?"  # Q1's shape, other names


def make_tools(log: list[str] | None = None) -> list[plait.Tool]:
    """`search` and `compare`, both pure; each call is logged: the query, or "compare"."""
    calls = log if log is not None else []

    @plait.tool(pure=True)
    async def search(query: str) -> str:
        calls.append(query)
        return f"{query}: {len(query) * 10} m"

    @plait.tool(pure=True)
    def compare(a: str, b: str) -> str:
        calls.append("compare")
        return a if len(a) >= len(b) else b

    return [search, compare]
