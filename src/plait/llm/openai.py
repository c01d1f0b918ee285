"""`openai:MODEL`: any OpenAI-compatible chat server, streamed (vLLM, llama.cpp, Ollama, hosted).

Options ride on the spec as a query, e.g. `openai:smollm2?max_concurrency=4&schema=json_object`:
`max_concurrency` (the endpoint's upper bound, default 16), `adaptive` (AIMD on, default 1),
`affinity` (default 1), `schema` (`auto`, `json_schema`, `json_object` or `off`), `timeout`.

Failures. The openai library's and httpx's exceptions are mapped to LLMError here and
nowhere else: 429 (with its Retry-After), 408/409/425, 5xx, connect and read timeouts, a
dropped connection, an error event inside the stream and a stream that ends without a
finish_reason (cut mid-reply) are retryable; other 4xx (400, 401, 404, 422…) are not. The
library's own retries are off: the agent retries, because it knows which tasks a lost reply
already dispatched.

Concurrency. Every client of one base URL shares one AIMD limiter (`limits.py`): 429 and
503 shrink the endpoint's limit multiplicatively, successes grow it additively.

Constrained plans. `schema=auto` first sends OpenAI's `{"type": "json_schema", ...}`
(OpenAI, vLLM, llama.cpp's llama-server); an endpoint that rejects that form with a 400/422
(llama-cpp-python's server accepts only `{"type": "json_object", "schema": ...}` and
answers the other form with a 500 naming `response_format`) is asked
again, before any text was read, with the json_object form, and remembered.

Program affinity (Continuum). Successive calls of one run carry `Request.session` (the run
id). What keeps a run's prefix in a server's KV cache depends on the server:

- llama.cpp's `llama-server` has slots (`--parallel N`), each with its own KV cache, and
  reuses a slot's cached prefix when a request sets `cache_prompt: true`. `GET /props`
  tells its `total_slots`; when it answers, every call of a run is sent with
  `id_slot = hash(run id) % total_slots` and `cache_prompt: true`, so planner, joiner and
  replans of one run land in the same slot and re-evaluate only what is new.
- llama-cpp-python's server (`python -m llama_cpp.server`, what CI runs) has no slots: one
  `Llama` object with one KV context serves every request in turn (behind a lock), and it
  ignores unknown body fields such as `id_slot`/`cache_prompt` (no `/props` either). What it
  has is (a) automatic reuse of the longest common token prefix with the *previous* request
  in that one context, and (b) with `--cache true`, a prompt cache (LlamaRAMCache) that saves
  the KV state after every completion keyed by its tokens and, for a new request, restores
  the saved state with the longest common prefix. So there, affinity means: start the
  server with `--cache true` (the run's earlier states survive other runs' requests in
  between) and keep the run's prompts prefix-extending; the client sends `user=<run id>`
  and nothing else. Also start it with `--interrupt_requests false`: by default it cuts a
  streaming reply short (a `[DONE]` with no finish_reason) whenever another request waits.
- Hosted APIs (OpenAI) cache prefixes by themselves; `user` is sent, nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import openai

try:  # openai 2.x+ talks through httpx2, whose errors are not httpx's
    import httpx2

    _CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
        openai.APIConnectionError,
        httpx.HTTPError,
        httpx2.HTTPError,
    )
except ImportError:  # pragma: no cover - older openai
    _CONNECTION_ERRORS = (openai.APIConnectionError, httpx.HTTPError)

from ..errors import PlaitError
from .base import Delta, LLMError, Request, Usage
from .limits import LimitConfig, limiter_for

SCHEMA_FORMATS = ("auto", "json_schema", "json_object", "off")
_schema_form: dict[str, str] = {}  # endpoint -> the response_format form that works there
_slots: dict[str, int] = {}  # endpoint -> llama-server total_slots (0: no slots)


class OpenAILLM:
    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        json_schema: bool = True,
        schema: str = "auto",
        max_concurrency: int = 16,
        adaptive: bool = True,
        affinity: bool = True,
        client: openai.AsyncOpenAI | None = None,
    ) -> None:
        if schema not in SCHEMA_FORMATS:
            raise PlaitError(f"openai model: schema must be one of {', '.join(SCHEMA_FORMATS)}")
        if max_concurrency < 1:
            raise PlaitError("openai model: max_concurrency must be at least 1")
        self.model = model
        self.name = f"openai:{model}"
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        self._schema = schema if json_schema else "off"
        self.affinity = affinity
        self.endpoint = (self.base_url or "https://api.openai.com/v1").rstrip("/")
        self.limiter = limiter_for(
            self.endpoint,
            LimitConfig(
                max_limit=max_concurrency,
                initial=min(4.0, float(max_concurrency)),
                adaptive=adaptive,
            ),
        )
        self._client = client
        # Whether a key was given at all: a 401 without one says so, not just "unauthorized".
        self.key_set = bool(api_key or os.environ.get("OPENAI_API_KEY"))
        self._client_args: dict[str, Any] = {
            "base_url": self.base_url,
            "api_key": api_key or os.environ.get("OPENAI_API_KEY") or "not-needed",
            "max_retries": 0,
            "timeout": timeout,
        }

    @classmethod
    def from_spec(cls, rest: str, **options: Any) -> OpenAILLM:
        model, _, query = rest.partition("?")
        if not model:
            raise PlaitError("openai model needs a name: openai:MODEL")
        for key, values in parse_qs(query, keep_blank_values=True).items():
            value = values[-1]
            try:
                if key in ("max_concurrency",):
                    options[key] = int(value)
                elif key == "timeout":
                    options[key] = float(value)
                elif key in ("adaptive", "affinity"):
                    if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                        raise ValueError(value)
                    options[key] = value.lower() in ("1", "true", "yes", "on")
                elif key == "schema":
                    options[key] = value
                else:
                    raise PlaitError(
                        f"openai model: unknown option {key!r} "
                        "(use max_concurrency, adaptive, affinity, schema, timeout)"
                    )
            except ValueError:
                raise PlaitError(f"openai model: bad value for {key} in {rest!r}") from None
        return cls(model, **options)

    @property
    def supports_json_schema(self) -> bool:
        return self._schema != "off"

    # request building ---------------------------------------------------------------

    def _response_format(self, schema: dict[str, Any], form: str) -> dict[str, Any]:
        if form == "json_object":
            return {"type": "json_object", "schema": schema}
        return {"type": "json_schema", "json_schema": {"name": "plan", "schema": schema}}

    async def _slot_count(self) -> int:
        """llama-server's slot count from GET /props; 0 for servers without slots."""
        if self.endpoint in _slots:
            return _slots[self.endpoint]
        root = self.endpoint[: -len("/v1")] if self.endpoint.endswith("/v1") else self.endpoint
        try:
            async with httpx.AsyncClient(timeout=5.0) as http:
                r = await http.get(f"{root}/props")
        except httpx.HTTPError:
            return 0  # unknown for now: ask again on the next call
        n = 0
        if r.status_code == 200:
            try:
                n = int(r.json().get("total_slots") or 0)
            except (ValueError, AttributeError, TypeError):
                n = 0
        _slots[self.endpoint] = n
        return n

    async def _affinity(self, session: str) -> dict[str, Any]:
        slots = await self._slot_count()
        if slots <= 0:
            return {}
        digest = hashlib.blake2b(session.encode(), digest_size=8).digest()
        return {"cache_prompt": True, "id_slot": int.from_bytes(digest, "big") % slots}

    # streaming ----------------------------------------------------------------------

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
        if request.session:
            kwargs["user"] = request.session
            if self.affinity:
                extra = await self._affinity(request.session)
                if extra:
                    kwargs["extra_body"] = extra
        form = ""
        if request.json_schema is not None and self._schema != "off":
            form = self._schema
            if form == "auto":
                form = _schema_form.get(self.endpoint, "json_schema")
            kwargs["response_format"] = self._response_format(request.json_schema, form)

        # One HTTP client per call unless one was given: it is closed here, on the loop that
        # opened its connections (a client outliving `asyncio.run` fails when collected).
        own = None if self._client is not None else openai.AsyncOpenAI(**self._client_args)
        api = self._client or own
        assert api is not None
        async with contextlib.AsyncExitStack() as stack:
            if own is not None:
                stack.push_async_callback(own.close)
            slot = await stack.enter_async_context(self.limiter.slot())
            inner = self._stream(api, request, kwargs, form, slot)
            async with contextlib.aclosing(inner):  # type: ignore[type-var]
                async for delta in inner:
                    yield delta

    async def _stream(
        self,
        api: openai.AsyncOpenAI,
        request: Request,
        kwargs: dict[str, Any],
        form: str,
        slot: Any,
    ) -> AsyncIterator[Delta]:
        finished = got_usage = False
        stream: Any = None
        try:
            try:
                stream = await api.chat.completions.create(**kwargs)
            except openai.APIStatusError as e:
                if not (
                    form == "json_schema"
                    and self._schema == "auto"
                    and e.status_code in (400, 422, 500)
                    and "response_format" in str(e.message) + str(e.body)
                ):
                    raise
                # this server wants llama-cpp-python's form: ask again, nothing was read
                _schema_form[self.endpoint] = "json_object"
                assert request.json_schema is not None
                kwargs["response_format"] = self._response_format(
                    request.json_schema, "json_object"
                )
                stream = await api.chat.completions.create(**kwargs)
            # llama-cpp-python's server sends no usage chunk: until the server's own
            # numbers come, count streamed chunks (one token each on llama.cpp servers)
            # and estimate the prompt at 4 characters a token.
            prompt_estimate = sum(len(m.get("content") or "") for m in request.messages) // 4
            chunks = 0
            async for chunk in stream:
                if chunk.choices:
                    choice = chunk.choices[0]
                    text = choice.delta.content if choice.delta else None
                    if text:
                        chunks += 1
                        yield Delta(text, None if got_usage else Usage(prompt_estimate, chunks))
                    if choice.finish_reason:
                        finished = True
                if chunk.usage is not None:
                    got_usage = True
                    yield Delta("", Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens))
        except openai.APIStatusError as e:
            err = _status_error(e)
            if err.status in (401, 403) and not self.key_set:
                err.message += " (OPENAI_API_KEY is not set)"
            if err.status in (429, 503):
                slot.overloaded(err.retry_after)
            raise err from None
        except openai.APITimeoutError as e:
            raise LLMError(f"timed out: {e}", retryable=True) from None
        except _CONNECTION_ERRORS as e:
            raise LLMError(f"connection lost: {_why(e)}", retryable=True) from None
        except openai.APIError as e:  # e.g. an error event inside the stream
            raise LLMError(str(e), retryable=True) from None
        except (json.JSONDecodeError, asyncio.IncompleteReadError, ConnectionError) as e:
            raise LLMError(f"broken stream: {e}", retryable=True) from None
        except GeneratorExit:  # the caller had what it needed and stopped reading
            slot.ok()
            raise
        finally:
            if stream is not None:  # free the connection (and the server's work) now
                with contextlib.suppress(Exception):
                    await stream.close()
        if not finished:
            raise LLMError("stream ended before the reply finished", retryable=True)
        slot.ok()


def _why(e: BaseException) -> str:
    cause = e.__cause__ or e.__context__
    text = str(e)
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text} ({type(cause).__name__}: {cause})"
    return text or type(e).__name__


def _retry_after(response: Any) -> float | None:
    if response is None:
        return None
    header = response.headers.get("retry-after-ms")
    if header:
        try:
            return float(header) / 1000.0
        except ValueError:
            pass
    header = response.headers.get("retry-after")
    if not header:
        return None
    try:
        return max(float(header), 0.0)
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    import datetime as dt

    return max((when - dt.datetime.now(dt.UTC)).total_seconds(), 0.0)


def _status_error(e: openai.APIStatusError) -> LLMError:
    status = e.status_code
    retryable = status in (408, 409, 425, 429) or status >= 500
    return LLMError(
        f"HTTP {status}: {e.message}",
        retryable=retryable,
        retry_after=_retry_after(e.response),
        status=status,
    )
