"""Python tools for the `plait mcp` tests: mixed with MCP ones, and one that waits."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import plait


@plait.tool
def double(x: int) -> int:
    """Twice x."""
    return 2 * x


@plait.tool
async def block(tag: str) -> str:
    """Mark `started-TAG` in $FAULT_DIR, then wait forever."""
    Path(os.environ["FAULT_DIR"], f"started-{tag}").write_text("1")
    await asyncio.sleep(3600)
    return tag


@plait.tool
def shout(text: str) -> str:
    """Print to stdout (which under `plait mcp` must not reach the protocol), return text."""
    print(f"SHOUTING {text}")
    return text.upper()
