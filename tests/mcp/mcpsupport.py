"""Helpers of the MCP tests: config files for the real servers, a free loopback port."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FAULTS = HERE / "faultserver.py"
RAW = HERE / "rawserver.py"
ODD = HERE / "oddnames.py"
PYTOOLS = HERE / "pytools.py"


def time_server() -> str:
    """The `mcp-server-time` reference server from PyPI (in the venv's bin, or on PATH)."""
    found = Path(sys.executable).with_name("mcp-server-time")
    return str(found) if found.exists() else (shutil.which("mcp-server-time") or "mcp-server-time")


def config(path: Path, **servers: dict[str, Any]) -> str:
    path.write_text(json.dumps({"mcpServers": servers}))
    return str(path)


def faults(fault_dir: Path, **extra: Any) -> dict[str, Any]:
    """The fault-injecting server over stdio, counting calls under `fault_dir`."""
    return {
        "command": sys.executable,
        "args": [str(FAULTS)],
        "env": {"FAULT_DIR": str(fault_dir)},
        **extra,
    }


def time_spec() -> dict[str, Any]:
    return {"command": time_server(), "args": ["--local-timezone", "UTC"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_http(fault_dir: Path, port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """The fault server over streamable HTTP on 127.0.0.1; (process, URL) once it listens."""
    port = port or free_port()
    proc = subprocess.Popen(
        [sys.executable, str(FAULTS), "--http", str(port)],
        env={"FAULT_DIR": str(fault_dir), "PATH": "/usr/bin:/bin"},
    )
    for _ in range(600):  # a handshake: wait until it accepts connections (or died)
        if proc.poll() is not None:
            raise RuntimeError(f"the HTTP MCP server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}/mcp"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the HTTP MCP server did not start")


def wait_for(path: Path, proc: subprocess.Popen[Any] | None = None) -> None:
    """Wait until `path` exists (a tool marked that it started)."""
    for _ in range(1200):
        if path.exists():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process exited with {proc.returncode} first")
        time.sleep(0.05)
    raise RuntimeError(f"{path} never appeared")
