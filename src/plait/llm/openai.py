"""`openai:MODEL`: any OpenAI-compatible chat server, streamed (vLLM, llama.cpp, Ollama, hosted).

The openai library's and httpx's exceptions are mapped to LLMError here and nowhere else:
429, 5xx, connection and read failures and a stream cut mid-reply are retryable; the rest
(400, 401, 404…) are not. The library's own retries are off: the agent retries, because it
knows which tasks a lost reply already dispatched.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai

from ..errors import PlaitError
from .base import Delta, LLMError, Request, Usage


class OpenAILLM:
    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        json_schema: bool = True,
        client: openai.AsyncOpenAI | None = None,
    ) -> None:
        self.model = model
        self.name = f"openai:{model}"
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        self._json_schema = json_schema
        self._client = client or openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=api_key or os.environ.get("OPENAI_API_KEY") or "not-needed",
            max_retries=0,
            timeout=httpx.Timeout(timeout, connect=10.0),
        )

    @classmethod
    def from_spec(cls, rest: str, **options: Any) -> OpenAILLM:
        if not rest:
            raise PlaitError("openai model needs a name: openai:MODEL")
        return cls(rest, **options)

    @property
    def supports_json_schema(self) -> bool:
        return self._json_schema

    async def stream(self, request: Request) -> AsyncIterator[Delta]:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": request.messages,
            "temperature": request.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.stop:
            kwargs["stop"] = list(request.stop)
        if request.max_tokens:
            kwargs["max_tokens"] = request.max_tokens
        if request.json_schema is not None and self._json_schema:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "plan", "schema": request.json_schema},
            }
        if request.session:
            kwargs["user"] = request.session
        finished = False
        try:
            stream = await self._client.chat.completions.create(**kwargs)
            async for chunk in stream:
                if chunk.choices:
                    choice = chunk.choices[0]
                    text = choice.delta.content if choice.delta else None
                    if text:
                        yield Delta(text)
                    if choice.finish_reason:
                        finished = True
                if chunk.usage is not None:
                    yield Delta("", Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens))
        except openai.APIStatusError as e:
            raise _status_error(e) from None
        except (openai.APIConnectionError, openai.APITimeoutError, httpx.HTTPError) as e:
            raise LLMError(f"{self.name}: connection lost: {e}", retryable=True) from None
        except openai.APIError as e:  # e.g. an error event inside the stream
            raise LLMError(f"{self.name}: {e}", retryable=True) from None
        if not finished:
            raise LLMError(f"{self.name}: stream ended before the reply finished", retryable=True)


def _status_error(e: openai.APIStatusError) -> LLMError:
    status = e.status_code
    retry_after = None
    header = e.response.headers.get("retry-after") if e.response is not None else None
    if header:
        try:
            retry_after = float(header)
        except ValueError:
            retry_after = None
    retryable = status in (408, 409, 425, 429) or status >= 500
    return LLMError(
        f"HTTP {status}: {e.message}", retryable=retryable, retry_after=retry_after, status=status
    )
