"""plait as an MCP server: `plait mcp`, over stdio or streamable HTTP.

It offers two tools: `run` (a question: planned, executed, joined by the model) and
`execute` (a written plan). Each returns the run's result, the object `plait ... --json`
prints, as structured content (and as its text), with `isError` when the run did not end
`done`. While a run goes, every task that settles is a progress notification (`progress`
= tasks settled, `total` = tasks known so far, the message naming the task), so a client
sees the graph advance. A client that cancels its request cancels the run; the store
records it as cancelled, and `plait resume` can finish it.

The tools are loaded once, when the server starts: a tools file that cannot load, or an MCP
server among them that cannot start, stops `plait mcp` with one line, exit 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import mcp.types as mt
from mcp.server import MCPServer
from mcp.server.mcpserver import Context

from .. import api
from ..core import events as ev
from ..core.tools import Tools
from ..errors import PlaitError
from ..runs.result import RunResult

RUN_DOC = (
    "Answer a question with plait: a model plans it as a graph of tool calls, the calls "
    "run in parallel as the plan streams, and the model joins the results. Returns the "
    "run as JSON: status, answer, error, and every task with its arguments and result."
)
EXECUTE_DOC = (
    "Run a written plait plan without a planner: numbered tasks, one a line, "
    "`N. tool(args)`, `$N` for task N's result, ending with `join()`; e.g. "
    '`1. search("a")\\n2. search("b")\\n3. join()`. Returns the run as JSON.'
)


def build(
    tools: Tools,
    *,
    model: str = api.DEFAULT_MODEL,
    base_url: str | None = None,
    store: str | None = None,
    max_replans: int = 2,
) -> MCPServer:
    """An MCP server whose `run` and `execute` use `tools`, `model` and `store`."""
    server: MCPServer = MCPServer("plait", instructions=_instructions(tools))

    @server.tool(name="run", description=RUN_DOC)
    async def run(question: str, ctx: Context) -> mt.CallToolResult:
        return await _reported(
            ctx,
            lambda on_event: api.arun(
                question,
                tools=tools,
                model=model,
                base_url=base_url,
                max_replans=max_replans,
                store=store,
                on_event=on_event,
            ),
        )

    @server.tool(name="execute", description=EXECUTE_DOC)
    async def execute(plan: str, ctx: Context) -> mt.CallToolResult:
        return await _reported(
            ctx, lambda on_event: api.aexecute(plan, tools=tools, store=store, on_event=on_event)
        )

    return server


async def _reported(
    ctx: Context, start: Callable[[ev.Listener], Awaitable[RunResult]]
) -> mt.CallToolResult:
    """Run, sending a progress notification as each task settles; the result as MCP's."""
    progress = Progress(ctx)
    sender = asyncio.create_task(progress.send())
    try:
        with _quiet_stdout():
            result = await start(progress)
    except PlaitError as e:  # a plan that cannot run, a store that cannot open: one line
        return mt.CallToolResult(
            content=[mt.TextContent(type="text", text=" ".join(str(e).split()))], is_error=True
        )
    finally:
        progress.done()
        try:
            await sender
        except asyncio.CancelledError:
            raise
        except Exception:  # a client gone: the run's outcome still stands
            pass
    text = result.to_json()
    return mt.CallToolResult(
        content=[mt.TextContent(type="text", text=text)],
        structured_content=json.loads(text),
        is_error=not result.ok,
    )


class Progress:
    """An event listener that queues one notification per settled task, sent in order."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.known = 0
        self.settled = 0
        self._queue: asyncio.Queue[tuple[float, float, str] | None] = asyncio.Queue()

    def __call__(self, e: ev.Event) -> None:
        if isinstance(e, ev.TaskAdded):
            self.known += 1
        elif isinstance(e, ev.TaskFinished):
            self.settled += 1
            message = f"task {e.id} {e.status}" + (f": {e.error}" if e.error else "")
            self._queue.put_nowait((self.settled, max(self.known, self.settled), message))

    def done(self) -> None:
        self._queue.put_nowait(None)

    async def send(self) -> None:
        while (item := await self._queue.get()) is not None:
            await self.ctx.report_progress(*item)


def _instructions(tools: Tools) -> str:
    names = ", ".join(sorted(tools)) or "none"
    return f"plait runs task graphs over these tools: {names}."


_stdio = False  # serving over stdio: stdout is the protocol's
_running = 0  # runs going now, in this process's one event loop
_saved: list[Any] = []  # the stdout they replaced


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """While runs go over stdio, what their tools print goes to stderr, not into the
    protocol stream: stdout is swapped when the first run starts, back when the last ends
    (runs overlap, so not one redirect_stdout each)."""
    global _running
    if not _stdio:
        yield
        return
    if _running == 0:
        _saved.append(sys.stdout)
        sys.stdout = sys.stderr
    _running += 1
    try:
        yield
    finally:
        _running -= 1
        if _running == 0:
            sys.stdout = _saved.pop()


async def serve(server: MCPServer, http_port: int | None) -> None:
    """Serve over stdio, or streamable HTTP on 127.0.0.1:PORT/mcp."""
    global _stdio
    if http_port is None:
        _stdio = True
        await server.run_stdio_async()
    else:
        await server.run_streamable_http_async(host="127.0.0.1", port=http_port)
