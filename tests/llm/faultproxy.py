"""A real fault-injecting HTTP proxy on 127.0.0.1, in front of an OpenAI-compatible server.

It runs its own event loop in a thread (so it serves `asyncio.run` callers such as the CLI
as well as async tests), forwards each request with httpx, and for a seeded share of the
POST requests injects one fault:

- ``drop``: close the connection without answering;
- ``delay``: wait, then forward normally;
- ``500``: answer 500 with a JSON error;
- ``429``: answer 429 with ``Retry-After``;
- ``truncate``: forward the streamed reply, then cut the connection mid-stream (inside a
  chunk of the chunked body, as a dying server or proxy does).

`script` overrides the dice for the first requests: a list of fault names (or None for a
clean pass); a ``("truncate_after", regex)`` entry cuts the stream once the reply's text so
far matches `regex`. Only the standard library and httpx are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import threading
from collections import Counter
from typing import Any

import httpx

FAULTS = ("drop", "delay", "500", "429", "truncate")
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "te"}


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        *,
        rate: float = 0.2,
        seed: int = 0,
        faults: tuple[str, ...] = FAULTS,
        delay: tuple[float, float] = (0.2, 1.0),
        retry_after: float = 0.5,
        script: list[Any] | None = None,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.rate = rate
        self.faults = faults
        self.delay = delay
        self.retry_after = retry_after
        self.script = list(script or [])
        self.rng = random.Random(seed)
        self.stats: Counter[str] = Counter()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._client: httpx.AsyncClient | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="faultproxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault proxy did not start")

    def stop(self) -> None:
        if self._loop is not None and self._server is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)

        async def setup() -> None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(300.0, connect=10.0))
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]

        loop.run_until_complete(setup())
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            assert self._server is not None and self._client is not None
            self._server.close()
            loop.run_until_complete(self._client.aclose())
            for task in asyncio.all_tasks(loop):
                task.cancel()
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    # one connection = one request (we answer with Connection: close) ------------------

    def _decide(self) -> Any:
        if self.script:
            return self.script.pop(0)
        if self.rng.random() < self.rate:
            return self.rng.choice(self.faults)
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
            fault = self._decide() if method == "POST" else None
            kind = fault[0] if isinstance(fault, tuple) else fault
            self.stats["requests"] += 1
            self.stats[kind or "clean"] += 1
            if kind == "drop":
                writer.transport.abort()
                return
            if kind == "500":
                await self._answer(writer, 500, {"error": {"message": "injected server error"}})
                return
            if kind == "429":
                await self._answer(
                    writer,
                    429,
                    {"error": {"message": "injected rate limit"}},
                    {"Retry-After": f"{self.retry_after:g}"},
                )
                return
            if kind == "delay":
                await asyncio.sleep(self.rng.uniform(*self.delay))
            cut: Any = None
            if kind == "truncate":
                cut = self.rng.randint(2, 12)  # SSE events to pass before cutting
            elif kind == "truncate_after":
                cut = fault[1]
            await self._forward(writer, method, path, headers, body, cut)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            writer.transport.abort()
        except httpx.HTTPError as e:
            with contextlib.suppress(Exception):
                await self._answer(writer, 502, {"error": {"message": f"upstream: {e}"}})
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _answer(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        payload: dict[str, Any],
        extra: dict[str, str] | None = None,
    ) -> None:
        data = json.dumps(payload).encode()
        reason = {429: "Too Many Requests", 500: "Internal Server Error"}.get(status, "Error")
        head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json"]
        head += [f"{k}: {v}" for k, v in (extra or {}).items()]
        head += [f"Content-Length: {len(data)}", "Connection: close", "", ""]
        writer.write("\r\n".join(head).encode() + data)
        await writer.drain()

    async def _forward(
        self,
        writer: asyncio.StreamWriter,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        cut: Any,
    ) -> None:
        assert self._client is not None
        fwd = {k: v for k, v in headers.items() if k not in _HOP}
        req = self._client.build_request(method, self.upstream + path, headers=fwd, content=body)
        resp = await self._client.send(req, stream=True)
        try:
            head = [f"HTTP/1.1 {resp.status_code} {resp.reason_phrase}"]
            head += [f"{k}: {v}" for k, v in resp.headers.items() if k.lower() not in _HOP]
            head += ["Transfer-Encoding: chunked", "Connection: close", "", ""]
            writer.write("\r\n".join(head).encode())
            events, text, pending = 0, "", b""
            async for chunk in resp.aiter_raw():
                if cut is not None:
                    pending += chunk
                    *complete, pending = pending.split(b"\n\n")
                    passed = b""
                    for event in complete:
                        passed += event + b"\n\n"
                        events += 1
                        if isinstance(cut, str):
                            text += _contents(event)
                        if (isinstance(cut, int) and events >= cut) or (
                            isinstance(cut, str) and re.search(cut, text)
                        ):
                            # the events so far, half of the next, then the connection dies
                            # inside a chunk: a reply cut mid-stream
                            rest = (b"\n\n".join(complete) + b"\n\n" + pending)[len(passed) :]
                            piece = passed + rest[: max(len(rest) // 2, 1)]
                            writer.write(f"{len(piece) + 64:x}\r\n".encode() + piece)
                            await writer.drain()
                            self.stats["cut"] += 1
                            writer.transport.abort()
                            return
                    chunk = passed
                    if not chunk:
                        continue
                writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                await writer.drain()
            if cut is not None and pending:
                writer.write(f"{len(pending):x}\r\n".encode() + pending + b"\r\n")
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        finally:
            await resp.aclose()


def _contents(chunk: bytes) -> str:
    """The reply text inside a piece of an SSE chat stream (best effort)."""
    out = []
    for line in chunk.decode("utf-8", "replace").splitlines():
        if line.startswith("data: ") and line[6:].strip() not in ("", "[DONE]"):
            with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
                delta = json.loads(line[6:])["choices"][0]["delta"]
                out.append(delta.get("content") or "")
    return "".join(out)
