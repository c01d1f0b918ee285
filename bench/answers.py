"""Answer accuracy of the embedded model (or any model) on questions over examples/facts.jsonl.

    python bench/answers.py                          # every technique, one by one (long)
    python bench/answers.py --config all --limit 10  # quicker: the first 10 questions
    python bench/answers.py --config all --model local:/path/other.gguf
    python bench/answers.py --failures               # also print each wrong answer
    python bench/answers.py --batch 12 --concurrency 8  # plait batch vs one by one

Each question of examples/questions.jsonl is answered by `plait.arun` with the example tools
(one process, one model, questions one after another), and its answer checked: a number
answer must be the answer's first number (within 1%: "237", "237 metres" and "237.0" all
match 237), a text answer must appear in the answer, and none of the question's other
options (`not`). Reported per configuration: accuracy, seconds per question (mean and
worst), and tokens per question (prompt + completion as the model client reports them;
scored calls count the context and the candidates' tokens).

Configurations switch the techniques of plait.agent.loop.Tactics off one at a time, from
`none` (free JSON plans under the plan schema, all examples, the joiner read leniently) to
`all` (the default). Timings are wall-clock on whatever else the machine is doing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import plait
from plait.agent.loop import Tactics

ROOT = Path(__file__).resolve().parents[1]
TOOLS = str(ROOT / "examples" / "tools.py")
QUESTIONS = Path(os.environ.get("PLAIT_QUESTIONS", ROOT / "examples" / "questions.jsonl"))

ALL = Tactics()
NONE = Tactics(
    choose=False,
    ground=False,
    similar_examples=False,
    strict_join=False,
    constrain_join=False,
    calibrate=False,
)
CONFIGS: dict[str, Tactics] = {
    "none": NONE,
    "+strict join": replace(NONE, strict_join=True),
    "+constrained join": replace(NONE, strict_join=True, constrain_join=True),
    "+grounded spans": replace(NONE, strict_join=True, constrain_join=True, ground=True),
    "+similar examples": replace(ALL, choose=False, calibrate=False),
    "+scored choices": replace(ALL, calibrate=False),
    "all": ALL,
    "all, 1 example": replace(ALL, examples=1),
    "all, all examples": replace(ALL, similar_examples=False),
}

_NUMBER = re.compile(r"-?\d(?:[\d,]*\d)?(?:\.\d+)?")


def first_number(text: str) -> float | None:
    m = _NUMBER.search(text)
    return float(m.group(0).replace(",", "")) if m else None


def check(expected: str, answer: str | None, others: list[str] | None = None) -> bool:
    """Whether `answer` gives `expected` (numbers compared as numbers, units ignored)."""
    if not answer:
        return False
    if _NUMBER.fullmatch(expected.strip()):
        got = first_number(answer)
        want = float(expected)
        return got is not None and math.isclose(got, want, rel_tol=0.01, abs_tol=1e-9)
    low = answer.lower()
    return expected.lower() in low and not any(o.lower() in low for o in others or [])


@dataclass
class Row:
    config: str
    model: str
    right: int = 0
    total: int = 0
    seconds: list[float] | None = None
    tokens: int = 0
    by_kind: dict[str, list[int]] | None = None


async def measure(
    name: str, tactics: Tactics, model: Any, questions: list[dict[str, Any]], failures: bool
) -> Row:
    row = Row(name, getattr(model, "name", str(model)), seconds=[], by_kind={})
    for q in questions:
        t0 = time.perf_counter()
        result = await plait.arun(
            q["question"], tools=TOOLS, model=model, store="memory://", tactics=tactics
        )
        took = time.perf_counter() - t0
        ok = check(q["answer"], result.answer, q.get("not"))
        assert row.seconds is not None and row.by_kind is not None
        row.seconds.append(took)
        row.total += 1
        row.right += ok
        row.tokens += result.usage.prompt_tokens + result.usage.completion_tokens
        kind = row.by_kind.setdefault(q.get("kind", "?"), [0, 0])
        kind[0] += ok
        kind[1] += 1
        if failures and not ok:
            calls = "; ".join(f"{t.tool}{tuple(t.args.values())}" for t in result.tasks)
            print(
                f"  [{name}] {q['id']} {q['question']!r}: got {result.answer!r} "
                f"({result.error}), want {q['answer']!r}; {calls}",
                file=sys.stderr,
            )
    return row


async def batch_vs_sequential(model: Any, questions: list[dict[str, Any]], concurrency: int) -> str:
    """The same questions one by one, then as one `abatch`: wall time and accuracy of each."""
    t0 = time.perf_counter()
    one_by_one = 0
    for q in questions:
        result = await plait.arun(q["question"], tools=TOOLS, model=model, store="memory://")
        one_by_one += check(q["answer"], result.answer, q.get("not"))
    sequential = time.perf_counter() - t0
    t0 = time.perf_counter()
    together = 0
    items = [{"id": q["id"], "question": q["question"]} for q in questions]
    by_id = {q["id"]: q for q in questions}
    async for r in plait.batch.abatch(items, tools=TOOLS, model=model, concurrency=concurrency):
        q = by_id[r.id]
        together += check(q["answer"], r.answer, q.get("not"))
    batched = time.perf_counter() - t0
    n = len(questions)
    return (
        f"{n} questions on {getattr(model, 'name', model)}: one by one {sequential:.1f}s "
        f"({one_by_one}/{n} right); plait batch --concurrency {concurrency} {batched:.1f}s "
        f"({together}/{n} right): batch takes {batched / sequential:.2f}x the time"
    )


def table(rows: list[Row]) -> str:
    out = [
        "| configuration | model | accuracy | s/question (mean, max) | tokens/question |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        assert r.seconds is not None
        out.append(
            f"| {r.config} | {r.model} | {r.right}/{r.total} = {r.right / r.total:.0%} | "
            f"{statistics.mean(r.seconds):.1f}, {max(r.seconds):.1f} | "
            f"{r.tokens // max(r.total, 1)} |"
        )
    return "\n".join(out)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", action="append", help="model spec (repeatable); default local")
    p.add_argument(
        "--config",
        action="append",
        choices=[*CONFIGS, "every"],
        help="configuration (repeatable); default every one",
    )
    p.add_argument("--limit", type=int, help="only the first N questions")
    p.add_argument("--sample", type=int, metavar="N", help="only N questions, evenly spaced")
    p.add_argument("--failures", action="store_true", help="print each wrong answer")
    p.add_argument("--batch", type=int, metavar="N", help="only: N questions, batch vs one by one")
    p.add_argument("--concurrency", type=int, default=8, help="with --batch (default 8)")
    args = p.parse_args()
    questions = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line]
    if args.limit:
        questions = questions[: args.limit]
    if args.sample:
        step = len(questions) / args.sample
        questions = [questions[int(i * step)] for i in range(args.sample)]
    names = args.config or ["every"]
    if "every" in names:
        names = list(CONFIGS)
    rows = []
    for spec in args.model or ["local"]:
        model = plait.resolve_model(spec)
        # Load the model before timing anything: the first question should not pay for it.
        await plait.arun("How tall is Big Ben?", tools=TOOLS, model=model, store="memory://")
        if args.batch:
            print(await batch_vs_sequential(model, questions[: args.batch], args.concurrency))
            continue
        for name in names:
            row = await measure(name, CONFIGS[name], model, questions, args.failures)
            assert row.by_kind is not None
            kinds = ", ".join(f"{k} {a}/{b}" for k, (a, b) in row.by_kind.items())
            print(f"{name} [{row.model}]: {row.right}/{row.total} ({kinds})", file=sys.stderr)
            rows.append(row)
    if rows:
        print(table(rows))


if __name__ == "__main__":
    asyncio.run(main())
