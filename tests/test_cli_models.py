"""Model flags and specs (issue 13, item 4): a spec without its scheme is met with the spec
meant, `ollama:NAME`, a 401 without OPENAI_API_KEY says the key is unset, `--temperature` and
`--max-tokens` reach every request (and a resume), `-V`, and `--help` naming the environment."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import openai
import pytest

import plait
from plait.batch import abatch
from plait.errors import PlaitError
from plait.llm import SampledLLM, resolve_model, with_sampling
from plait.llm.base import LLMError, Request, Usage
from plait.llm.openai import OpenAILLM
from plait.llm.replay import ReplayLLM
from test_cli import FINISH, PLAN, QUESTION, assert_one_line, one_json_object, plait_main
from test_cli_store import db

# -- specs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "meant"),
    [
        ("gpt-4o-mini", ["'openai:gpt-4o-mini'"]),
        ("Qwen/Qwen2.5-7B-Instruct", ["'openai:Qwen/Qwen2.5-7B-Instruct'"]),
        ("llama3.1:8b", ["'openai:llama3.1:8b'", "'ollama:llama3.1:8b'"]),
    ],
)
def test_a_spec_without_its_scheme_suggests_the_one_meant(capsys, example_tools, spec, meant):
    code, out, err = plait_main(capsys, "run", "q", "--tools", example_tools, "--model", spec)
    assert (code, out) == (2, "")
    line = assert_one_line(err)
    assert f"unknown model {spec!r}: did you mean " in line
    for m in meant:
        assert m in line
    assert "ollama:MODEL" in line  # and the list of every form


def test_ollama_is_openai_at_ollamas_default_url(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://elsewhere.test/v1")
    llm = resolve_model("ollama:llama3.1")
    assert isinstance(llm, OpenAILLM)
    assert (llm.model, llm.base_url) == ("llama3.1", "http://localhost:11434/v1")
    assert llm.name == "ollama:llama3.1"
    given = resolve_model(
        "ollama:qwen2.5:7b?max_concurrency=2", base_url="http://gpu.test:11434/v1"
    )
    assert (given.model, given.base_url) == ("qwen2.5:7b", "http://gpu.test:11434/v1")  # type: ignore[attr-defined]
    with pytest.raises(PlaitError, match="ollama model needs a name"):
        resolve_model("ollama:")


# -- the API key --------------------------------------------------------------------------


def refusing(handler: object = None) -> OpenAILLM:
    def reply(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": {"message": "Incorrect API key provided"}})

    client = openai.AsyncOpenAI(
        base_url="http://fake.test/v1",
        api_key="not-needed",
        max_retries=0,
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(reply)),  # type: ignore[arg-type]
    )
    return OpenAILLM("gpt-4o-mini", base_url="http://fake.test/v1", client=client, affinity=False)


async def ask(llm: OpenAILLM) -> LLMError:
    with pytest.raises(LLMError) as info:
        async for _ in llm.stream(Request([{"role": "user", "content": "hi"}])):
            pass
    return info.value


async def test_a_401_without_an_api_key_says_the_key_is_unset(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    error = await ask(refusing())
    assert error.status == 401 and not error.retryable
    assert "OPENAI_API_KEY is not set" in str(error)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    error = await ask(refusing())
    assert "OPENAI_API_KEY" not in str(error)  # a key was set: it is just wrong


@pytest.fixture
def unauthorized_server() -> Iterator[str]:
    """An OpenAI-compatible endpoint on loopback that answers every call with a 401."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.dumps({"error": {"message": "You didn't provide an API key."}}).encode()
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_plait_run_without_a_key_ends_saying_so(
    capsys, monkeypatch, unauthorized_server, example_tools
):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    code, out, err = plait_main(
        capsys,
        "run",
        "q",
        "--tools",
        example_tools,
        "--model",
        "openai:gpt-4o-mini",
        "--base-url",
        unauthorized_server,
    )
    assert (code, out) == (1, "")
    last = err.strip().splitlines()[-1]
    assert "HTTP 401" in last and "OPENAI_API_KEY is not set" in last


# -- --temperature and --max-tokens -------------------------------------------------------


@pytest.fixture
def requests_seen(monkeypatch) -> list[Request]:
    """Every Request the replay model is sent."""
    seen: list[Request] = []
    original = ReplayLLM.stream

    def stream(self, request: Request):  # type: ignore[no-untyped-def]
        seen.append(request)
        return original(self, request)

    monkeypatch.setattr(ReplayLLM, "stream", stream)
    return seen


def test_run_sends_every_request_at_the_temperature_and_bound_given(
    capsys, replies, example_tools, requests_seen
):
    code, out, _ = plait_main(
        capsys,
        "run",
        QUESTION,
        "--tools",
        example_tools,
        "--model",
        replies(PLAN, FINISH),
        "--temperature",
        "0.7",
        "--max-tokens",
        "321",
        "--json",
    )
    assert code == 0 and one_json_object(out)["status"] == "done"
    assert [(r.temperature, r.max_tokens) for r in requests_seen] == [(0.7, 321), (0.7, 321)]


