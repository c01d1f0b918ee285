"""Shared fixtures for the core tests. Each is small and self-contained."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pgserver import missing_postgres, postgres_server

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
