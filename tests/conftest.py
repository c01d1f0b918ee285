"""Shared fixtures for the core tests. Each is small and self-contained."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_TOOLS = REPO / "examples" / "tools.py"
EXAMPLE_PLAN = REPO / "examples" / "landmarks.plan"


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
