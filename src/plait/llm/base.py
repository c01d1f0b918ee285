"""The LLM seam: one small async streaming interface that every model client implements.

A client turns a `Request` into a stream of `Delta`s: text as it arrives, and the call's
`Usage` on the last one when the server reports it. Clients map their library's exceptions
to `LLMError` right here at the seam (retryable or not, with the server's Retry-After), so
nothing above ever catches an httpx or openai type. Retrying is not a client's job: the
agent retries a lost reply and knows what of it was already used.

A client that can also *score* text (`Scorer`: the log-probability of each of a few
candidate continuations of a reply) lets the agent make a plan's discrete choices — which
tool, which span of the question, which operator, Finish or Replan — by comparing the
candidates instead of taking the greedy token; a tiny model is far better at the first.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..core.events import Usage

__all__ = ["LLM", "Delta", "LLMError", "Message", "Request", "Scorer", "Usage", "Wrapper"]

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}


@dataclass(slots=True)
class Request:
    messages: list[Message]
    stop: tuple[str, ...] = ()
    json_schema: dict[str, Any] | None = None  # constrain the reply, where the backend can
    session: str | None = None  # program affinity: calls of one run share a key (Continuum)
    max_tokens: int | None = None
    temperature: float = 0.0


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(slots=True)
class Delta:
    """A piece of a reply. Its text is always encodable: a lone surrogate (a JSON `\\udcff`
    escape from a server, half of a pair split across chunks) becomes U+FFFD here, at the
    seam, so a reply can always be recorded and replayed as it was used."""

    text: str = ""
    usage: Usage | None = None

    def __post_init__(self) -> None:
        if not self.text.isascii():
            self.text = _LONE_SURROGATE.sub("\ufffd", self.text)


@dataclass(slots=True)
class LLMError(Exception):
    """A failed call. `retryable` says whether asking again may succeed."""

    message: str
    retryable: bool = False
    retry_after: float | None = None  # seconds the server asked us to wait
    status: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message


@runtime_checkable
class LLM(Protocol):
    """A model. `name` is how results and traces label it."""

    name: str

    @property
    def supports_json_schema(self) -> bool:
        """Whether `Request.json_schema` really constrains the reply."""
        ...

    def stream(self, request: Request) -> AsyncIterator[Delta]:
        """Stream the reply. Raise LLMError on failure, even after some text was sent."""
        ...


@runtime_checkable
class Scorer(Protocol):
    """A model that can compare candidate continuations (llama.cpp in-process)."""

    async def score(
        self, request: Request, prefix: str, candidates: Sequence[str]
    ) -> tuple[list[float], Usage]:
        """The log-probability of each candidate following the assistant's `prefix`, after
        `request.messages`; and the tokens evaluated (prompt) and candidates' (completion)."""
        ...


class Wrapper:
    """A model around another (`self.llm`), adding a policy to its calls: the inner model's
    name, JSON-schema support and scoring pass through (`score` is present only when the
    inner model scores, so `isinstance(w, Scorer)` answers as for the inner one)."""

    score: Callable[..., Awaitable[tuple[list[float], Usage]]]

    def __init__(self, llm: LLM) -> None:
        self.llm = llm
        self.name = llm.name
        self.supports_json_schema = llm.supports_json_schema
        if (score := getattr(llm, "score", None)) is not None:
            self.score = score
