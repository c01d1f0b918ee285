"""Plan cache: a batch of questions of 20 shapes, with and without `--plan-cache`.

Workload (seeded): --queries questions drawn from 20 question shapes ("How tall is the {A}?",
"How much taller is the {A} than the {B}?", "Which is older, the {A} or the {B}?", ...)
over 120 made-up landmarks ("the Amber Gate"), each shape planned with its own plan of 1-5
tasks over three pure tools: `search` (a fact sheet per landmark, made up from the name's
hash, 20-60 ms seeded), `extract_number(text, after)` and `calculate(expression)`.

The model is `ReplayLLM`'s timing (ttft 0.5 s, 40 tokens/s, 4 characters a token): the
planner's reply is the shape's plan for the question (keyed by the question), after a short
`Thought:`; the joiner's reply is `Finish(<the last result>)`. Token cost is what ReplayLLM
reports: the prompt's characters / 4 and the reply's tokens, for every call.

Measured in one process, one after the other, over the same items:
- **no cache**: `plait.batch.abatch(items, concurrency=C)`, every question planned;
- **plan cache**: the same with `plan_cache=True` (templates in memory, shared by the batch:
  the first question of a shape to finish on its first plan teaches the template, the rest
  of that shape skip the planner).
Reported: planner calls, wall time, tokens, and whether every answer is identical.
Targets (issue 18): ≥ 5× fewer planner calls, ≥ 40% fewer tokens.

    python bench/plan_cache.py [--queries 1000] [--concurrency 100] [--ttft 0.5] [--tps 40]
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import operator
import random
import re
import time
import zlib
from typing import Any

import plait
from plait.batch import abatch
from plait.llm.base import Request
from plait.llm.replay import ReplayLLM

ADJECTIVES = ["Amber", "Cobalt", "Crimson", "Golden", "Silver", "Ivory", "Jade", "Onyx"]
ADJECTIVES += ["Scarlet", "Azure", "Copper", "Iron"]
NOUNS = ["Gate", "Tower", "Bridge", "Spire", "Dome", "Arch", "Lighthouse", "Citadel"]
NOUNS += ["Pagoda", "Obelisk"]
LANDMARKS = [f"{a} {n}" for a in ADJECTIVES for n in NOUNS]  # 120


def one(fact: str, *then: str) -> list[str]:
    """A plan over one landmark: its sheet, one fact of it, then calculations on $2."""
    return ['search("{A}")', f'extract_number($1, "{fact}")', *(f'calculate("{c}")' for c in then)]


def two(fact: str, formula: str) -> list[str]:
    """A plan over two landmarks: both sheets, a fact of each, a formula over $3 and $4."""
    return [
        'search("{A}")',
        'search("{B}")',
        f'extract_number($1, "{fact}")',
        f'extract_number($2, "{fact}")',
        f'calculate("{formula}")',
    ]


# question ({A}, {B} the landmarks) and its plan's lines, one per shape
SHAPES: list[tuple[str, list[str]]] = [
    ("How tall is the {A}?", one("height")),
    ("How old is the {A}?", one("built", "2025 - $2")),
    ("When was the {A} built?", one("built")),
    ("How many visitors does the {A} get a year?", one("visitors")),
    ("How long is the {A}?", one("length")),
    ("What does the {A} weigh?", one("weight")),
    ("How tall is the {A} in feet?", one("height", "$2 * 3.28")),
    ("What is the weight of the {A} in tonnes?", one("weight", "$2 / 1000")),
    ("How much taller is the {A} than the {B}?", two("height", "$3 - $4")),
    ("How much older is the {A} than the {B}?", two("built", "$4 - $3")),
    ("What is the combined height of the {A} and the {B}?", two("height", "$3 + $4")),
    ("How many times taller is the {A} than the {B}?", two("height", "$3 / $4")),
    ("How many more visitors does the {A} get than the {B}?", two("visitors", "$3 - $4")),
    ("What is the total weight of the {A} and the {B}?", two("weight", "$3 + $4")),
    ("How much longer is the {A} than the {B}?", two("length", "$3 - $4")),
    ("What is the average height of the {A} and the {B}?", two("height", "($3 + $4) / 2")),
    ("How many years apart were the {A} and the {B} built?", two("built", "$3 - $4")),
    (
        "What is the height of the {A} per metre of its length?",
        [*one("height"), 'extract_number($1, "length")', 'calculate("$2 / $3")'],
    ),
    (
        "How many visitors per year of age does the {A} have?",
        [*one("visitors"), 'extract_number($1, "built")', 'calculate("$2 / (2025 - $3)")'],
    ),
    ("Who maintains the {A}?", ['search("{A} maintenance")']),
]
THOUGHT = "Thought: I will look up what the question names, then compute the answer from it.\n"


def sheet(name: str) -> str:
    h = zlib.crc32(name.encode())
    return (
        f"The {name}: height {50 + h % 300} metres, built {1700 + h % 320}, "
        f"visitors {10_000 + h % 900_000} a year, length {20 + h % 180} metres, "
        f"weight {1_000 + h % 90_000} kilograms."
    )


@plait.tool(pure=True)
async def search(query: str) -> str:
    """Look up a landmark's fact sheet."""
    await asyncio.sleep(0.02 + (zlib.crc32(query.encode()) % 40) / 1000)
    name = query.removesuffix(" maintenance")
    if query.endswith(" maintenance"):
        return f"The {name} is maintained by the {name.split()[0]} Trust."
    return sheet(name)


