"""Prefix-aware order of a batch's model calls on a real llama-cpp-python server.

    python bench/prefix.py [--questions 12] [--reps 2] [--concurrency 6] [--cache true|false|both]

`plait.abatch(..., llm_slots=1, order=...)` on `--questions` questions with the example
tools, `--concurrency` runs at once, against llama-cpp-python's server with the embedded
SmolLM2 model (`--interrupt_requests false`; `--cache true` is its prompt cache, which is
what keeps KV state between requests on this slot-less server). With one slot the calls go
out one at a time, so the server's i-th `prompt eval time = … ms / N tokens` log line is
the batch's i-th call. Orders:

    arrival: the waiting call that came first goes next (plain FIFO, the baseline);
    prefix:  the waiting call sharing the longest prompt prefix with the call that ran last.

Per run: wall time; from the server's log, the prompt tokens it evaluated, its prompt-eval
time and its prompt-cache hits; the prompt tokens the client sent (BatchStats.usage); and,
since the tiny model's replies (so its plans, tool calls and replans) can differ between runs,
the number of model calls and the completion tokens, to show the runs did the same work.
Reps alternate the orders (arrival, prefix, prefix, arrival, ...) so drift hits both.

Each run gets a fresh server: with `--cache true` a server keeps every completion's KV state
(LlamaRAMCache, 2 GiB), so a second batch of the same questions on the same server would
find the first batch's prompts cached and look cheap whichever order it used. The server
start (~2 s) is outside the timed region; one short warm-up request, sharing no prefix with
plait's prompts, is sent before the batch and its log line is left out. `--one-server` runs
every batch of a setting on one server instead, to show that carry-over.

`--cache both` also runs both orders with the prompt cache off, where the server's one
context holds only what ran last: the single "slot" that prefix order is written for.

Figures: prefix ÷ arrival for prompt tokens evaluated, prompt-eval time and wall time
(medians over reps). No target: the issue asks for the measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

import plait
from plait import BatchStats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from affinity import BASE, EVAL, EXAMPLE_TOOLS, llama_server

QUESTIONS = [
    "How much taller is the Eiffel Tower than the Statue of Liberty?",
    "How much longer is the Nile than the Danube?",
    "When was the Eiffel Tower completed?",
    "How tall is the Burj Khalifa?",
    "How high is Mont Blanc?",
    "What is the population of Berlin?",
    "How much higher is Mount Everest than K2?",
    "How long is the Golden Gate Bridge?",
    "What is the combined population of Paris and Rome?",
    "How many years after the Brooklyn Bridge did the Empire State Building open?",
    "How far is the Moon from the Earth?",
    "How much taller is Tokyo Skytree than the CN Tower?",
    "How long is the River Thames?",
    "How much longer is the Amazon than the Thames?",
    "What is the population of Madrid?",
    "How many marathons laid end to end would span the Danube?",
]
HIT = re.compile(r"Llama\._create_completion: cache hit")
MODEL = "openai:local?schema=json_object"  # the form llama-cpp-python's server accepts
FIGURES = [
    ("eval_tokens", "prompt tokens evaluated", "{:.0f}"),
    ("eval_ms", "prompt-eval time", "{:.0f} ms"),
    ("wall", "wall time", "{:.1f} s"),
    ("calls", "model calls", "{:.0f}"),
    ("completion", "completion tokens", "{:.0f}"),
]


def warm_up(base: str) -> None:
    """One short request (the first decode pays for page-ins), sharing no prefix with plait's."""
    body = {"model": "local", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    httpx.post(f"{base}/chat/completions", json=body, timeout=120.0).raise_for_status()


@contextlib.contextmanager
def server(cache: bool) -> Iterator[tuple[str, Path]]:
    with llama_server(flags=[*BASE, "--cache", "true" if cache else "false"]) as (base, log):
        warm_up(base)
        yield base, log


async def _batch(base: str, order: str, args: argparse.Namespace) -> tuple[BatchStats, float]:
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.questions)]
    items = [{"id": i, "question": q} for i, q in enumerate(questions)]
    stats = BatchStats()
    start = time.perf_counter()
    async for _ in plait.abatch(
        items,
        tools=EXAMPLE_TOOLS,
        model=MODEL,
        base_url=base,
        concurrency=args.concurrency,
        llm_slots=1,
        order=order,
        max_replans=args.max_replans,
        stats=stats,
    ):
        pass
    return stats, time.perf_counter() - start


