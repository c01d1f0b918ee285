"""Fixtures of the server tests: a store, the tools' environment, a running server."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from servesupport import Server

# plait[serve] (Starlette, uvicorn) is an extra: without it there is no server to test.
collect_ignore_glob = (
    []
    if importlib.util.find_spec("starlette") and importlib.util.find_spec("uvicorn")
    else ["test_*.py"]
)


@pytest.fixture
def serve_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PLAIT_SERVE_LOG"] = str(tmp_path / "ran.log")
    env["PLAIT_SERVE_GATE"] = str(tmp_path / "gate.open")
    env.pop("PLAIT_TOKEN", None)
    return env


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'runs.db'}"


@pytest.fixture
def server(store_url: str, serve_env: dict[str, str]) -> Iterator[Server]:
    s = Server(store_url, serve_env).start()
    try:
        yield s
    finally:
        s.kill()
