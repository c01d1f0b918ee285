"""Model specs → clients. Each client lives in its own module and is imported only when used.

replay:FILE?ttft=S&tps=N    replies from a JSON file, with real timing (tests, benchmarks)
openai:MODEL                any OpenAI-compatible server (--base-url / OPENAI_BASE_URL)
ollama:MODEL                openai:MODEL at Ollama's default URL (http://localhost:11434/v1)
local[:PATH.gguf]           llama.cpp in-process; the embedded SmolLM2 by default

`with_sampling` sets a run's temperature and reply length on every request it sends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
from collections.abc import AsyncIterator
from typing import Any

from ..errors import PlaitError
from .base import LLM, Delta, LLMError, Request, Usage, Wrapper

__all__ = ["LLM", "Delta", "LLMError", "Request", "Usage", "resolve_model", "with_sampling"]

# scheme -> "module:Class"; each class has `from_spec(rest, **options)`.
CLIENTS = {
    "replay": "plait.llm.replay:ReplayLLM",
    "openai": "plait.llm.openai:OpenAILLM",
    "local": "plait.llm.local:LocalLLM",
}
# Schemes that are another client at a known place: scheme -> (client scheme, base URL).
ALIASES = {"ollama": ("openai", "http://localhost:11434/v1")}
SPECS = "local, local:FILE.gguf, openai:MODEL, ollama:MODEL, replay:FILE"


def resolve_model(spec: str | LLM, **options: Any) -> LLM:
    """An LLM from a spec like `openai:gpt-4o-mini`, or the LLM itself if given one."""
    if not isinstance(spec, str):
        return spec
    given, _, rest = spec.partition(":")
    scheme = given
    if scheme in ALIASES:
        if not rest.partition("?")[0]:
            raise PlaitError(f"{scheme} model needs a name: {scheme}:MODEL")
        scheme, base_url = ALIASES[scheme]
        if options.get("base_url") is None:
            options = {**options, "base_url": base_url}
    target = CLIENTS.get(scheme)
    if target is None:
        raise PlaitError(_unknown(spec))
    module_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        extra = {"local": "local"}.get(scheme)
        hint = f" (pip install 'plait[{extra}]')" if extra else ""
        raise PlaitError(f"model {spec!r} needs a missing package: {e.name or e}{hint}") from None
    cls = getattr(module, cls_name)
    accepted = {k: v for k, v in options.items() if v is not None}
    llm = cls.from_spec(rest, **accepted) if accepted else cls.from_spec(rest)
    if scheme != given:  # an alias: label results with the name given
        llm.name = f"{given}:{rest.partition('?')[0]}"
    return llm  # type: ignore[no-any-return]


def _unknown(spec: str) -> str:
    """The message for a spec no client takes, with the spec it most likely meant."""
    guesses = [f"openai:{spec}"]
    if ":" in spec:  # `llama3.1:8b` is how Ollama names a model's tag
        guesses.append(f"ollama:{spec}")
    meant = " or ".join(repr(g) for g in guesses)
    return f"unknown model {spec!r}: did you mean {meant}? (a model spec is one of: {SPECS})"


def with_sampling(llm: LLM, temperature: float | None = None, max_tokens: int | None = None) -> LLM:
    """`llm`, sending every request at `temperature` and with at most `max_tokens` in a
    reply; `llm` itself when neither is given."""
    if temperature is None and max_tokens is None:
        return llm
    return SampledLLM(llm, temperature, max_tokens)


class SampledLLM(Wrapper):
    """A model whose requests all carry one temperature and reply bound (`--temperature`,
    `--max-tokens`). Wrapped around a batch's SharedLLM, not inside it, so that a request
    above temperature 0 is never taken for a copy of another. A model that scores its
    choices (the embedded one) still scores through it: the temperature applies to the text
    it writes, and choosing by score stays on."""

    def __init__(self, llm: LLM, temperature: float | None, max_tokens: int | None) -> None:
        if temperature is not None and not 0.0 <= temperature <= 2.0:
            raise PlaitError(f"temperature must be between 0 and 2, not {temperature}")
        if max_tokens is not None and max_tokens < 1:
            raise PlaitError(f"max_tokens must be at least 1, not {max_tokens}")
        super().__init__(llm)
        self.temperature = temperature
        self.max_tokens = max_tokens

    async def stream(self, request: Request) -> AsyncIterator[Delta]:
        changes: dict[str, Any] = {}
        if self.temperature is not None:
            changes["temperature"] = self.temperature
        if self.max_tokens is not None:
            changes["max_tokens"] = self.max_tokens
        inner = self.llm.stream(dataclasses.replace(request, **changes))
        async with contextlib.aclosing(inner):  # type: ignore[type-var]
            async for delta in inner:
                yield delta