def test_without_the_flags_requests_are_as_before(capsys, replies, example_tools, requests_seen):
    code, _, _ = plait_main(
        capsys, "run", QUESTION, "--tools", example_tools, "--model", replies(PLAN, FINISH)
    )
    assert code == 0
    assert [(r.temperature, r.max_tokens) for r in requests_seen] == [(0.0, None), (0.0, None)]


def test_a_resumed_run_keeps_its_temperature(
    capsys, tmp_path, replies, example_tools, requests_seen
):
    store = db(tmp_path)
    model = replies(PLAN, FINISH)
    argv = ("--tools", example_tools, "--store", store)
    code, _, _ = plait_main(
        capsys, "run", QUESTION, *argv, "--model", model, "--run-id", "T", "--temperature", "0.3"
    )
    assert code == 0
    info = plait.open_store(store).get("T")
    assert info is not None
    assert (info.options["temperature"], info.options["max_tokens"]) == (0.3, None)
    # a resume resolves the model again from the run's record, with its temperature
    llm = with_sampling(ReplayLLM([]), info.options["temperature"], info.options["max_tokens"])
    assert isinstance(llm, SampledLLM) and llm.temperature == 0.3


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--temperature", "-0.1"), ("--temperature", "2.5"), ("--temperature", "hot"),
     ("--max-tokens", "0"), ("--max-tokens", "many")],
)  # fmt: skip
def test_bad_sampling_flags_exit_2(capsys, example_tools, flag, value):
    code, out, err = plait_main(capsys, "run", "q", "--tools", example_tools, flag, value)
    assert (code, out) == (2, "")
    assert flag in assert_one_line(err)


def test_batch_sends_every_request_at_the_temperature_given(
    capsys, tmp_path, replies, example_tools, requests_seen
):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": 1, "question": QUESTION}) + "\n")
    code, _, _ = plait_main(
        capsys,
        "batch",
        inp,
        "--tools",
        example_tools,
        "--model",
        replies(PLAN, FINISH),
        "--out",
        tmp_path / "out.jsonl",
        "--temperature",
        "0.9",
        "--max-tokens",
        "77",
    )
    assert code == 0
    assert [(r.temperature, r.max_tokens) for r in requests_seen] == [(0.9, 77), (0.9, 77)]


async def test_a_batch_above_temperature_0_sends_identical_requests_each(tmp_path, example_tools):
    # At temperature 0 a batch sends identical requests once; above it, a reply is a sample
    # and every request goes out: the temperature is set outside the batch's sharing.
    path = tmp_path / "r.json"
    path.write_text(json.dumps({QUESTION: [PLAN, FINISH, PLAN, FINISH]}))
    items = [{"id": i, "question": QUESTION} for i in range(2)]
    stats = plait.batch.BatchStats()
    kw = {"tools": str(example_tools), "model": f"replay:{path}", "concurrency": 1}
    results = [r async for r in abatch(items, **kw, temperature=0.5, stats=stats)]
    assert [r.status for r in results] == ["done", "done"]
    assert (stats.llm_calls_requested, stats.llm_calls_made) == (4, 4)
    stats = plait.batch.BatchStats()
    results = [r async for r in abatch(items, **kw, stats=stats)]
    assert (stats.llm_calls_requested, stats.llm_calls_made) == (4, 2)


async def test_sampled_llm_closes_the_stream_it_wraps():
    closed = asyncio.Event()

    class Endless:
        name = "endless"
        supports_json_schema = False

        async def stream(self, request: Request):  # type: ignore[no-untyped-def]
            try:
                while True:
                    yield plait.llm.Delta("x")
            finally:
                closed.set()

    stream = with_sampling(Endless(), temperature=1.0).stream(Request([]))
    async for _ in stream:
        break
    await stream.aclose()  # type: ignore[attr-defined]
    assert closed.is_set()


# -- -V and --help ------------------------------------------------------------------------


def test_dash_capital_v_prints_the_version(capsys):
    code, out, _ = plait_main(capsys, "-V")
    assert code == 0
    assert out.startswith("plait, version ")


def test_help_names_the_environment_and_the_plan_syntax(capsys):
    code, out, _ = plait_main(capsys, "--help")
    assert code == 0
    for name in ("PLAIT_STORE", "OPENAI_API_KEY", "OPENAI_BASE_URL", "RAY_ADDRESS"):
        assert f"\n    {name} " in out
    assert 'README.md, section "Plans"' in out
    assert '1. search("Eiffel Tower height")' in out


def test_a_temperature_keeps_a_scoring_model_choosing_by_score():
    # --temperature wrapped the embedded model in a SampledLLM that was no Scorer, so the
    # agent silently stopped choosing by score (the small model then answers almost nothing).
    from plait.llm.base import Scorer

    class Scoring(ReplayLLM):
        async def score(self, request, prefix, candidates):
            return [0.0] * len(candidates), Usage(0, 0)

    sampled = with_sampling(Scoring([]), temperature=0.7)
    assert isinstance(sampled, SampledLLM) and isinstance(sampled, Scorer)
    assert not isinstance(with_sampling(ReplayLLM([]), temperature=0.7), Scorer)
