"""LLMCompiler-style workloads with replayed LLM timing: plait against a sequential ReAct loop.

Every LLM call is a `plait.llm.replay.ReplayLLM` (time to first token 0.5 s, 40 tokens/s,
4 characters a token), so model timing is real-shaped and deterministic. Tool latencies are
seeded per call from the tool's argument: `search`/`lookup` lognormal around 0.7 s clipped
to 0.4-1.2 s, `calc` uniform 0.15-0.35 s (LLMCompiler's math tool is itself an LLM call).

Workloads: (a) 2-entity comparison (HotpotQA-like): two searches then join; (b) 8-search
recommendation: eight independent searches then join; (c) arithmetic chain: two parallel
lookups, then three calculations that each need the one before.

plait: `plait.arun` with a ReplayLLM whose replies are the plan and the joiner's
`Thought/Action: Finish(...)`; tasks start while the plan streams. ReAct: a loop written
here with the same ReplayLLM class and the same tool functions: per step the model writes
`Thought: ...\nAction: tool(arg)` (~30-40 tokens), the tool runs, and so on; then one final
`Action: Finish(...)` call. Both runs must make the same tool calls (checked).

Critical path of a workload (what a perfect LLMCompiler would take):
  emit(i)    = when the planner token holding the newline that ends task i's line arrives,
               ttft + (char index of that newline // 4) / tps (the parser emits a task when its
               line is complete; a last line with no newline completes at the last token)
  finish(i)  = max(emit(i), finish(j) for each task j that i references) + latency(i)
  plan_done  = when the token that completes the `join()` line arrives
  critical   = max(plan_done, max_i finish(i)) + joiner time (ttft + (tokens - 1) / tps)
i.e. the planner's stream up to where the last task on the critical path can be dispatched,
plus the tool latencies along that path, plus the joiner. plait ÷ critical: target ≤ 1.1.
Speedup = ReAct time ÷ plait time: target ≥ 1.8× on (a), ≥ 3× on (b).

    python bench/llmcompiler.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import math
import re
import statistics
import time
import zlib

import plait
from plait.llm.base import Request
from plait.llm.replay import CHARS_PER_TOKEN, ReplayLLM

TTFT, TPS = 0.5, 40.0
CALLS: list[tuple[str, str]] = []  # every tool call of the current run: (tool, argument)

FACTS = {
    "Eiffel Tower height": "The Eiffel Tower is 330 metres tall.",
    "Statue of Liberty height": "The Statue of Liberty is 93 metres tall with its pedestal.",
}
LAPTOPS = [
    "Framework 13",
    "MacBook Air M3",
    "ThinkPad X1 Carbon",
    "Dell XPS 13",
    "ASUS Zenbook 14",
    "HP Spectre x360",
    "Surface Laptop 6",
    "Acer Swift Go 14",
]
for i, name in enumerate(LAPTOPS):
    FACTS[f"{name} review"] = f"{name}: {9 + i % 5} h, {1.1 + i / 20:.2f} kg, {7 + i % 3}/10"
NUMBERS = {"population of France": 68.4, "population of Germany": 84.5}


def latency(tool: str, arg: str) -> float:
    """Seeded, deterministic latency of one call (the same in both runs)."""
    u1, u2 = (zlib.crc32(f"{tool}|{arg}|{k}".encode()) / 2**32 for k in (1, 2))
    if tool == "calc":
        return 0.15 + 0.2 * u1
    z = math.sqrt(-2 * math.log(1 - u1)) * math.cos(2 * math.pi * u2)  # Box-Muller
    return min(1.2, max(0.4, 0.7 * math.exp(0.35 * z)))


def evaluate(expression: str) -> float:
    """Safe arithmetic: numbers, + - * / and parentheses."""
    ops = {
        ast.Add: float.__add__,
        ast.Sub: float.__sub__,
        ast.Mult: float.__mul__,
        ast.Div: float.__truediv__,
    }

    def ev(n: ast.AST) -> float:
        if isinstance(n, ast.Constant) and isinstance(n.value, int | float):
            return float(n.value)
        if isinstance(n, ast.BinOp) and type(n.op) in ops:
            return ops[type(n.op)](ev(n.left), ev(n.right))
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return -ev(n.operand)
        raise ValueError(f"not arithmetic: {expression!r}")

    return round(ev(ast.parse(expression, mode="eval").body), 4)


@plait.tool
async def search(query: str) -> str:
    """Search the web; returns the best snippet."""
    CALLS.append(("search", query))
    await asyncio.sleep(latency("search", query))
    return FACTS.get(query, "No result.")


@plait.tool
async def lookup(key: str) -> float:
    """Look up a statistic; returns a number (millions)."""
    CALLS.append(("lookup", key))
    await asyncio.sleep(latency("lookup", key))
    return NUMBERS[key]


@plait.tool
async def calc(expression: str) -> float:
    """Evaluate an arithmetic expression."""
    CALLS.append(("calc", expression))
    await asyncio.sleep(latency("calc", expression))
    return evaluate(expression)


TOOLS = {t.name: t for t in (search, lookup, calc)}

# Workload: question, steps (tool, argument template with $N, the ReAct thought), answer.
# The thoughts are what a ReAct model writes before each action (~100 characters).
COMPARE = [
    (
        "search",
        "Eiffel Tower height",
        "To compare the two I first need the height of the Eiffel Tower, so I will search for it.",
    ),
    (
        "search",
        "Statue of Liberty height",
        "The Eiffel Tower is 330 m tall. Now I need the height of the Statue of Liberty "
        "to compare.",
    ),
]
RECOMMEND = [
    (
        "search",
        f"{name} review",
        f"To compare the options for a student I should read what reviewers say about the {name}.",
    )
    for name in LAPTOPS
]
ARITHMETIC = [
    (
        "lookup",
        "population of France",
        "To answer I need both populations, so first I will look up the population of France.",
    ),
    (
        "lookup",
        "population of Germany",
        "I have the population of France. Next I need the population of Germany as well.",
    ),
    (
        "calc",
        "$1 + $2",
        "I have both populations. Now I add them together to get the combined population total.",
    ),
    (
        "calc",
        "$1 / $3 * 100",
        "With the combined total I can now compute the share of France in percent of that total.",
    ),
    (
        "calc",
        "100 - $4",
        "The share living outside France is then 100 minus the French share that I just computed.",
    ),
]
WORKLOADS = {
    "(a) 2-entity": (
        "Which is taller, the Eiffel Tower or the Statue of Liberty?",
        COMPARE,
        "330 m is more than 93 m.",
        "The Eiffel Tower is taller: 330 m against 93 m.",
    ),
    "(b) 8-search": (
        "Which of these eight laptops should a student buy: " + ", ".join(LAPTOPS) + "?",
        RECOMMEND,
        "The Framework 13 has the best rating for its weight.",
        "The Framework 13: good battery, light, and repairable.",
    ),
    "(c) arithmetic": (
        "What share of the combined population of France and Germany lives outside France, in %?",
        ARITHMETIC,
        "The share outside France follows.",
        "About 55.3% live outside France.",
    ),
}
REF = re.compile(r"\$(\d+)")


def plan_reply(steps: list[tuple[str, str, str]]) -> str:
    """The planner's reply, written as LLMCompiler's few-shot plans are."""
    lines = [f"{i}. {tool}({json.dumps(arg)})" for i, (tool, arg, _) in enumerate(steps, 1)]
    return "\n".join(
        [
            *lines,
            "Thought: I can answer once these are done.",
            f"{len(steps) + 1}. join()<END_OF_PLAN>",
        ]
    )


def finish_reply(thought: str, answer: str) -> str:
    return f"Thought: {thought}\nAction: Finish({answer})"


def stream_time(text: str, upto: int | None = None) -> float:
    """When the token holding character `upto` (default: the last one) arrives."""
    upto = len(text) - 1 if upto is None else upto
    return TTFT + (upto // CHARS_PER_TOKEN) / TPS


def critical_path(steps: list[tuple[str, str, str]], plan: str, joiner: str) -> float:
    """See the module docstring. Results come from the pure functions, latencies the same."""
    plan = plan.split("<END_OF_PLAN>")[0]  # the stop sequence the planner request carries
    results: dict[int, object] = {}
    finish: dict[int, float] = {}
    pos = 0
    for i, (tool, arg, _) in enumerate(steps, 1):
        pos = plan.index(f"{i}. {tool}(", pos)
        newline = plan.find("\n", pos)
        emit = stream_time(plan, None if newline < 0 else newline)
        deps = [int(d) for d in REF.findall(arg)]
        real = REF.sub(lambda m: json.dumps(results[int(m.group(1))]), arg)
        results[i] = evaluate(real) if tool == "calc" else NUMBERS.get(real, FACTS.get(real))
        start = max([emit, *(finish[d] for d in deps)])
        finish[i] = start + latency(tool, real)
    join_at = plan.index("join()")
    newline = plan.find("\n", join_at)
    plan_done = stream_time(plan, None if newline < 0 else newline)
    return max(plan_done, *finish.values()) + stream_time(joiner)


async def react(question: str, steps: list[tuple[str, str, str]], final: str) -> float:
    """A sequential ReAct loop: think, act, observe, one step per LLM call."""
    results: dict[int, object] = {}
    replies = []
    for i, (tool, arg, thought) in enumerate(steps, 1):  # the model writes values it has seen
        real = REF.sub(lambda m: json.dumps(results[int(m.group(1))]), arg)
        replies.append(f"Thought: {thought}\nAction: {tool}({json.dumps(real)})")
        results[i] = evaluate(real) if tool == "calc" else NUMBERS.get(real, FACTS.get(real))
    llm = ReplayLLM([*replies, final], ttft=TTFT, tps=TPS)
    start = time.perf_counter()
    transcript = [{"role": "user", "content": question}]
    while True:
        reply = "".join([d.text async for d in llm.stream(Request(list(transcript)))])
        transcript.append({"role": "assistant", "content": reply})
        action = re.search(r"Action:\s*(\w+)\((.*)\)\s*$", reply, re.S)
        assert action is not None, reply
        if action.group(1) == "Finish":
            break
        observation = await TOOLS[action.group(1)].fn(ast.literal_eval(action.group(2)))
        transcript.append({"role": "user", "content": f"Observation: {observation}"})
    return time.perf_counter() - start


async def run_plait(question: str, plan: str, joiner: str) -> float:
    llm = ReplayLLM([plan, joiner], ttft=TTFT, tps=TPS)
    start = time.perf_counter()
    result = await plait.arun(question, tools=list(TOOLS.values()), model=llm)
    elapsed = time.perf_counter() - start
    assert result.status == "done", result.error
    return elapsed


async def main(repeat: int) -> None:
    print(f"replayed LLM: ttft {TTFT} s, {TPS:g} tokens/s; median of {repeat}")
    print(
        f"{'workload':<15} {'ReAct s':>8} {'plait s':>8} {'speedup':>8} {'critical s':>10}"
        f" {'plait÷crit':>10} {'ReAct tok/step':>14}"
    )
    for name, (question, steps, thought, answer) in WORKLOADS.items():
        plan, joiner = plan_reply(steps), finish_reply(thought, answer)
        crit = critical_path(steps, plan, joiner)
        ours, theirs = [], []
        for _ in range(repeat):
            CALLS.clear()
            ours.append(await run_plait(question, plan, joiner))
            plait_calls = sorted(CALLS)
            CALLS.clear()
            theirs.append(await react(question, steps, joiner))
            assert sorted(CALLS) == plait_calls, (plait_calls, sorted(CALLS))
        step_tokens = statistics.mean(
            len(f"Thought: {t}\nAction: {tool}({json.dumps(a)})") / CHARS_PER_TOKEN
            for tool, a, t in steps
        )
        p, r = statistics.median(ours), statistics.median(theirs)
        print(
            f"{name:<15} {r:>8.3f} {p:>8.3f} {r / p:>7.2f}× {crit:>10.3f} {p / crit:>10.3f}"
            f" {step_tokens:>14.0f}"
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    asyncio.run(main(ap.parse_args().repeat))
