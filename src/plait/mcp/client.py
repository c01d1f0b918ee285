"""MCP servers as plait tools: an MCP client config file in, `SchemaTool`s out.

The config is the one MCP clients already use:

    {"mcpServers": {"time": {"command": "mcp-server-time", "args": [], "env": {}},
                    "docs": {"url": "http://127.0.0.1:8000/mcp", "headers": {...}}}}

plus, per server, optional `"max_concurrency": N` (calls in flight to it at once) and
`"timeout": SECONDS` (a call that takes longer fails, and its request is cancelled).

Every server gets one session per process, opened once and shared by every run and batch
item. Sessions live on one event loop of their own, on a daemon thread (the hub): a tools
file is loaded synchronously, runs may each use a loop of their own (`plait.execute` does),
and a session's transport must be opened and closed on one loop. A call crosses to the hub
and back; cancelling it cancels the request there.

A server that exits or disconnects under a call is reset and the call raises `WorkerLost`:
the scheduler runs it again (restarting the server) as it does a call whose Ray worker died.
A server that cannot start when its tools are loaded is a one-line ToolError naming it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Coroutine, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from ..core.task import JOIN
from ..core.tools import Tools
from ..errors import ToolError, WorkerLost
from .schematool import SchemaTool

try:
    import anyio
    import mcp
    import mcp.types as mt
    from mcp.client.stdio import StdioServerParameters, stdio_client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.exceptions import MCPError
except ImportError as e:  # pragma: no cover - the extra is missing
    raise ToolError(f"MCP tools need plait[mcp]: pip install 'plait[mcp]' ({e})") from None

__all__ = ["McpToolFailed", "Server", "load_config", "load_config_tools", "servers"]

T = TypeVar("T")
START_TIMEOUT = 30.0  # seconds a server gets to start and answer `initialize`
# What a session raises when its server went away: the call was lost, not failed.
LOST = (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream, OSError)


class McpToolFailed(Exception):
    """The server answered the call with `isError`: the task fails with its text."""


def load_config(path: str) -> dict[str, dict[str, Any]]:
    """The servers of an MCP config file by name, each checked for what plait needs."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ToolError(f"MCP config not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ToolError(f"cannot read MCP config {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise ToolError(f"{path}:{e.lineno}: not JSON: {e.msg}") from None
    servers = data.get("mcpServers") if isinstance(data, dict) else None
    if not isinstance(servers, dict):
        raise ToolError(f'{path}: not an MCP config: no "mcpServers" object')
    for name, spec in servers.items():
        where = f"{path}: server {name!r}"
        if not isinstance(spec, dict):
            raise ToolError(f"{where}: must be an object")
        if ("command" in spec) == ("url" in spec):
            raise ToolError(f'{where}: give either "command" (stdio) or "url" (HTTP)')
        for key, kind in (("command", str), ("url", str), ("args", list), ("env", dict)):
            if key in spec and not isinstance(spec[key], kind):
                raise ToolError(f"{where}: {key!r} must be a {kind.__name__}")
        if "headers" in spec and not isinstance(spec["headers"], dict):
            raise ToolError(f"{where}: 'headers' must be an object")
        n = spec.get("max_concurrency")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ToolError(f"{where}: 'max_concurrency' must be an integer >= 1")
        t = spec.get("timeout")
        if t is not None and (isinstance(t, bool) or not isinstance(t, int | float) or t <= 0):
            raise ToolError(f"{where}: 'timeout' must be a number of seconds > 0")
    return servers


def load_config_tools(path: str) -> Tools:
    """The tools of every server in the config at `path`, each under its own name, or
    `SERVER_NAME` where two servers offer the same one. A name a plan cannot call (`x-y`,
    `join`) is made one (`x_y`, `SERVER_join`); the server is still called with its own."""
    specs = load_config(path)
    listed: dict[str, list[mt.Tool]] = {}
    for name, spec in specs.items():
        listed[name] = servers().get(name, spec, path).tools()
    named: list[tuple[str, mt.Tool, str, str]] = []  # server, tool, plait name, note
    for name, tools in listed.items():
        for t in tools:
            if not t.name:
                print(
                    f"plait: MCP server {name!r} ({path}): a tool with no name, skipped",
                    file=sys.stderr,
                )
                continue
            plan_name = _plan_name(name, t.name)
            note = (
                ""
                if plan_name == t.name
                else f"renamed from {t.name!r}: a plan cannot call that name"
            )
            named.append((name, t, plan_name, note))
    counts: dict[str, int] = {}
    for _, _, plan_name, _ in named:
        counts[plan_name] = counts.get(plan_name, 0) + 1
    out, taken = [], set()
    for name, t, plan_name, note in named:
        if counts[plan_name] > 1:
            others = sorted({s for s, _, n, _ in named if n == plan_name})
            note = f"renamed from {t.name}: servers {', '.join(others)} all offer it"
            plan_name = _plan_name(name, f"{name}_{plan_name}", prefix=False)
        unique, n = plan_name, 1
        while unique in taken:  # `x-y` and `x_y` from one server
            n += 1
            unique = f"{plan_name}_{n}"
        taken.add(unique)
        out.append(_tool(servers().get(name, specs[name], path), t, unique, note))
    return Tools(out)


_NOT_NAME = re.compile(r"[^A-Za-z0-9_.]")
_PLAN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


def _plan_name(server: str, name: str, prefix: bool = True) -> str:
    """`name` if a plan can call it, else one it can: other characters become `_`, and one
    that would not start with a letter, or is `join`, gets `SERVER_` before it."""
    if _PLAN_NAME.fullmatch(name) and name != JOIN:
        return name
    safe = _NOT_NAME.sub("_", name)
    if prefix and (not safe[:1].isascii() or not safe[:1].isalpha() or safe == JOIN):
        safe = f"{_NOT_NAME.sub('_', server)}_{safe}"
    if not _PLAN_NAME.fullmatch(safe):  # a server whose name starts with a digit
        safe = f"mcp_{safe}"
    return safe


def _tool(server: Server, t: mt.Tool, name: str, note: str) -> SchemaTool:
    hints = t.annotations
    pure = bool(hints and hints.read_only_hint and hints.idempotent_hint)
    remote = t.name
    wrapped = _wraps_result(t.output_schema)

    async def call(arguments: dict[str, Any]) -> Any:
        value = await server.call(remote, arguments)
        if wrapped and isinstance(value, dict) and list(value) == ["result"]:
            return value["result"]  # a plain value, wrapped as the SDKs do for the wire
        return value

    return SchemaTool(
        call,
        t.input_schema,
        name=name,
        description=(t.description or "").strip(),
        pure=pure,
        timeout=server.spec.get("timeout"),
        source=f"mcp:{server.name}",
        note=note,
    )


def _wraps_result(schema: dict[str, Any] | None) -> bool:
    """Whether the tool's output schema is the SDKs' wrapper of a plain value:
    `{"result": VALUE}`, declared as the one required property."""
    if not isinstance(schema, dict):
        return False
    props = schema.get("properties")
    return (
        isinstance(props, dict)
        and list(props) == ["result"]
        and schema.get("required") == ["result"]
    )


def result_value(name: str, result: mt.CallToolResult) -> Any:
    """Structured content when the server gives it, else the text; `isError` raises."""
    texts = [c.text for c in result.content if isinstance(c, mt.TextContent)]
    if result.is_error:
        raise McpToolFailed(" ".join(texts) or f"{name} failed (no message)")
    if result.structured_content is not None:
        return result.structured_content
    if texts and len(texts) == len(result.content):
        return "\n".join(texts)
    return [c.model_dump(mode="json", exclude_none=True) for c in result.content]


class Server:
    """One MCP server's session in this process: opened on first use, reopened when lost."""

    def __init__(self, hub: Hub, name: str, spec: Mapping[str, Any], config: str) -> None:
        self.hub = hub
        self.name = name
        self.spec = dict(spec)
        self.config = config
        self.max_concurrency: int | None = spec.get("max_concurrency")
        self._session: mcp.ClientSession | None = None
        self._closing: asyncio.Event | None = None
        self._owner: asyncio.Task[None] | None = None
        self._opening: asyncio.Lock | None = None
        self._slots: asyncio.Semaphore | None = None
        self._tools: list[mt.Tool] | None = None
        self.starts = 0  # how many times it was (re)started: tests read it

    def tools(self) -> list[mt.Tool]:
        """Its tools (listed once per process); ToolError naming it if it cannot start."""
        if self._tools is None:
            self._tools = self.hub.wait(self._list())
        return self._tools

    async def call(self, tool: str, arguments: dict[str, Any]) -> Any:
        """Call `tool` from any loop; the request runs on the hub's."""
        return await asyncio.wrap_future(self.hub.submit(self._call(tool, arguments)))

    # on the hub's loop --------------------------------------------------------------

    async def _list(self) -> list[mt.Tool]:
        try:
            session = await self._open()
        except Exception as e:
            raise ToolError(
                f"MCP server {self.name!r} ({self.config}): cannot start: {_why(e)}"
            ) from None
        found: list[mt.Tool] = []
        cursor: str | None = None
        while True:
            params = mt.PaginatedRequestParams(cursor=cursor) if cursor else None
            try:
                page = await session.list_tools(params=params)
            except Exception as e:  # e.g. a tool's inputSchema that is not a schema object
                raise ToolError(
                    f"MCP server {self.name!r} ({self.config}): cannot list its tools: {_why(e)}"
                ) from None
            found.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                return found

    async def _call(self, tool: str, arguments: dict[str, Any]) -> Any:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrency or 2**30)
        async with self._slots:
            try:
                session = await self._open()
            except Exception as e:
                raise WorkerLost(f"MCP server {self.name!r} cannot start: {_why(e)}") from None
            try:
                result = await session.call_tool(tool, arguments)
            except LOST as e:
                await self._reset(session)
                raise WorkerLost(f"MCP server {self.name!r} went away: {_why(e)}") from None
            except MCPError as e:
                if self._owner is None or self._owner.done() or _closed(e):
                    await self._reset(session)
                    raise WorkerLost(f"MCP server {self.name!r} went away: {_why(e)}") from None
                raise McpToolFailed(f"MCP server {self.name!r}: {e}") from None
            except Exception as e:  # a reply the SDK cannot read: the call's failure
                raise McpToolFailed(f"MCP server {self.name!r}: bad result: {_why(e)}") from None
        return result_value(tool, result)

    async def _open(self) -> mcp.ClientSession:
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._session is not None and self._owner is not None and not self._owner.done():
                return self._session
            ready: asyncio.Future[mcp.ClientSession] = asyncio.get_running_loop().create_future()
            self._closing = asyncio.Event()
            self._owner = asyncio.create_task(self._own(ready, self._closing))
            self.starts += 1
            try:
                async with asyncio.timeout(START_TIMEOUT):
                    self._session = await ready
            except BaseException:
                await self.aclose()  # a server that hangs while starting is stopped
                raise
            return self._session

    async def _own(self, ready: asyncio.Future[mcp.ClientSession], closing: asyncio.Event) -> None:
        """Hold the transport and session open (entered and left in this one task)."""
        try:
            async with contextlib.AsyncExitStack() as stack:
                streams = await stack.enter_async_context(self._transport())
                session = await stack.enter_async_context(mcp.ClientSession(*streams[:2]))
                await session.initialize()
                ready.set_result(session)
                await closing.wait()
        except BaseException as e:
            if not ready.done():
                ready.set_exception(e if isinstance(e, Exception) else RuntimeError(repr(e)))
            if not isinstance(e, Exception):
                raise

    def _transport(self) -> Any:
        if "url" in self.spec:
            import httpx2

            headers = {str(k): str(v) for k, v in self.spec.get("headers", {}).items()}
            client = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300))
            return streamable_http_client(self.spec["url"], http_client=client)
        params = StdioServerParameters(
            command=self.spec["command"],
            args=[str(a) for a in self.spec.get("args", [])],
            env={str(k): str(v) for k, v in self.spec.get("env", {}).items()} or None,
            cwd=self.spec.get("cwd"),
        )
        return stdio_client(params, errlog=_errlog())

    async def _reset(self, session: mcp.ClientSession) -> None:
        """Close a lost session (once, whichever call noticed first)."""
        if self._session is not session:
            return
        self._session = None
        await self.aclose()

    async def aclose(self) -> None:
        owner, self._owner = self._owner, None
        if self._closing is not None:
            self._closing.set()
        if owner is not None:
            with contextlib.suppress(BaseException):
                async with asyncio.timeout(5):
                    await owner