@plait.tool(pure=True)
def extract_number(text: str, after: str) -> float:
    """The number after a word in the text."""
    m = re.search(re.escape(after) + r"\s+([\d,.]+)", text)
    if not m:
        raise ValueError(f"no {after} in {text!r}")
    return float(m.group(1).replace(",", "").rstrip("."))


_OPS: dict[type, Any] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


@plait.tool(pure=True)
def calculate(expression: str) -> float:
    """Arithmetic: numbers, + - * / and parentheses."""

    def ev(n: ast.AST) -> float:
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)):
            return float(n.value)
        if isinstance(n, ast.BinOp) and type(n.op) in _OPS:
            return float(_OPS[type(n.op)](ev(n.left), ev(n.right)))
        raise ValueError(f"not arithmetic: {expression!r}")

    return round(ev(ast.parse(expression, mode="eval").body), 4)


TOOLS = [search, extract_number, calculate]


class BenchLLM(ReplayLLM):
    """ReplayLLM's timing; the planner's reply looked up by question, the joiner's made from
    the last result it is shown."""

    planner_calls = 0

    def _take(self, request: Request) -> str:
        last = request.messages[-1]["content"]
        if "Now decide, for the question:" in last:  # a join, in either form
            self.count += 1
            results = re.findall(r"Observation: (.*)", last)
            answer = results[-1] if results else "unknown"
            return f"Thought: that answers it.\nAction: Finish({answer})"
        self.planner_calls += 1
        return super()._take(request)


def workload(n: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    rng = random.Random(seed)
    items, plans = [], {}
    for i in range(n):
        question, lines = SHAPES[i % len(SHAPES)]
        a, b = rng.sample(LANDMARKS, 2)
        q = question.format(A=a, B=b)
        while q in plans:  # a question asked twice would be a plain repeat: keep them distinct
            a, b = rng.sample(LANDMARKS, 2)
            q = question.format(A=a, B=b)
        body = "\n".join(f"{k}. {line.format(A=a, B=b)}" for k, line in enumerate(lines, 1))
        plans[q] = [f"{THOUGHT}{body}\n{len(lines) + 1}. join()\n<END_OF_PLAN>"]
        items.append({"id": i, "question": q})
    rng.shuffle(items)
    return items, plans


async def measure(
    items: list[dict[str, Any]], plans: dict[str, list[str]], args: argparse.Namespace, cache: bool
) -> dict[str, Any]:
    llm = BenchLLM({q: list(p) for q, p in plans.items()}, ttft=args.ttft, tps=args.tps)
    tokens = 0
    answers: dict[Any, str | None] = {}
    start = time.perf_counter()
    async for r in abatch(
        items, tools=TOOLS, model=llm, concurrency=args.concurrency, plan_cache=cache
    ):
        answers[r.id] = r.answer
        if r.run is not None:
            tokens += r.run.usage.prompt_tokens + r.run.usage.completion_tokens
    wall = time.perf_counter() - start
    return {"wall": wall, "planner": llm.planner_calls, "tokens": tokens, "answers": answers}


async def main(args: argparse.Namespace) -> None:
    items, plans = workload(args.queries, args.seed)
    print(
        f"{args.queries} questions of {len(SHAPES)} shapes, concurrency {args.concurrency}; "
        f"replayed LLM ttft {args.ttft} s, {args.tps:g} tokens/s"
    )
    base = await measure(items, plans, args, cache=False)
    cached = await measure(items, plans, args, cache=True)
    same = base["answers"] == cached["answers"]
    done = sum(1 for a in cached["answers"].values() if a is not None)
    print(f"{'':<12} {'planner calls':>14} {'wall s':>8} {'tokens':>10}")
    for name, m in (("no cache", base), ("plan cache", cached)):
        print(f"{name:<12} {m['planner']:>14} {m['wall']:>8.2f} {m['tokens']:>10}")
    tokens = cached["tokens"] / base["tokens"]
    print(
        f"ratios: planner calls {base['planner'] / max(1, cached['planner']):.1f}x fewer, "
        f"wall {cached['wall'] / base['wall']:.2f}x, tokens {tokens:.2f}x ({1 - tokens:.0%} "
        f"less); answers identical: {same} ({done}/{len(items)} answered)"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--ttft", type=float, default=0.5)
    ap.add_argument("--tps", type=float, default=40.0)
    ap.add_argument("--seed", type=int, default=7)
    asyncio.run(main(ap.parse_args()))
