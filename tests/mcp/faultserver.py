"""An MCP server the tests run (stdio, or streamable HTTP with `--http PORT`) to inject
faults: a crash mid-call, calls held until enough are in flight, errors. It counts calls
per tool in files under $FAULT_DIR, so a test sees what reached the server across restarts."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

server = MCPServer("faults", log_level="CRITICAL")
DIR = Path(os.environ.get("FAULT_DIR", "."))
in_flight = 0
peak = 0
_counting = threading.Lock()  # sync tools may run in worker threads at once


def count(name: str) -> int:
    """How many calls of `name` reached a server so far, this one included."""
    with _counting:
        path = DIR / f"{name}.count"
        n = int(path.read_text()) + 1 if path.exists() else 1
        # Written whole or not at all: crash_once may kill this process mid-write, and the
        # next server must not read a truncated count.
        part = path.with_name(f"{path.name}.{os.getpid()}")
        part.write_text(str(n))
        part.replace(path)
        return n


@server.tool(annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True))
def echo(text: str) -> str:
    """Return the text unchanged."""
    count("echo")
    return text


@server.tool()
def add(a: int, b: int = 0) -> int:
    """Add two integers."""
    count("add")
    return a + b


@server.tool()
def crash_once(key: str) -> str:
    """Kill this server process the first time a key is seen; then answer."""
    marker = DIR / f"crashed-{key}"
    if not marker.exists():
        marker.write_text("1")
        os._exit(1)
    return f"survived {key}"


@server.tool()
async def hold(want: int) -> int:
    """Wait until `want` calls are in flight at once (or 0.3 s); return the peak seen."""
    global in_flight, peak
    in_flight += 1
    peak = max(peak, in_flight)
    try:
        for _ in range(30):
            if peak >= want:
                break
            await asyncio.sleep(0.01)
        return peak
    finally:
        in_flight -= 1


@server.tool()
async def wait_forever(tag: str) -> str:
    """Never answer (marks `started-TAG` first)."""
    (DIR / f"started-{tag}").write_text("1")
    await asyncio.sleep(3600)
    return tag


@server.tool()
async def block_once(tag: str) -> str:
    """The first call for a tag never answers (marks `started-TAG`); later ones do."""
    marker = DIR / f"started-{tag}"
    if not marker.exists():
        marker.write_text("1")
        await asyncio.sleep(3600)
    count(f"block_once-{tag}")
    return f"unblocked {tag}"


@server.tool()
def fail(message: str) -> str:
    """Always fail with `message`."""
    raise ToolError(message)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--http":
        asyncio.run(server.run_streamable_http_async(host="127.0.0.1", port=int(sys.argv[2])))
    else:
        server.run()
