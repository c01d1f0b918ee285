"""Shared fixtures for the core tests. Each is small and self-contained."""

from __future__ import annotations

import json
import os
import secrets
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pgserver import missing_postgres, postgres_server
from raycluster import RayCluster, loopback_only

LOOPBACK_ONLY = loopback_only()
# Started in the background by a non-interactive shell, this process inherits SIGINT
# ignored, and so would every `plait` and Ray process the tests start: the Ctrl-C tests,
# and Ray's cancellation (a KeyboardInterrupt in the worker), would test nothing.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
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


@pytest.fixture(scope="session")
def ray_driver(ray_cluster: RayCluster) -> RayCluster:
    """This process joined to the test cluster once, for every Ray test of the session."""
    import ray

    if not ray.is_initialized():
        ray.init(logging_level="WARNING")
    return ray_cluster
