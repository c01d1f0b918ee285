"""Speculative tasks: llmcompiler.py's workloads with a planner that thinks first, with and
without a draft model's speculation.

The workloads, tools (made pure: speculation only ever runs pure tools), latencies and LLM
timing are bench/llmcompiler.py's (ttft 0.5 s, 40 tokens/s), except that the planner now
writes a `Thought:` of --think seconds (1.5 s: 60 tokens) before its first task, as a
reasoning planner does. The draft model is a `ReplayLLM` at ttft 0.1 s and 400 tokens/s
that writes the plan's tasks with no thought.

Measured in one process, one after the other, median of --repeat:
- **none**: `plait.arun(question)`, no speculation;
- **right**: `draft_model=` a draft that writes the same tasks as the planner: its calls
  start while the planner thinks, and the plan's tasks adopt them;
- **wrong**: a draft whose every call differs from the plan's (other arguments): every
  speculated call is wasted, cancelled when the plan is complete.
Reported: latency ÷ none, speculated calls used / wasted, and speculative joins (the
joiner started on the draft's whole plan and its speculated results) adopted / started.
Targets (issue 18): right ≤ 0.75× (≥ 25% lower latency), wrong ≤ 1.05×. The replayed model
serves its replies by prompt (the plan by the question, the joiner's reply by the join
turn), as a speculative join is a call of its own.

--tool-scale 3 makes every tool call three times slower (searches of 1.2-3.6 s, as a web
search or a retrieval service takes): speculation can only save the part of a call that
outlasts the planner's stream.

    python bench/speculate.py [--repeat 3] [--think 1.5] [--tool-scale 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import llmcompiler as lc  # bench/llmcompiler.py: its workloads, tools and timing
import plait
from plait.llm.replay import ReplayLLM

PURE = [plait.Tool(t.fn, **{**t.options(), "pure": True}) for t in lc.TOOLS.values()]
DRAFT_TTFT, DRAFT_TPS = 0.1, 400.0


def thought(seconds: float) -> str:
    words = "I should work out which facts the question needs and how they combine. "
    text = "Thought: "
    while len(text) < seconds * lc.TPS * lc.CHARS_PER_TOKEN:
        text += words
    return text[: int(seconds * lc.TPS * lc.CHARS_PER_TOKEN)] + "\n"


def draft(steps: list[tuple[str, str, str]], wrong: bool) -> str:
    lines = [
        f"{i}. {tool}({json.dumps(arg + ' (draft)' if wrong else arg)})"
        for i, (tool, arg, _) in enumerate(steps, 1)
    ]
    return "\n".join([*lines, f"{len(steps) + 1}. join()"])


async def once(
    question: str, plan: str, joiner: str, answer: str, draft_text: str | None
) -> dict[str, Any]:
    # Keyed by prompt, not by call order: a speculative join (wasted or not) is a call too.
    # The joiner's key is longer than the planner's and found in every join prompt.
    replies = {
        f"Question: {question}": [plan],
        f"Now decide, for the question: {question}": [joiner] * 2,
    }
    llm = ReplayLLM(replies, ttft=lc.TTFT, tps=lc.TPS)
    extra: dict[str, Any] = {}
    if draft_text is not None:
        extra["draft_model"] = ReplayLLM([draft_text], ttft=DRAFT_TTFT, tps=DRAFT_TPS)
    lc.CALLS.clear()
    start = time.perf_counter()
    result = await plait.arun(question, tools=PURE, model=llm, **extra)
    elapsed = time.perf_counter() - start
    assert result.status == "done", result.error
    assert result.answer == answer, result.answer
    spec = (result.savings or {}).get("speculated_calls") or {}
    joins = (result.savings or {}).get("speculated_joins") or {}
    return {
        "t": elapsed,
        "used": spec.get("used", 0),
        "wasted": spec.get("wasted", 0),
        "joins": f"{joins.get('used', 0)}/{joins.get('speculated', 0)}",
    }


async def main(repeat: int, think: float, scale: float) -> None:
    unscaled = lc.latency
    lc.latency = lambda tool, arg: unscaled(tool, arg) * scale  # the tools read it per call
    print(
        f"tool latencies × {scale:g}; "
        f"replayed LLM: ttft {lc.TTFT} s, {lc.TPS:g} tokens/s, planner thinks {think} s; "
        f"draft ttft {DRAFT_TTFT} s, {DRAFT_TPS:g} tokens/s; median of {repeat}"
    )
    print(
        f"{'workload':<15} {'none s':>7} {'right s':>8} {'right÷none':>10} {'used':>5}"
        f" {'joins':>5} {'wrong s':>8} {'wrong÷none':>10} {'wasted':>6} {'joins':>5}"
    )
    for name, (question, steps, joiner_thought, answer) in lc.WORKLOADS.items():
        plan = thought(think) + lc.plan_reply(steps)
        joiner = lc.finish_reply(joiner_thought, answer)
        runs: dict[str, list[dict[str, Any]]] = {"none": [], "right": [], "wrong": []}
        for _ in range(repeat):
            runs["none"].append(await once(question, plan, joiner, answer, None))
            runs["right"].append(await once(question, plan, joiner, answer, draft(steps, False)))
            runs["wrong"].append(await once(question, plan, joiner, answer, draft(steps, True)))
        t = {k: statistics.median(r["t"] for r in v) for k, v in runs.items()}
        right, wrong = runs["right"][-1], runs["wrong"][-1]
        print(
            f"{name:<15} {t['none']:>7.3f} {t['right']:>8.3f} {t['right'] / t['none']:>9.2f}×"
            f" {right['used']:>5} {right['joins']:>5} {t['wrong']:>8.3f}"
            f" {t['wrong'] / t['none']:>9.2f}× {wrong['wasted']:>6} {wrong['joins']:>5}"
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--think", type=float, default=1.5)
    ap.add_argument("--tool-scale", type=float, default=1.0, help="multiply tool latencies")
    args = ap.parse_args()
    asyncio.run(main(args.repeat, args.think, args.tool_scale))
