"""MCP tools through plait against the MCP SDK's own client, on one stdio MCP server.

The server (written to a temp dir, run with this interpreter) offers `noop(x)`, which
answers at once, and `work(x, ms)`, which waits `ms` milliseconds (an I/O-bound tool).
Sessions are open and warm before any timing, for plait (its one shared session per server)
and for the SDK baseline (one `ClientSession`).

1. Overhead: 200 `noop` calls. SDK: `ClientSession.call_tool` in a loop, and all at once in
   `asyncio.gather`. plait: a plan of 200 independent `noop` tasks through `plait.aexecute`
   (what `plait exec` runs), with `memory://` and with the default SQLite store. Reported:
   µs per call, plait's overhead per call over the SDK's gather, and the ratios.
2. Parallel speed-up: 200 `work(ms=20)` calls, same three ways: plait ÷ loop is the speed-up
   a plan gives over calling one by one; plait ÷ gather what plait costs over hand-written
   concurrency.
3. LLMCompiler against ReAct order: a plan of 3 layers (8 lookups of 50 ms → 4 combines of
   50 ms over pairs of lookups → 1 final combine) run by plait, against the same 13 calls
   made one after another in dependency order through the SDK, as a ReAct agent makes them
   (one tool call per step; the LLM's own time per step is left out, which flatters ReAct).

    python bench/mcp_calls.py [--repeat 3] [--calls 200]

Needs plait[mcp]. Every ratio is against a baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import mcp
from mcp.client.stdio import StdioServerParameters, stdio_client

import plait

SERVER_PY = """\
import asyncio

from mcp.server import MCPServer

server = MCPServer("bench", log_level="CRITICAL")


@server.tool()
def noop(x: int) -> int:
    return x


@server.tool()
async def work(x: int, ms: int = 20) -> int:
    await asyncio.sleep(ms / 1000)
    return x


@server.tool()
async def combine(a: int, b: int = 0, ms: int = 50) -> int:
    await asyncio.sleep(ms / 1000)
    return a + b


if __name__ == "__main__":
    server.run()
"""


async def median(fn: Callable[[], Awaitable[Any]], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


async def main(repeat: int, calls: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="plait-mcp-bench-"))
    server = tmp / "server.py"
    server.write_text(SERVER_PY)
    spec = {"command": sys.executable, "args": [str(server)]}
    config = tmp / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"bench": spec}}))
    tools = plait.load_tools(str(config))  # opens plait's session (once per process)
    sqlite = f"sqlite:///{tmp / 'runs.db'}"

    params = StdioServerParameters(command=sys.executable, args=[str(server)])
    async with stdio_client(params) as (read, write), mcp.ClientSession(read, write) as sdk:
        await sdk.initialize()

        def loop(tool: str, **extra: int) -> Callable[[], Awaitable[Any]]:
            async def go() -> None:
                for i in range(calls):
                    await sdk.call_tool(tool, {"x": i, **extra})

            return go

        def gather(tool: str, **extra: int) -> Callable[[], Awaitable[Any]]:
            async def go() -> None:
                await asyncio.gather(
                    *(sdk.call_tool(tool, {"x": i, **extra}) for i in range(calls))
                )

            return go

        def plan(text: str, store: str = "memory://") -> Callable[[], Awaitable[Any]]:
            async def go() -> None:
                result = await plait.aexecute(text, tools=tools, store=store)
                assert result.ok, result.error

            return go

        noop_plan = "\n".join(f"{i + 1}. noop({i})" for i in range(calls))
        noop_plan += f"\n{calls + 1}. join()"
        work_plan = "\n".join(f"{i + 1}. work({i}, ms=20)" for i in range(calls))
        work_plan += f"\n{calls + 1}. join()"
        await plan(noop_plan)()  # warm both sides
        await gather("noop")()

        print(f"MCP over stdio, {calls} calls, median of {repeat}\n")
        n_loop = await median(loop("noop"), repeat)
        n_gather = await median(gather("noop"), repeat)
        n_plait = await median(plan(noop_plan), repeat)
        n_sqlite = await median(plan(noop_plan, sqlite), repeat)
        us = 1e6 / calls
        print("1. overhead, noop")
        print(f"   SDK call_tool loop     {n_loop * us:8.0f} µs/call")
        print(f"   SDK asyncio.gather     {n_gather * us:8.0f} µs/call")
        print(f"   plait, memory://       {n_plait * us:8.0f} µs/call")
        print(f"   plait, SQLite store    {n_sqlite * us:8.0f} µs/call")
        print(
            f"   plait overhead over gather: {(n_plait - n_gather) * us:.0f} µs/call "
            f"(memory://), {(n_sqlite - n_gather) * us:.0f} µs/call (SQLite); "
            f"plait ÷ gather {n_plait / n_gather:.2f}×, plait ÷ loop {n_plait / n_loop:.2f}×\n"
        )

        w_loop = await median(loop("work", ms=20), repeat)
        w_gather = await median(gather("work", ms=20), repeat)
        w_plait = await median(plan(work_plan), repeat)
        print("2. parallel speed-up, work(ms=20)")
        print(f"   SDK call_tool loop     {w_loop:6.2f} s")
        print(f"   SDK asyncio.gather     {w_gather:6.2f} s")
        print(f"   plait, memory://       {w_plait:6.2f} s")
        print(
            f"   speed-up over the loop {w_loop / w_plait:.1f}×; "
            f"plait ÷ gather {w_plait / w_gather:.2f}×\n"
        )

        lookups = [f"{i + 1}. combine({i}, 0)" for i in range(8)]
        pairs = [f"{9 + j}. combine(${2 * j + 1}, ${2 * j + 2})" for j in range(4)]
        compiler_plan = "\n".join(
            [*lookups, *pairs, "13. combine($9, $10)", "14. combine($13, $11)"]
        )
        compiler_plan += "\n15. combine($14, $12)\n16. join()"

        async def react() -> None:
            found = [
                (await sdk.call_tool("combine", {"a": i, "b": 0})).structured_content["result"]
                for i in range(8)
            ]
            pair = [
                (
                    await sdk.call_tool("combine", {"a": found[2 * j], "b": found[2 * j + 1]})
                ).structured_content["result"]
                for j in range(4)
            ]
            total = pair[0]
            for value in pair[1:]:
                total = await sdk.call_tool("combine", {"a": total, "b": value})
                total = total.structured_content["result"]

        c_react = await median(react, repeat)
        c_plait = await median(plan(compiler_plan), repeat)
        print("3. LLMCompiler plan vs ReAct order, 15 calls of 50 ms (3 levels deep + a chain)")
        print(f"   ReAct order (SDK, one by one)  {c_react:6.2f} s")
        print(f"   plait plan                     {c_plait:6.2f} s")
        print(f"   speed-up {c_react / c_plait:.1f}×")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.repeat, args.calls))