def run(order: str, base: str, log: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One batch against a running server; its figures, from the log lines it added."""
    skip = len(log.read_bytes())
    stats, wall = asyncio.run(_batch(base, order, args))
    with log.open("rb") as f:
        f.seek(skip)
        text = f.read().decode(errors="replace")
    evals = [(float(ms), int(n)) for ms, n in EVAL.findall(text)]
    if len(evals) != stats.llm_calls_made:
        print(f"  note: {len(evals)} prompt-eval lines for {stats.llm_calls_made} calls")
    return {
        "order": order,
        "wall": wall,
        "eval_tokens": sum(n for _, n in evals),
        "eval_ms": sum(ms for ms, _ in evals),
        "sent": stats.usage.prompt_tokens,
        "calls": stats.llm_calls_made,
        "completion": stats.usage.completion_tokens,
        "hits": len(HIT.findall(text)),
        "ok": f"{stats.done}/{stats.done + stats.failed}",
    }


HEADER = (
    f"{'order':<8} {'wall s':>6} {'calls':>5} {'compl':>6} {'sent tok':>8} "
    f"{'eval tok':>8} {'ev÷sent':>7} {'eval s':>6} {'hits':>4} {'done':>5}"
)


def row(m: dict[str, Any]) -> str:
    share = m["eval_tokens"] / max(m["sent"], 1)
    return (
        f"{m['order']:<8} {m['wall']:6.1f} {m['calls']:5d} {m['completion']:6d} {m['sent']:8d} "
        f"{m['eval_tokens']:8d} {share:7.2f} {m['eval_ms'] / 1000:6.2f} {m['hits']:4d} "
        f"{m['ok']:>5}"
    )


def compare(cache: bool, args: argparse.Namespace) -> None:
    print(f"\n--cache {'true' if cache else 'false'}")
    print(HEADER)
    runs: dict[str, list[dict[str, Any]]] = {"arrival": [], "prefix": []}
    with contextlib.ExitStack() as stack:
        shared = stack.enter_context(server(cache)) if args.one_server else None
        for rep in range(args.reps):
            for order in ("arrival", "prefix") if rep % 2 == 0 else ("prefix", "arrival"):
                with contextlib.ExitStack() as own:
                    base, log = shared or own.enter_context(server(cache))
                    m = run(order, base, log, args)
                runs[order].append(m)
                print(row(m), flush=True)
    for key, label, fmt in FIGURES:
        a = statistics.median(m[key] for m in runs["arrival"])
        b = statistics.median(m[key] for m in runs["prefix"])
        ratio = f"{b / a:.2f}" if a else "-"
        print(f"  {label:<24} prefix ÷ arrival {ratio:>5}   "
              f"(medians {fmt.format(b)} / {fmt.format(a)})")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--questions", type=int, default=12)
    p.add_argument("--reps", type=int, default=2, help="runs of each order, interleaved")
    p.add_argument("--concurrency", type=int, default=6)
    p.add_argument("--max-replans", type=int, default=2, help="abatch's default")
    p.add_argument("--cache", default="true", choices=["true", "false", "both"],
                   help="the server's prompt cache")  # fmt: skip
    p.add_argument(
        "--one-server", action="store_true", help="one server per setting (its cache carries over)"
    )
    args = p.parse_args()
    where = "one server" if args.one_server else "a fresh server per run"
    print(f"{args.questions} questions, concurrency {args.concurrency}, llm_slots=1, "
          f"max_replans {args.max_replans}, {args.reps} runs of each order, {where}")  # fmt: skip
    settings = {"true": [True], "false": [False], "both": [True, False]}[args.cache]
    for cache in settings:
        compare(cache, args)
    print(
        "\nsent tok: prompt tokens the client sent (BatchStats.usage); eval tok, eval s: what "
        "the server\nevaluated and how long it took (its log); ev÷sent = eval tok ÷ sent tok; "
        "hits: prompt-cache\nrestores (`cache hit` in its log); calls, compl: model calls made "
        "and completion tokens"
    )


if __name__ == "__main__":
    main()
