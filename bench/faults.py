"""Runs under the fault proxy (~20% of requests: drops, delays, 500s, 429s, cut streams)
against runs straight to the same real server: completion rate, retries, added latency.

    python bench/faults.py [--runs 6] [--rate 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

import plait
from plait.agent.loop import RetryPolicy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "llm"))
from faultproxy import FaultProxy  # noqa: E402
from llamaserver import EXAMPLE_TOOLS, llama_server  # noqa: E402

QUESTIONS = [
    "How tall is the Eiffel Tower?",
    "How much taller is the Eiffel Tower than the Statue of Liberty?",
    "When was the Eiffel Tower completed?",
]
MODEL = "openai:smollm2?schema=json_object"


async def batch(url: str, runs: int) -> list[plait.RunResult]:
    retry = RetryPolicy(attempts=8, base=0.1, cap=1.0)
    out = []
    for i in range(runs):  # sequential: latency is per run, not queueing
        out.append(await plait.arun(QUESTIONS[i % len(QUESTIONS)], tools=EXAMPLE_TOOLS,
                                    model=MODEL, base_url=url, retry=retry))  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=6)
    p.add_argument("--rate", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    with llama_server() as (base, _):
        asyncio.run(batch(base, 1))  # warm the server's caches
        clean = asyncio.run(batch(base, args.runs))
        with FaultProxy(base.removesuffix("/v1"), rate=args.rate, seed=args.seed) as proxy:
            faulty = asyncio.run(batch(proxy.url + "/v1", args.runs))
            stats = dict(proxy.stats)
    # A run "completes" when it ends with a result and no LLM call failed for good; with the
    # 135M model some runs end without an answer for the model's own reasons, faults or not,
    # which the clean runs show.
    lost = [r for r in faulty for c in r.llm_calls if c.error]
    done = len(faulty) - len(lost)
    answered = (sum(r.status == "done" for r in clean), sum(r.status == "done" for r in faulty))
    retries = sum(c.retries for r in faulty for c in r.llm_calls)
    t_clean = statistics.mean(r.elapsed for r in clean)
    t_faulty = statistics.mean(r.elapsed for r in faulty)
    injected = {k: v for k, v in stats.items() if k not in ("requests", "clean", "cut")}
    print(f"  proxy: {stats.get('requests', 0)} requests, injected {injected}")
    print(f"  answered: {answered[0]}/{len(clean)} without the proxy, "
          f"{answered[1]}/{len(faulty)} through it")  # fmt: skip
    for r in lost:
        print(f"  lost: {r.run_id} {r.error}")
    print(f"faults: {done}/{len(faulty)} runs completed ({100 * done / len(faulty):.0f}%), "
          f"{retries} LLM retries, mean run {t_faulty:.2f}s vs {t_clean:.2f}s without the proxy "
          f"(+{t_faulty - t_clean:.2f}s, {t_faulty / t_clean:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
