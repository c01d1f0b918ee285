"""Fuzz the plan parser with generated plans (issue 14): a million by default, standalone.

Three kinds of plan, seeded: structured text plans whose every line is a task, prose, an
end marker or one of the malformed lines models write (`2. search "b"`, a second call on
the line, `...`, deep nesting, a lone surrogate, ...); JSON plans with entries that are not
tasks, extra keys, tasks hidden outside "tasks", bad fields and deep nesting; and soup,
plan-like fragments and random characters in any order. Each plan is parsed whole with
the tool names known, and counted as:

- a crash: any exception other than PlanError (the figure that must be 0);
- a mismatch: a structured plan whose parse breaks the rule (a line calling a tool is a
  task, or the error names the first bad line), a JSON plan that yields a task from outside
  "tasks", an accepted task that does not read back equal from JSON as the run log records
  it, or (for one plan in 8) a streamed parse in random chunks that differs from the whole.

Then it times one task spread over 2,000 and over 10,000 lines, whole and streamed: with a
linear parser the second takes about 5 times the first (issue 14 measured 6.6 s and over a
minute, a quadratic parser's 25 times).

    python bench/fuzz.py                      # 1,000,000 plans, a few minutes
    python bench/fuzz.py --plans 20000 --seed 7
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

# This checkout's plait, whichever one is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from pydantic_core import from_json, to_json

from plait.agent.parse import PlanParser
from plait.core.task import Task
from plait.errors import PlanError

TOOLS = ("search", "compare", "calculate")
ARGS = [
    '"x"',
    "1",
    "-2.5e3",
    "None",
    "True",
    '"a, b"',
    "[1, [2]]",
    '{"k": ("v",)}',
    '"$1 or $9"',
    "",
]
JSON_ARGS = [
    '"x"',
    "1",
    "-2.5e3",
    "null",
    "true",
    '"a, b"',
    "[1, [2]]",
    '{"k": ["v"]}',
    '"$1 or $9"',
]
PROSE = [
    "Thought: search both, then compare them",
    "1. First, search both heights",
    "search the web for both",
    "2 searches are needed",
    "## Plan",
    "",
    "```",
    "Question: how tall",
]
HOSTILE = [
    "...",
    "{1, 2}",
    "{1: 2}",
    'b"x"',
    "1j",
    "1e999",
    '"\\udcff"',
    "\udcff",
    "0x" + "f" * 14000,
    "[" * 150 + "]" * 150,
    "(" * 300,
    "__import__('os').system('true')",
]
SOUP = [
    *(f"{n}." for n in range(1, 5)),
    *TOOLS,
    "join",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    '"',
    "'",
    '"""',
    "$1",
    "${2}",
    "$",
    ",",
    "=",
    ":",
    " ",
    "\n",
    "\r",
    "\\",
    "-",
    "**",
    "`",
    "Thought:",
    "<END_OF_PLAN>",
    "###",
    "```json\n",
    '{"tasks": [',
    '{"id": 1, "tool": "search", "args": ["$1"]}',
    '"tasks"',
    '"id"',
    '"tool"',
    '"args"',
    '"kwargs"',
    "NaN",
    "1e999",
    "...",
    "9" * 30,
    "\udcff",
    "é",
]


def structured(rng: random.Random) -> tuple[str, list[tuple[int, str, int]], int | None]:
    """A text plan and its oracle: the tasks (id, tool, line) it must give, or the first
    line that must be an error."""
    lines: list[str] = []
    tasks: list[tuple[int, str, int]] = []
    error: int | None = None
    ended = False
    for _ in range(rng.randrange(1, 14)):
        n = len(lines) + 1
        name = rng.choice(TOOLS)
        arg = rng.choice(ARGS)
        kind = rng.random()
        counts = not ended and error is None
        if kind < 0.35:
            prefix = rng.choice(["", "- ", "* ", "**", "> ", "`", "  "])
            number = rng.choice(["{n}.", "{n})", "{n}:", "[{n}]", "({n})"]).format(n=n)
            suffix = rng.choice(["", "**", "`", " ", ";"])
            lines.append(f"{prefix}{number} {name}({arg}){suffix}")
            if counts:
                tasks.append((n, name, n))
        elif kind < 0.45:
            args = [f"  {a}," for a in rng.choices(ARGS[:-1], k=rng.randrange(0, 5))]
            lines += [f"{n}. {name}(", *args, ")"]
            if counts:
                tasks.append((n, name, n))
        elif kind < 0.7:
            lines.append(rng.choice(PROSE))
        elif kind < 0.75 and error is None:
            lines.append(rng.choice([f"{n}. join()", "join()", "<END_OF_PLAN>", "###"]))
            ended = True
        else:
            bad = rng.choice(
                [
                    f'{n}. {name} "x"',
                    f"{n}. {name}",
                    f'{name}("x")',
                    f'- {name}("x")',
                    f'{n}. {name}("x") {n + 1}. {name}("y")',
                    f'{n}. {name}("x") then more',
                    f'{n}. {name}("x"]',
                    *(f"{n}. {name}({h})" for h in HOSTILE[:10]),
                ]
            )
            lines.append(bad)
            if counts:
                error = n
    return "\n".join(lines) + rng.choice(["", "\n"]), tasks, error


