"""Model specs → clients. Each client lives in its own module and is imported only when used.

replay:FILE?ttft=S&tps=N    replies from a JSON file, with real timing (tests, benchmarks)
openai:MODEL                any OpenAI-compatible server (--base-url / OPENAI_BASE_URL)
local[:PATH.gguf]           llama.cpp in-process; the embedded SmolLM2 by default
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import PlaitError
from .base import LLM, Delta, LLMError, Request, Usage

__all__ = ["LLM", "Delta", "LLMError", "Request", "Usage", "resolve_model"]

# scheme -> "module:Class"; each class has `from_spec(rest, **options)`.
CLIENTS = {
    "replay": "plait.llm.replay:ReplayLLM",
    "openai": "plait.llm.openai:OpenAILLM",
    "local": "plait.llm.local:LocalLLM",
}


def resolve_model(spec: str | LLM, **options: Any) -> LLM:
    """An LLM from a spec like `openai:gpt-4o-mini`, or the LLM itself if given one."""
    if not isinstance(spec, str):
        return spec
    scheme, _, rest = spec.partition(":")
    target = CLIENTS.get(scheme)
    if target is None:
        raise PlaitError(
            f"unknown model {spec!r}: use one of {', '.join(f'{k}:' for k in CLIENTS)}"
        )
    module_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        extra = {"local": "local"}.get(scheme)
        hint = f" (pip install 'plait[{extra}]')" if extra else ""
        raise PlaitError(f"model {spec!r} needs a missing package: {e.name or e}{hint}") from None
    cls = getattr(module, cls_name)
    accepted = {k: v for k, v in options.items() if v is not None}
    return cls.from_spec(rest, **accepted) if accepted else cls.from_spec(rest)  # type: ignore[no-any-return]
