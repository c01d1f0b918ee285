"""Python tools that print to stdout as the module loads and as they run, one with an
infinite default: stdout under `plait mcp` (stdio) and `plait tools --json` is not theirs."""

from __future__ import annotations

import math

import plait

print("LOUD AT IMPORT", flush=True)


@plait.tool
def scale(x: float, by: float = math.inf) -> float:
    """x times 2, saying so on stdout."""
    print("LOUD IN A CALL", flush=True)
    return x * 2
