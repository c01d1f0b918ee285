"""`plait mcp` driven by the MCP SDK's own client over stdio: `execute` and `run` return the
run's `--json` object as structured content, progress arrives as tasks finish, and a client's
cancellation cancels the run, recorded as cancelled in the store."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from tests.hostile.plaitproc import SRC
from tests.mcp.mcpsupport import PYTOOLS, config, faults

from plait.stores import open_store

mcp = pytest.importorskip("mcp")
from mcp.client.stdio import StdioServerParameters, stdio_client  # noqa: E402


@asynccontextmanager
async def plait_mcp(tmp_path: Path, *extra: str) -> AsyncIterator[mcp.ClientSession]:
    cfg = config(tmp_path / "c.json", faults=faults(tmp_path))
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "plait.cli", "mcp", "--tools", cfg, "--tools", str(PYTOOLS), *extra],
        env={"PYTHONPATH": str(SRC), "FAULT_DIR": str(tmp_path), "PATH": os.environ["PATH"]},
    )
    async with (
        stdio_client(params) as (read, write),
        mcp.ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'runs.db'}"


async def test_execute_returns_the_run_and_reports_progress(tmp_path: Path) -> None:
    async with plait_mcp(tmp_path, "--store", store_url(tmp_path)) as session:
        names = {t.name for t in (await session.list_tools()).tools}
        assert names == {"run", "execute"}
        progress: list[tuple[float, float | None, str | None]] = []

        async def on_progress(p: float, total: float | None, message: str | None) -> None:
            progress.append((p, total, message))

        plan = "1. add(2, 3)\n2. double($1)\n3. shout('side')\n4. join()"
        result = await session.call_tool("execute", {"plan": plan}, progress_callback=on_progress)
    assert not result.is_error
    run = result.structured_content
    assert run["status"] == "done"
    assert [t["result"] for t in run["tasks"]] == [5, 10, "SIDE"]  # a print() did not break it
    assert json.loads(result.content[0].text) == run
    messages = {m for _, _, m in progress}
    assert {"task 1 done", "task 2 done", "task 3 done"} <= messages
    assert sorted(p for p, _, _ in progress) == [p for p, _, _ in progress]  # in order
    info = open_store(store_url(tmp_path)).get(run["run_id"])
    assert info is not None and info.state == "done"


async def test_failed_run_is_an_error_with_the_run(tmp_path: Path) -> None:
    async with plait_mcp(tmp_path, "--store", "memory://") as session:
        result = await session.call_tool("execute", {"plan": "1. fail('no')\n2. join()"})
    assert result.is_error
    assert result.structured_content["status"] == "failed"
    assert "no" in result.structured_content["tasks"][0]["error"]


async def test_run_plans_with_the_model(tmp_path: Path, replies) -> None:
    model = replies("1. add(20, 1)\n2. double($1)\n3. join()", "Action: Finish(42)")
    async with plait_mcp(tmp_path, "--store", "memory://", "--model", model) as session:
        result = await session.call_tool("run", {"question": "What is twice 20+1?"})
    run = result.structured_content
    assert run["status"] == "done", run
    assert "42" in run["answer"]
    assert [t["result"] for t in run["tasks"]] == [21, 42]


async def test_client_cancellation_cancels_the_run(tmp_path: Path) -> None:
    url = store_url(tmp_path)
    async with plait_mcp(tmp_path, "--store", url) as session:
        call = asyncio.create_task(
            session.call_tool("execute", {"plan": "1. add(1, 1)\n2. block('c')\n3. join()"})
        )
        for _ in range(1200):  # a handshake: the tool marks that it started
            if (tmp_path / "started-c").exists():
                break
            await asyncio.sleep(0.05)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        # the server is still there, and has recorded the run as cancelled
        runs = []
        for _ in range(1200):
            store = open_store(url)
            try:
                runs = store.runs(10)
            finally:
                store.close()
            if runs and runs[0].state != "running":
                break
            await asyncio.sleep(0.05)
        ok = await session.call_tool("execute", {"plan": "1. double(4)\n2. join()"})
        assert ok.structured_content["tasks"][0]["result"] == 8
    assert len(runs) == 1 and runs[0].state == "cancelled"


async def test_plait_mcp_over_streamable_http(tmp_path: Path) -> None:
    from mcp.client.streamable_http import streamable_http_client
    from tests.hostile.plaitproc import spawn
    from tests.mcp.mcpsupport import free_port

    port = free_port()
    proc = spawn("mcp", "--tools", PYTOOLS, "--store", "memory://", "--http", port)
    try:
        for _ in range(1200):  # a handshake: wait until it listens
            assert proc.poll() is None, proc.communicate()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        url = f"http://127.0.0.1:{port}/mcp"
        async with (
            streamable_http_client(url) as streams,
            mcp.ClientSession(streams[0], streams[1]) as session,
        ):
            await session.initialize()
            result = await session.call_tool("execute", {"plan": "1. double(21)\n2. join()"})
        assert result.structured_content["tasks"][0]["result"] == 42
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


async def test_invalid_plan_is_the_plan_errors_one_line(tmp_path: Path) -> None:
    async with plait_mcp(tmp_path, "--store", "memory://") as session:
        result = await session.call_tool("execute", {"plan": "1. nosuch(1)\n2. join()"})
        ok = await session.call_tool("execute", {"plan": "1. double(4)\n2. join()"})
    assert result.is_error
    text = result.content[0].text
    assert "unknown tool 'nosuch'" in text and "\n" not in text
    assert ok.structured_content["tasks"][0]["result"] == 8  # the server goes on


def test_what_tools_print_never_reaches_the_stdio_protocol(tmp_path: Path) -> None:
    import subprocess

    from tests.mcp.mcpsupport import HERE

    proc = subprocess.Popen(
        [sys.executable, "-m", "plait.cli", "mcp", "--tools", str(HERE / "loudtools.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"PYTHONPATH": str(SRC), "PATH": os.environ["PATH"]},
    )
    assert proc.stdin is not None and proc.stdout is not None
    messages = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "0"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "execute", "arguments": {"plan": "1. scale(2)\n2. join()"}},
        },
    ]
    try:
        proc.stdin.write("".join(json.dumps(m) + "\n" for m in messages).encode())
        proc.stdin.flush()
        lines = []
        while not any(m.get("id") == 2 for m in lines):
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            lines.append(json.loads(line))  # every line on stdout is the protocol's
        reply = next(m for m in lines if m.get("id") == 2)["result"]
        assert reply["structuredContent"]["tasks"][0]["result"] == 4
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=60)
    assert b"LOUD AT IMPORT" in err and b"LOUD IN A CALL" in err


def test_plait_tools_json_is_only_strict_json(tmp_path: Path) -> None:
    from tests.hostile.plaitproc import plait as plait_cli
    from tests.mcp.mcpsupport import HERE

    code, out, err = plait_cli("tools", "--tools", HERE / "loudtools.py", "--json")
    assert code == 0, err
    listed = json.loads(out, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    assert listed[0]["parameters"]["properties"]["by"]["default"] is None
    assert "LOUD AT IMPORT" in err
