"""Parallel samples against what breaks them: attempts that share a model's scores, an
attempt cut short before it did anything (the trace must still be the answer's run), an
attempt whose model failed (the reason must be said, not "no answer")."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import plait
from plait.agent.samples import CHOICE_TEMPERATURE, ChoiceSampler
from plait.core import events as ev
from plait.llm.base import Delta, LLMError, Request, Scorer, Usage
from plait.llm.local import LocalLLM
from test_cli import one_json_object, plait_main

EXAMPLE_TOOLS = str(Path(__file__).parents[2] / "examples" / "tools.py")


# the local model's score cache ---------------------------------------------------------


def cached_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[LocalLLM, list]:
    """A LocalLLM whose llama.cpp work is a stub that records each scoring it does."""
    weights = tmp_path / "m.gguf"
    weights.write_bytes(b"")
    llm = LocalLLM(weights)
    scored: list[tuple[str, list[str]]] = []
    release = threading.Event()
    release.set()
    monkeypatch.setattr(llm, "_model", lambda: (object(), threading.Lock()))
    monkeypatch.setattr(
        llm, "_chat_prompt", lambda _, messages: "|".join(m["content"] for m in messages)
    )

    def score(text: str, session: str | None, candidates: list[str]) -> tuple[list, Usage]:
        release.wait(10)
        if "broken" in text:
            raise RuntimeError("llama_decode returned 1 (context full?)")
        scored.append((text, candidates))
        return [-float(len(c)) for c in candidates], Usage(len(text), len(candidates))

    monkeypatch.setattr(llm, "_score", score)
    llm.release = release  # type: ignore[attr-defined]
    return llm, scored


async def test_one_choice_point_asked_by_many_attempts_is_scored_once(tmp_path, monkeypatch):
    llm, scored = cached_model(tmp_path, monkeypatch)
    llm.release.clear()  # type: ignore[attr-defined]
    request = Request([{"role": "user", "content": "How tall is it?"}], session="a~1")
    other = Request([{"role": "user", "content": "How tall is it?"}], session="a~2")
    asked = [
        asyncio.create_task(llm.score(r, "1. ", ["search(", "join()"]))
        for r in (request, other, request)
    ]
    await asyncio.sleep(0.05)  # all three in flight while the first is being scored
    llm.release.set()  # type: ignore[attr-defined]
    answers = await asyncio.gather(*asked)
    assert len(scored) == 1  # the session is no part of what is scored
    assert all(a == answers[0] for a in answers)
    again = await llm.score(other, "1. ", ["search(", "join()"])
    assert again == answers[0] and len(scored) == 1
    # Another prefix, or other candidates, is another request.
    await llm.score(request, "2. ", ["search(", "join()"])
    await llm.score(request, "1. ", ["search(", "calculate("])
    assert len(scored) == 3


async def test_the_score_cache_is_bounded_and_a_failure_is_not_kept(tmp_path, monkeypatch):
    import plait.llm.local as local

    monkeypatch.setattr(local, "SCORE_CACHE", 2)
    llm, scored = cached_model(tmp_path, monkeypatch)
    ask = [Request([{"role": "user", "content": f"q{i}"}]) for i in range(3)]
    for r in ask:
        await llm.score(r, "", ["a", "bb"])
    assert len(llm._scored) == 2
    await llm.score(ask[2], "", ["a", "bb"])  # still kept
    assert len(scored) == 3
    await llm.score(ask[0], "", ["a", "bb"])  # the oldest was dropped: scored again
    assert len(scored) == 4
    broken = Request([{"role": "user", "content": "broken"}])
    for _ in range(2):
        with pytest.raises(LLMError, match="scoring failed: llama_decode returned 1"):
            await llm.score(broken, "", ["a", "bb"])
    assert not llm._waiting


async def test_the_choice_most_attempts_wait_for_is_scored_first_and_an_abandoned_one_never(
    tmp_path, monkeypatch
):
    llm, scored = cached_model(tmp_path, monkeypatch)
    llm.release.clear()  # type: ignore[attr-defined]

    def ask(text: str) -> asyncio.Task:
        request = Request([{"role": "user", "content": text}])
        return asyncio.create_task(llm.score(request, "", ["a", "bb"]))

    first = ask("first")
    await asyncio.sleep(0.05)  # being scored: the model is busy with it
    alone, shared, dropped = ask("one attempt's"), [ask("shared") for _ in range(3)], ask("cut")
    await asyncio.sleep(0.01)
    dropped.cancel()  # its attempt was cut short before the model got to it
    llm.release.set()  # type: ignore[attr-defined]
    await asyncio.gather(first, alone, *shared)
    assert [text for text, _ in scored] == ["first", "shared", "one attempt's"]
    assert dropped.cancelled()


async def test_a_scoring_already_started_is_finished_and_kept_when_its_caller_leaves(
    tmp_path, monkeypatch
):
    llm, scored = cached_model(tmp_path, monkeypatch)
    llm.release.clear()  # type: ignore[attr-defined]
    request = Request([{"role": "user", "content": "q"}])
    asked = asyncio.create_task(llm.score(request, "", ["a", "bb"]))
    await asyncio.sleep(0.05)  # on the model now
    asked.cancel()
    await asyncio.sleep(0)
    llm.release.set()  # type: ignore[attr-defined]
    again = await llm.score(request, "", ["a", "bb"])  # waits for it, or finds it kept
    assert again[0] == [-1.0, -2.0]
    assert len(scored) == 1


# the attempts of a scoring model ------------------------------------------------------


class RecordingScorer:
    """A scoring model that prefers the first candidate a little and records the prompt
    of every planner choice, by run."""

    name = "recording-scorer"
    supports_json_schema = False

    def __init__(self) -> None:
        self.prompts: dict[str | None, list[str]] = {}

    async def score(
        self, request: Request, prefix: str, candidates: Sequence[str]
    ) -> tuple[list[float], Usage]:
        self.prompts.setdefault(request.session, []).append(json.dumps(request.messages) + prefix)
        await asyncio.sleep(0)
        return [-0.1 * k for k in range(len(candidates))], Usage(10, len(candidates))

    def stream(self, request: Request) -> AsyncIterator[Delta]:
        raise AssertionError("every choice is scored")


async def test_attempts_of_a_scoring_model_share_one_prompt_and_sample_their_choices(
    monkeypatch,
):
    model = RecordingScorer()
    seen: list[Any] = []
    real_init = ChoiceSampler.__init__

    def spy(self: ChoiceSampler, llm: Any, seed: int, temperature: float = 0.0) -> None:
        seen.append((seed, temperature))
        real_init(self, llm, seed, temperature)

    monkeypatch.setattr(ChoiceSampler, "__init__", spy)
    result = await plait.arun(
        "How tall is the Eiffel Tower?", tools=EXAMPLE_TOOLS, model=model,
        store="memory://", samples=4, agree=4,
    )  # fmt: skip
    assert isinstance(model, Scorer)
    t = CHOICE_TEMPERATURE
    assert sorted(seen) == [(1, t), (2, t), (3, t)]  # attempt 0 stays greedy
    assert result.attempts is not None and len(result.attempts) == 4
    runs = [a["run_id"] for a in result.attempts]
    firsts = {model.prompts[r][0] for r in runs}
    assert len(firsts) == 1  # one prompt: the same examples and tactics for every attempt


# the trace and the report of sampled attempts ------------------------------------------


def replay(tmp_path: Path, replies: list[str]) -> str:
    path = tmp_path / "replies.json"
    path.write_text(json.dumps(replies))
    return f"replay:{path}?tps=400"


def test_the_trace_is_the_chosen_attempts_even_when_the_first_is_cut_short(capsys, tmp_path):
    # The plan of the attempt that asks first thinks for minutes before its first task: the
    # other two agree long before, and it is cut short with nothing run.
    slow = "Thought: " + "let me think. " * 4000 + '\n1. search("Eiffel Tower")\n2. join()\n'
    fast = '1. search("Eiffel Tower")\n2. join()\n'
    answer = "Action: Finish(330 metres)"
    model = replay(tmp_path, [slow, fast, fast, answer, answer])
    trace = tmp_path / "t.json"
    code, out, err = plait_main(
        capsys, "run", "How tall is the Eiffel Tower?", "--tools", EXAMPLE_TOOLS,
        "--model", model, "--samples", "3", "--agree", "2", "--trace", trace, "--json",
    )  # fmt: skip
    assert code == 0, err
    data = one_json_object(out)
    assert data["answer"] == "330 metres"
    cut = [a for a in data["attempts"] if a["cut_short"]]
    assert len(cut) == 1 and cut[0]["run_id"] != data["run_id"]
    doc = json.loads(trace.read_text())
    names = [e.get("name") for e in doc["traceEvents"]]
    meta = next(e for e in doc["traceEvents"] if e.get("name") == "process_name")
    assert meta["args"]["name"] == f"plait run {data['run_id']}"  # the chosen attempt's
    assert sum("search" in str(n) for n in names) == 1
    assert sum("joiner" in str(n) for n in names) == 1


class SlowFirstAttempt:
    """Attempt 0 (run `r~1`) thinks for an hour before its first task; the others answer."""

    name = "slow-first"
    supports_json_schema = False

    async def stream(self, request: Request) -> AsyncIterator[Delta]:
        if request.session == "r~1":
            yield Delta("Thought: let me think.")
            await asyncio.sleep(3600)
        last = request.messages[-1]["content"]
        if "Action" in last or "Finish" in last:
            yield Delta("Action: Finish(330 metres)")
        else:
            yield Delta('1. search("Eiffel Tower")\n2. join()\n')


def test_the_trace_is_written_when_the_attempt_the_live_view_follows_is_cut_short(tmp_path):
    from plait.cli.main import _Listener
    from plait.runs.trace import TraceRecorder

    listener = _Listener(TraceRecorder(), None)
    result = plait.run(
        "How tall is the Eiffel Tower?", tools=EXAMPLE_TOOLS, model=SlowFirstAttempt(),
        store="memory://", samples=3, agree=2, run_id="r", on_event=listener,
    )  # fmt: skip
    assert result.attempts is not None and result.attempts[0]["cut_short"] is True
    assert result.run_id in ("r~2", "r~3")
    trace = listener.trace
    assert trace is not None and trace.run_id == result.run_id
    names = [e["name"] for e in trace.events]
    assert any("search" in n for n in names) and any("joiner" in n for n in names)
    trace.write(tmp_path / "t.json")
    assert json.loads((tmp_path / "t.json").read_text())["traceEvents"]


class FailsFirst:
    """A model whose first call (attempt 0's planner) fails for good; the others answer."""

    name = "fails-first"
    supports_json_schema = False

    def __init__(self) -> None:
        self.calls = 0

    async def stream(self, request: Request) -> AsyncIterator[Delta]:
        self.calls += 1
        if self.calls == 1:
            raise LLMError("the GPU fell off the bus")
        last = request.messages[-1]["content"]
        if "Action" in last or "Finish" in last:
            yield Delta("Action: Finish(330 metres)")
        else:
            yield Delta('1. search("Eiffel Tower")\n2. join()\n')


async def test_an_attempt_whose_model_failed_reports_the_model_error():
    result = await plait.arun(
        "How tall is the Eiffel Tower?", tools=EXAMPLE_TOOLS, model=FailsFirst(),
        store="memory://", samples=3, agree=2,
    )  # fmt: skip
    assert result.answer == "330 metres"
    assert result.attempts is not None
    failed = result.attempts[0]
    assert failed["answer"] is None
    assert "the GPU fell off the bus" in (failed["error"] or "")
    assert failed["error"] != "no answer"


def test_events_of_the_chosen_attempt_reach_a_listener_that_asks_for_them():
    heard: list[ev.Event] = []
    chosen: list[list[ev.Event]] = []

    class Listener:
        def __call__(self, e: ev.Event) -> None:
            heard.append(e)

        def chosen(self, events: list[ev.Event]) -> None:
            chosen.append(events)

    fast = '1. search("Eiffel Tower")\n2. join()\n'
    model = plait.llm.replay.ReplayLLM([fast] * 3 + ["Action: Finish(330 metres)"] * 3)
    result = plait.run(
        "How tall is the Eiffel Tower?", tools=EXAMPLE_TOOLS, model=model,
        store="memory://", samples=3, agree=3, on_event=Listener(),
    )  # fmt: skip
    assert len(chosen) == 1
    started = [e for e in chosen[0] if isinstance(e, ev.RunStarted)]
    assert [e.run_id for e in started] == [result.run_id]
    assert any(isinstance(e, ev.RunFinished) for e in chosen[0])
