"""Shared fixtures for the core tests. Each is small and self-contained."""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import secrets
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pgserver import missing_postgres, postgres_server
from raycluster import RayCluster


def _loopback_only() -> bool:
    """Move this test process into a network namespace of its own with only loopback up.

    Every server the tests start (PostgreSQL, llama.cpp, a Ray cluster) is then reachable
    on 127.0.0.1 alone, and nothing a test does can reach another address. Ray needs it:
    it swaps 127.0.0.1 for the machine's own address unless loopback is all there is.
    Done at import, while the process still has one thread; needs root (CI runs as root).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if os.environ.get("PLAIT_TEST_NETNS") == "0" or libc.unshare(0x40000000) != 0:
        return False  # CLONE_NEWNET refused: tests run in the machine's namespace
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = 0x1 | 0x8 | 0x40  # IFF_UP | IFF_LOOPBACK | IFF_RUNNING
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags))  # SIOCSIFFLAGS
    return True


LOOPBACK_ONLY = _loopback_only()
# The test Ray cluster's token. Ray reads it when first imported, so it is set before any
# test imports Ray; the cluster's processes and every driver the tests start inherit it.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_TOOLS = REPO / "examples" / "tools.py"
EXAMPLE_PLAN = REPO / "examples" / "landmarks.plan"


@pytest.fixture(autouse=True)
def _private_store(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CLI runs default to a store in the user's data directory: keep tests out of it."""
    if "PLAIT_STORE" not in os.environ:
        db = tmp_path_factory.getbasetemp() / "default-runs.db"
        monkeypatch.setenv("PLAIT_STORE", f"sqlite:///{db}")


@pytest.fixture
def example_tools() -> Path:
    """The repo's offline example tools (search over facts.jsonl, extract_number, calculate)."""
    return EXAMPLE_TOOLS


@pytest.fixture
def example_plan() -> Path:
    return EXAMPLE_PLAN


@pytest.fixture
def replies(tmp_path: Path) -> Callable[..., str]:
    """Write LLM replies to a JSON file; return a `replay:` model spec for it."""

    def make(*texts: str, query: str = "") -> str:
        path = tmp_path / "replies.json"
        path.write_text(json.dumps(list(texts)))
        return f"replay:{path}" + (f"?{query}" if query else "")

    return make


@pytest.fixture
def no_leftover_tool_threads():
    """Fail the test if a plait tool thread is still alive when it ends."""
    yield
    alive = [t.name for t in threading.enumerate() if t.name.startswith("plait-tool")]
    assert alive == []


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway PostgreSQL server on 127.0.0.1 for the session; yields its URL.

    `postgresql://plait@127.0.0.1:PORT/postgres` (trust auth). Skipped, with the reason, when
    the server or psycopg is not installed; under CI (`CI` set) that is a failure instead.
    """
    reason = missing_postgres()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI: {reason}")
        pytest.skip(reason)
    with postgres_server(tmp_path_factory.mktemp("postgres")) as url:
        yield url


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    """A real Ray cluster of two nodes on 127.0.0.1 for the session, joined by this process
    through RAY_ADDRESS (as a user would). Skipped without Ray; under CI that fails."""
    try:
        import ray
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("CI: Ray is not installed (pip install -e '.[ray]')")
        pytest.skip("Ray is not installed (pip install -e '.[ray]')")
    if os.environ.get("CI") and not LOOPBACK_ONLY:
        pytest.fail("CI: the Ray tests need a loopback-only network namespace (run as root)")
    cluster = RayCluster(tmp_path_factory.mktemp("ray"))
    saved = {k: os.environ.get(k) for k in cluster.driver_env()}
    try:
        cluster.start()
        os.environ.update(cluster.driver_env())
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