class Hub:
    """The process's MCP sessions, on an event loop of their own on a daemon thread."""

    def __init__(self) -> None:
        # Closing a session its HTTP server no longer knows (it restarted) is expected here.
        logging.getLogger("mcp.client.streamable_http").setLevel(logging.ERROR)
        self.loop = asyncio.new_event_loop()
        self._servers: dict[str, Server] = {}
        self._lock = threading.Lock()
        thread = threading.Thread(target=self.loop.run_forever, name="plait-mcp", daemon=True)
        thread.start()
        atexit.register(self.close)

    def get(self, name: str, spec: Mapping[str, Any], config: str) -> Server:
        """The one Server for this name and spec in this process."""
        key = json.dumps([name, spec], sort_keys=True, default=str)
        with self._lock:
            server = self._servers.get(key)
            if server is None:
                server = self._servers[key] = Server(self, name, spec, config)
            return server

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def wait(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.submit(coro).result()

    def close(self) -> None:
        """Stop every server (at exit): close their sessions, then the loop."""
        if self.loop.is_closed():
            return

        async def close_all() -> None:
            await asyncio.gather(*(s.aclose() for s in self._servers.values()))

        # A server already gone cannot be told the session ends: nothing to say about it.
        logging.getLogger("mcp").setLevel(logging.CRITICAL)
        with contextlib.suppress(Exception):
            self.submit(close_all()).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)


_hub: Hub | None = None
_hub_lock = threading.Lock()


def servers() -> Hub:
    """The process's hub, started on first use."""
    global _hub
    with _hub_lock:
        if _hub is None:
            _hub = Hub()
        return _hub


def _closed(e: MCPError) -> bool:
    """Whether the SDK's error says the session is gone (the transport closed, or an HTTP
    server that restarted no longer knows the session): the call was lost, not refused."""
    text = str(e).lower()
    return any(
        words in text
        for words in ("connection closed", "disconnect", "session not found", "terminated")
    )


def _why(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return f"no answer within {START_TIMEOUT:g}s"
    if isinstance(e, FileNotFoundError):
        return f"command not found: {e.filename or e}"
    if isinstance(e, BaseExceptionGroup):
        return _why(e.exceptions[0])
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _errlog() -> Any:
    """Where a stdio server's stderr goes: ours, when it is a real file."""
    for stream in (sys.stderr, sys.__stderr__):
        try:
            if stream is not None:
                stream.fileno()
                return stream
        except (OSError, ValueError, AttributeError):
            continue
    return open(os.devnull, "w")  # lives as long as the process