def json_plan(rng: random.Random) -> str:
    """A JSON plan, often malformed; a task hidden outside "tasks" has an id of 1000 or more."""
    entries: list[str] = []
    for i in range(1, rng.randrange(1, 6)):
        entry = f'{{"id": {i}, "tool": "{rng.choice(TOOLS)}", "args": [{rng.choice(JSON_ARGS)}]}}'
        roll = rng.random()
        if roll < 0.05:
            entry = rng.choice(["1", '"x"', "null", "[]", "[" * 50 + "]" * 50])
        elif roll < 0.1:
            entry = entry[:-1] + rng.choice(
                [', "kwargs": "zzz"}', ', "kwarg": {}}', ', "id": 9}', ', "args": {"a": NaN}}']
            )
        elif roll < 0.13:
            entry = entry.replace("[", "[" + "[" * 200, 1).replace("]", "]" + "]" * 200, 1)
        entries.append(entry)
    body = '"tasks": [' + ", ".join(entries) + "]"
    if rng.random() < 0.2:
        hidden = f'"meta": {{"x": {{"id": {rng.randrange(1000, 2000)}, "tool": "search"}}}}'
        body = f"{hidden}, {body}" if rng.random() < 0.5 else f"{body}, {hidden}"
    text = "{" + body + "}"
    if rng.random() < 0.1:
        text = "[" + ", ".join(entries) + "]"
    if rng.random() < 0.1:
        text = "```json\n" + text + "\n```"
    if rng.random() < 0.1:
        cut = rng.randrange(len(text) + 1)
        text = text[:cut] + rng.choice(SOUP) + text[cut:]
    return text


def soup(rng: random.Random) -> str:
    parts = rng.choices(SOUP, k=rng.randrange(0, 40))
    for _ in range(rng.randrange(0, 3)):
        parts.insert(rng.randrange(len(parts) + 1), chr(rng.randrange(0x20, 0x3000)))
    return "".join(parts)


def parse(chunks: list[str]) -> tuple[str, Any]:
    parser = PlanParser(tools=TOOLS)
    tasks: list[Task] = []
    try:
        for chunk in chunks:
            tasks += parser.feed(chunk)
        tasks += parser.close()
    except PlanError as e:
        return "error", (str(e), e.line)
    return "ok", tasks


def recorded_as_written(task: Task) -> bool:
    """The task's call, encoded as the run log records it and decoded, is the task's call."""
    call = [task.tool, list(task.args), task.kwargs]
    return from_json(to_json(call)) == call


def fuzz(count: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    crashes: list[str] = []
    mismatches: list[str] = []
    kinds = {"text": 0, "json": 0, "soup": 0}
    accepted = 0
    start = time.perf_counter()
    for i in range(count):
        roll = rng.random()
        oracle: tuple[list[tuple[int, str, int]], int | None] | None = None
        if roll < 0.45:
            kind = "text"
            text, tasks, error = structured(rng)
            oracle = (tasks, error)
        elif roll < 0.7:
            kind, text = "json", json_plan(rng)
        else:
            kind, text = "soup", soup(rng)
        kinds[kind] += 1
        try:
            status, value = parse([text])
            if status == "ok":
                accepted += 1
                if not all(recorded_as_written(t) for t in value):
                    mismatches.append(f"not recorded as written: {text!r:.200}")
                if kind == "json" and any(t.id >= 1000 for t in value):
                    mismatches.append(f"a task from outside tasks: {text!r:.200}")
            if oracle is not None:
                want = ("ok", oracle[0]) if oracle[1] is None else ("error", oracle[1])
                got = (
                    ("ok", [(t.id, t.tool, t.line) for t in value])
                    if status == "ok"
                    else ("error", value[1])
                )
                if got != want:
                    mismatches.append(f"rule broken, {got} != {want}: {text!r:.200}")
            if i % 8 == 0:
                cuts = sorted(rng.randrange(len(text) + 1) for _ in range(rng.randrange(1, 6)))
                chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
                if parse(chunks) != (status, value):
                    mismatches.append(f"streamed differs: {text!r:.200} at {cuts}")
        except Exception as e:  # anything but PlanError is a crash
            crashes.append(f"{type(e).__name__}: {e!s:.100} on {text!r:.200}")
    elapsed = time.perf_counter() - start
    return {
        "plans": count,
        "seconds": elapsed,
        "kinds": kinds,
        "accepted": accepted,
        "crashes": crashes,
        "mismatches": mismatches,
    }


def scaling() -> list[tuple[str, float, float]]:
    """Seconds to parse one task over 2,000 and over 10,000 lines, whole and streamed."""
    rows = []
    for how in ("whole", "streamed"):
        times = []
        for lines in (2_000, 10_000):
            text = "1. search(\n" + '  "a",\n' * lines + ")\n"
            chunks = [text] if how == "whole" else [text[i : i + 4] for i in range(0, len(text), 4)]
            t = time.perf_counter()
            status, _ = parse(chunks)
            times.append(time.perf_counter() - t)
            assert status == "ok"
        rows.append((how, times[0], times[1]))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plans", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=14)
    args = ap.parse_args()
    report = fuzz(args.plans, args.seed)
    rate = report["plans"] / report["seconds"]
    kinds = ", ".join(f"{k} {v:,}" for k, v in report["kinds"].items())
    print(f"plans      {report['plans']:,} ({kinds}), seed {args.seed}")
    print(f"accepted   {report['accepted']:,}")
    print(f"plans/s    {rate:,.0f} ({report['seconds']:.1f} s)")
    print(f"crashes    {len(report['crashes'])}")
    print(f"mismatches {len(report['mismatches'])}")
    for line in (report["crashes"] + report["mismatches"])[:10]:
        print("  ", line)
    print("one task over many lines (seconds):")
    for how, small, large in scaling():
        ratio = large / small
        print(f"  {how:8}  2,000 lines {small:.3f}  10,000 lines {large:.3f}  ratio {ratio:.1f}")
    return 1 if report["crashes"] or report["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
