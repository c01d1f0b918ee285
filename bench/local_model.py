"""Embedded model (`--model local`): planner first token → first task dispatched, plan tokens/s.

    python bench/local_model.py [--runs 3]

Target: the first task is dispatched within 1 s of the planner's first token (2-core CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from pathlib import Path
from typing import Any

import plait
from plait.core import events as ev

TOOLS = str(Path(__file__).resolve().parents[1] / "examples" / "tools.py")
QUESTIONS = [
    "How much taller is the Eiffel Tower than the Statue of Liberty?",
    "How tall is the Eiffel Tower?",
    "When was the Eiffel Tower completed?",
]


async def one(question: str) -> dict[str, float]:
    seen: list[Any] = []
    result = await plait.arun(question, tools=TOOLS, model="local", on_event=seen.append)
    first_token = next(e.t for e in seen if isinstance(e, ev.LLMToken) and e.call == 1)
    first_task = next(e.t for e in seen if isinstance(e, ev.TaskAdded))
    planner = result.llm_calls[0]
    gen = (planner.finished or 0.0) - (planner.first_token or planner.started)
    return {
        "dispatch": first_task - first_token,
        "ttft": first_token,
        "tps": planner.usage.completion_tokens / gen if gen > 0 else 0.0,
        "tokens": planner.usage.completion_tokens,
        "status": result.status == "done",
    }


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    await one("warm up: how tall is the Eiffel Tower?")  # load the model once
    rows = [await one(QUESTIONS[i % len(QUESTIONS)]) for i in range(args.runs)]
    for r in rows:
        print(
            f"  first token {r['ttft']:.2f}s  first task +{r['dispatch']:.3f}s  "
            f"{r['tokens']} plan tokens at {r['tps']:.1f} tok/s  done={r['status']}"
        )
    worst = max(r["dispatch"] for r in rows)
    print(
        f"local model: first task dispatched {worst:.3f}s after the planner's first token "
        f"(worst of {len(rows)}; target <= 1.0s: {'OK' if worst <= 1.0 else 'MISSED'}); "
        f"plan {statistics.mean(r['tps'] for r in rows):.1f} tokens/s"
    )


if __name__ == "__main__":
    asyncio.run(main())
