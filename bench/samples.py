"""Parallel samples with early stop, on the embedded model: accuracy and time of
`samples=5, agree=3` against one attempt.

Questions: --count of examples/questions.jsonl from --start (30 by default; the embedded
model takes 2-7 s a question an attempt on 2 cores, so the whole is a few minutes: run it in
slices with --start/--count to keep each invocation short). Tools: examples/tools.py, made
pure (they are: a search over a file and arithmetic), so the attempts share their calls.
Answers are checked as bench/answers.py checks them.

Per question, in one process, one after the other: one attempt (`plait.arun`) and
`plait.arun(samples=5, agree=3)`, which goes first alternating by question. Each starts
cold: `LocalLLM.forget_scores()` drops the cached scores and the prompts cached in
llama.cpp's scoring context, so neither run reuses the other's work on the same question.
The embedded model chooses by score: attempts after the first sample each choice from the
softmax of the candidates' scores (agent/samples.py's `ChoiceSampler`, temperature 0.7 unless
--temperature), sharing one prompt, so the choice points they share are scored once.
Reported: accuracy of each, time ÷ one attempt (target ≤ 1.5× while accuracy rises),
attempts cut short, and tokens the early stop saved; with --attempts, each attempt's answer
(marked "doubted" where the plan check, agent/doubts.py, set it aside) and how the vote
was decided.

    python bench/samples.py [--start 0] [--count 30] [--samples 5] [--agree 3] [--model local]
                            [--temperature T] [--attempts]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import plait
import plait.llm
from answers import QUESTIONS, TOOLS, check  # bench/answers.py
from plait.runs.loading import as_tools


def pure_tools() -> plait.Tools:
    loaded = as_tools(TOOLS)
    return plait.Tools(
        [plait.Tool(t.fn, **{**t.options(), "pure": True}) for t in loaded.values()],
        examples=loaded.examples,
    )


async def main(args: argparse.Namespace) -> None:
    lines = QUESTIONS.read_text().splitlines()[args.start : args.start + args.count]
    items = [json.loads(line) for line in lines if line.strip()]
    tools = pure_tools()
    one_ok = many_ok = cut = saved = 0
    one_t = many_t = 0.0
    print(f"{len(items)} questions from {args.start}; samples {args.samples}, agree {args.agree}")
    llm = plait.llm.resolve_model(args.model)  # loaded once, warmed up untimed
    await plait.arun("How tall is the Eiffel Tower?", tools=tools, model=llm)
    forget = getattr(llm, "forget_scores", lambda: None)
    sampling: dict[str, Any] = {"samples": args.samples, "agree": args.agree}
    if args.temperature is not None:
        sampling["temperature"] = args.temperature

    async def timed(q: str, **sampling: Any) -> tuple[plait.RunResult, float]:
        forget()
        start = time.perf_counter()
        result = await plait.arun(q, tools=tools, model=llm, **sampling)
        return result, time.perf_counter() - start

    for asked, item in enumerate(items):
        q = item["question"]
        # Each starts with no cached scores (the attempts share theirs among themselves,
        # not with the single run), and which goes first alternates: the one after finds
        # the question's prompt in llama.cpp's cache.
        single_first = asked % 2 == 0
        if not single_first:
            many, tn = await timed(q, **sampling)
        single, t1 = await timed(q)
        if single_first:
            many, tn = await timed(q, **sampling)
        a = check(item["answer"], single.answer, item.get("not"))
        b = check(item["answer"], many.answer, item.get("not"))
        savings = many.savings or {}
        one_ok, many_ok = one_ok + a, many_ok + b
        one_t, many_t = one_t + t1, many_t + tn
        cut += savings.get("attempts_cut_short", 0)
        saved += savings.get("tokens_saved", 0)
        mark = {True: "ok ", False: "BAD"}
        print(
            f"{item['id']:<4} one {mark[a]} {t1:5.1f}s | samples {mark[b]} {tn:5.1f}s"
            f" cut {savings.get('attempts_cut_short', 0)}"
            f" {single.answer!r:.30} / {many.answer!r:.30}"
        )
        if args.attempts:
            fates = [
                "cut short"
                if a["cut_short"]
                else f"{a['answer']!r}{' doubted' if a['doubt'] else ''}"
                for a in many.attempts or []
            ]
            print(f"     attempts ({savings.get('decided_by')}):", ", ".join(fates))
    n = len(items)
    print(
        f"accuracy: one attempt {one_ok}/{n}, samples {many_ok}/{n}; "
        f"time: samples ÷ one {many_t / one_t:.2f}× ({one_t / n:.1f} s vs {many_t / n:.1f} s a "
        f"question); attempts cut short {cut}; tokens saved by the early stop {saved}"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--count", type=int, default=30)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--agree", type=int, default=3)
    ap.add_argument("--model", default="local")
    ap.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="the sampled attempts' temperature (a scoring model's choices: 0.7 by default)",
    )
    ap.add_argument("--attempts", action="store_true", help="print each attempt's answer")
    asyncio.run(main(ap.parse_args()))
