"""Program affinity on a real llama-cpp-python server: joiner prompt evaluation with and without.

    python bench/affinity.py [--groups 3] [--concurrency 2]

A run is one conversation (plait/agent/prompts.py): the joiner's prompt is the planner's prompt
plus the plan and the results, so a server that still holds the run's KV state evaluates
only the new part. Affinity is what keeps that state: on llama.cpp's llama-server, the
run's slot (`id_slot`); on llama-cpp-python's server, which has one context and no slots,
its prompt cache (`--cache true`), which saves each completion's KV state and restores the
longest matching prefix (see plait/llm/openai.py).

The situation that needs it is a server shared by several runs: their calls interleave, so
between a run's planner and its joiner the context has served another run. Each group here
runs `--concurrency` questions at once against one server; calls are serialised in a known
order (planner A, planner B, joiner A, joiner B, ...) so each line of the server's own
`prompt eval time = … ms / N tokens` log is matched to its call.

    with affinity:    --cache true   (each run's state survives the other runs' calls)
    without affinity: --cache false  (the one context holds whatever ran last)

Two mixes: "one program" (every run has the same tools, so the same system prompt, which
llama.cpp's one context reuses whichever run came last) and "two programs" (runs alternate
between two agents with different tool sets, as on a server shared by different apps).

Target: joiner prompt-evaluation time with affinity <= 0.5x without.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import plait
from plait.llm.base import Delta, Request
from plait.llm.openai import OpenAILLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "llm"))
from llamaserver import EXAMPLE_TOOLS, llama_server  # noqa: E402

QUESTIONS = [
    "How much taller is the Eiffel Tower than the Statue of Liberty?",
    "How long is the Danube?",
    "When was the Eiffel Tower completed?",
    "How tall is the Statue of Liberty?",
    "How high is Mont Blanc?",
    "What is the population of Berlin?",
]
EVAL = re.compile(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens")
BASE = ["--n_ctx", "4096", "--n_threads", "2", "--interrupt_requests", "false",
        "--verbose", "true"]  # fmt: skip


class Serial:
    """Passes calls through one at a time, recording each call's role in server order."""

    def __init__(self, inner: OpenAILLM, lock: asyncio.Lock, roles: list[str]) -> None:
        self.inner, self.lock, self.roles = inner, lock, roles
        self.name = inner.name

    @property
    def supports_json_schema(self) -> bool:
        return self.inner.supports_json_schema

    async def stream(self, request: Request) -> AsyncIterator[Delta]:
        async with self.lock:
            self.roles.append("planner" if request.json_schema is not None else "joiner")
            async for delta in self.inner.stream(request):
                yield delta


def programs(mixed: bool) -> list[plait.Tools]:
    """The example tools; and, for a mix, a second agent: the same search, other tools."""
    full = plait.load_tools(EXAMPLE_TOOLS)
    if not mixed:
        return [full]
    other = plait.Tools([full["search"], full["calculate"]])  # no extract_number, no examples
    return [full, other]


async def _groups(base: str, groups: int, concurrency: int, roles: list[str], mixed: bool) -> None:
    lock = asyncio.Lock()
    agents = programs(mixed)
    for g in range(groups):
        batch = [QUESTIONS[(g * concurrency + i) % len(QUESTIONS)] for i in range(concurrency)]
        models = [
            Serial(OpenAILLM("smollm2", base_url=base, schema="json_object"), lock, roles)
            for _ in batch
        ]
        await asyncio.gather(*(
            plait.arun(q, tools=agents[i % len(agents)], model=m, max_replans=0)
            for i, (q, m) in enumerate(zip(batch, models, strict=True))
        ))  # fmt: skip


def measure(cache: bool, groups: int, concurrency: int, mixed: bool) -> dict[str, float]:
    roles: list[str] = []
    with llama_server(flags=[*BASE, "--cache", "true" if cache else "false"]) as (base, log):
        asyncio.run(_groups(base, groups, concurrency, roles, mixed))
        text = log.read_text(errors="replace")
    evals = [(float(ms), int(n)) for ms, n in EVAL.findall(text)][-len(roles) :]
    joiner = [e for e, role in zip(evals, roles, strict=True) if role == "joiner"]
    joiner = joiner[1:]  # the very first joiner finds nothing cached either way
    return {
        "tokens": sum(n for _, n in evals),
        "joiner_ms": statistics.mean(ms for ms, _ in joiner),
        "joiner_tokens": statistics.mean(n for _, n in joiner),
        "calls": len(roles),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--groups", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=2)
    args = p.parse_args()
    print(f"{args.groups} groups of {args.concurrency} concurrent runs, one server")
    for mixed in (False, True):
        on = measure(True, args.groups, args.concurrency, mixed)
        off = measure(False, args.groups, args.concurrency, mixed)
        print("two programs:" if mixed else "one program:")
        for label, m in (("with affinity   ", on), ("without affinity", off)):
            print(f"  {label}: {m['tokens']} prompt tokens evaluated in {m['calls']} calls; "
                  f"joiner prompt eval {m['joiner_ms']:.0f} ms "
                  f"({m['joiner_tokens']:.0f} tokens) on average")  # fmt: skip
        ratio = on["joiner_ms"] / off["joiner_ms"]
        print(f"  joiner prompt-eval time {ratio:.2f}x without (target <= 0.5x: "
              f"{'OK' if ratio <= 0.5 else 'MISSED'}); prompt tokens evaluated "
              f"{on['tokens'] / max(off['tokens'], 1):.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
