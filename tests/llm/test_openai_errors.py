"""OpenAILLM maps every failure to LLMError correctly (httpx MockTransport, no server)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import httpx
import openai
import pytest

from plait.llm.base import LLMError, Request
from plait.llm.openai import OpenAILLM

URL = "http://fake.test/v1"


def sse(*events: dict[str, object], done: bool = True) -> bytes:
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return body + (b"data: [DONE]\n\n" if done else b"")


def chunk(text: str | None, finish: str | None = None) -> dict[str, object]:
    return {
        "id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}],
    }  # fmt: skip


def llm_for(handler: Callable[[httpx.Request], object], **kw: object) -> OpenAILLM:
    client = openai.AsyncOpenAI(
        base_url=URL,
        api_key="k",
        max_retries=0,
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),  # type: ignore[arg-type]
    )
    return OpenAILLM("m", base_url=URL, client=client, affinity=False, **kw)  # type: ignore[arg-type]


async def collect(llm: OpenAILLM, request: Request | None = None) -> str:
    req = request or Request([{"role": "user", "content": "hi"}], session="run1")
    return "".join([d.text async for d in llm.stream(req)])


async def test_streams_text() -> None:
    llm = llm_for(lambda r: httpx.Response(200, content=sse(chunk("a"), chunk("b", "stop"))))
    assert await collect(llm) == "ab"


@pytest.mark.parametrize(
    ("status", "headers", "retryable", "retry_after"),
    [
        (429, {"Retry-After": "2"}, True, 2.0),
        (429, {"retry-after-ms": "1500"}, True, 1.5),
        (500, {}, True, None),
        (502, {}, True, None),
        (503, {}, True, None),
        (408, {}, True, None),
        (400, {}, False, None),
        (401, {}, False, None),
        (404, {}, False, None),
        (422, {}, False, None),
    ],
)
async def test_status_mapping(
    status: int, headers: dict[str, str], retryable: bool, retry_after: float | None
) -> None:
    llm = llm_for(lambda r: httpx.Response(status, headers=headers, json={"error": "x"}))
    with pytest.raises(LLMError) as e:
        await collect(llm)
    assert e.value.retryable is retryable
    assert e.value.retry_after == retry_after
    assert e.value.status == status


async def test_429_shrinks_the_endpoint_limit() -> None:
    llm = llm_for(lambda r: httpx.Response(429, json={"error": "slow down"}))
    before = llm.limiter.limit
    with pytest.raises(LLMError):
        await collect(llm)
    assert llm.limiter.limit < before and llm.limiter.in_flight == 0


@pytest.mark.parametrize(
    "exc", [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.ConnectTimeout("t")]
)
async def test_connect_and_read_failures_are_retryable(exc: Exception) -> None:
    def handler(r: httpx.Request) -> httpx.Response:
        raise exc

    with pytest.raises(LLMError) as e:
        await collect(llm_for(handler))
    assert e.value.retryable


async def test_stream_without_finish_reason_is_retryable() -> None:
    llm = llm_for(lambda r: httpx.Response(200, content=sse(chunk("a"), done=False)))
    with pytest.raises(LLMError, match="before the reply finished") as e:
        await collect(llm)
    assert e.value.retryable


class Cut(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield sse(chunk("par"), done=False)
        raise httpx.RemoteProtocolError("peer closed connection without complete body")


async def test_stream_cut_mid_reply_is_retryable() -> None:
    llm = llm_for(lambda r: httpx.Response(200, stream=Cut()))
    with pytest.raises(LLMError) as e:
        await collect(llm)
    assert e.value.retryable


async def test_schema_falls_back_to_json_object_form() -> None:
    forms: list[str] = []

    def handler(r: httpx.Request) -> httpx.Response:
        fmt = json.loads(r.content)["response_format"]
        forms.append(fmt["type"])
        if fmt["type"] == "json_schema":
            return httpx.Response(422, json={"detail": "response_format.type: bad literal"})
        assert fmt["schema"] == {"type": "object"}
        return httpx.Response(200, content=sse(chunk("{}", "stop")))

    llm = llm_for(handler)
    req = Request([{"role": "user", "content": "x"}], json_schema={"type": "object"})
    assert await collect(llm, req) == "{}"
    assert await collect(llm, req) == "{}"
    assert forms == ["json_schema", "json_object", "json_object"]  # remembered per endpoint


async def test_affinity_sends_slot_to_llama_server() -> None:
    bodies: list[dict[str, object]] = []

    def handler(r: httpx.Request) -> httpx.Response:
        if r.url.path == "/props":
            return httpx.Response(200, json={"total_slots": 4})
        bodies.append(json.loads(r.content))
        return httpx.Response(200, content=sse(chunk("ok", "stop")))

    transport = httpx.MockTransport(handler)
    client = openai.AsyncOpenAI(
        base_url="http://slots.test/v1", api_key="k", max_retries=0,
        http_client=httpx.AsyncClient(transport=transport),
    )  # fmt: skip
    llm = OpenAILLM("m", base_url="http://slots.test/v1", client=client)
    orig = httpx.AsyncClient

    class Patched(orig):  # type: ignore[misc, valid-type]
        def __init__(self, **kw: object) -> None:
            super().__init__(transport=transport, **kw)  # type: ignore[arg-type]

    httpx.AsyncClient = Patched  # type: ignore[misc]
    try:
        for _ in range(2):
            await collect(llm, Request([{"role": "user", "content": "x"}], session="run-a"))
    finally:
        httpx.AsyncClient = orig  # type: ignore[misc]
    assert bodies[0]["cache_prompt"] is True
    assert bodies[0]["id_slot"] == bodies[1]["id_slot"]
    assert 0 <= int(bodies[0]["id_slot"]) < 4  # type: ignore[call-overload]
    assert bodies[0]["user"] == "run-a"
