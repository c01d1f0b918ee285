"""Program affinity on a real llama-cpp-python server: prompt tokens evaluated and joiner
prompt-evaluation time, with and without.

    python bench/affinity.py [--runs 4]

"with": the server's prompt cache on (`--cache true`, the closest real equivalent of
slot affinity on this server, see plait/llm/openai.py) and the client's affinity on;
"without": `--cache false` and `affinity=0`. Both servers run with `--verbose true`; the
numbers are llama.cpp's own `prompt eval time = … ms / N tokens` lines, one per request.
Runs are sequential, so requests alternate planner, joiner, planner, joiner…
Target: joiner prompt-evaluation time with affinity <= 0.5x without.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import plait

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "llm"))
from llamaserver import EXAMPLE_TOOLS, llama_server  # noqa: E402

QUESTIONS = [
    "How much taller is the Eiffel Tower than the Statue of Liberty?",
    "How tall is the Eiffel Tower?",
    "When was the Eiffel Tower completed?",
    "How tall is the Statue of Liberty?",
]
EVAL = re.compile(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens")
BASE = ["--n_ctx", "4096", "--n_threads", "2", "--interrupt_requests", "false",
        "--verbose", "true"]  # fmt: skip


def measure(cache: bool, runs: int) -> dict[str, float]:
    flags = [*BASE, "--cache", "true" if cache else "false"]
    with llama_server(flags=flags) as (base, log):
        model = f"openai:smollm2?schema=json_object&affinity={int(cache)}"
        roles: list[str] = []
        for i in range(runs):
            r = plait.run(QUESTIONS[i % len(QUESTIONS)], tools=EXAMPLE_TOOLS, model=model,
                          base_url=base, max_replans=0)  # fmt: skip
            roles += [c.role for c in r.llm_calls]
        text = log.read_text(errors="replace")
    evals = [(float(ms), int(n)) for ms, n in EVAL.findall(text)]
    evals = evals[-len(roles) :]  # one line per request, in order
    joiner = [e for e, role in zip(evals, roles, strict=False) if role == "joiner"][1:]
    return {
        "tokens": sum(n for _, n in evals),
        "joiner_ms": sum(ms for ms, _ in joiner) / max(len(joiner), 1),
        "joiner_tokens": sum(n for _, n in joiner) / max(len(joiner), 1),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=4)
    args = p.parse_args()
    on = measure(True, args.runs)
    off = measure(False, args.runs)
    print(f"  with affinity:    {on['tokens']} prompt tokens evaluated, joiner prompt eval "
          f"{on['joiner_ms']:.0f} ms ({on['joiner_tokens']:.0f} tokens)")  # fmt: skip
    print(f"  without affinity: {off['tokens']} prompt tokens evaluated, joiner prompt eval "
          f"{off['joiner_ms']:.0f} ms ({off['joiner_tokens']:.0f} tokens)")  # fmt: skip
    ratio = on["joiner_ms"] / off["joiner_ms"] if off["joiner_ms"] else float("nan")
    print(f"affinity: joiner prompt-eval time {ratio:.2f}x without (target <= 0.5x: "
          f"{'OK' if ratio <= 0.5 else 'MISSED'}); prompt tokens evaluated "
          f"{on['tokens'] / max(off['tokens'], 1):.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
