"""Batches: many comparison questions as one `abatch`, against the bound its LLM timing sets.

Workload (seeded): N questions "[q17] Which is taller, E3 or E29?" over 40 entities, each
planned as two searches (one per entity) and a compare, then joined:

    1. search("height of E3")
    2. search("height of E29")
    3. compare($1, $2)
    Thought: I can answer once these are done.
    4. join()<END_OF_PLAN>

`search` is `@plait.tool(pure=True)`, async, sleeping 250-350 ms (uniform, seeded per
argument); `compare` is pure too and instant. So ~2N searches are requested, 40 distinct.
The LLM is `ReplayLLM` with a dict of replies keyed by "[qN]" (each question gets its own
plan and answer), ttft 0.5 s and 40 tokens/s by default (4 characters a token).

Measured, in one process, one after the other:
- **batch**: `plait.batch.abatch(items, concurrency=C)`; tool executions are counted in the
  tool functions themselves and checked against `BatchStats`.
- **unshared parallel**: `plait.arun` per item under the same C-slot admission (a slot is
  taken before an item starts, in input order, as abatch does), with non-pure copies of the
  tools, so every search runs.
- **sequential**: `plait.arun` one item at a time on an evenly spaced sample of --sample
  items, extrapolated × N / sample.

The bound (what C runs in flight cannot beat): each query needs at least its planner's
stream and its joiner's, the tools overlapped or shared:
    plan_done(i) = ttft + (last character index of the plan, <END_OF_PLAN> cut) // 4 / tps
    joiner(i)    = ttft + (last character index of the answer) // 4 / tps
    L(i)         = plan_done(i) + joiner(i)
Simple form: ceil(N / C) × mean L. Exact form: items admitted in input order into C slots
as slots free (list scheduling, as abatch admits them), each lasting L(i); the bound is when
the last one ends. Critical paths: the same schedule with the searches timed too
(llmcompiler.py's way: a search starts when the token ending its line arrives; the joiner
starts at max(plan_done, searches done); compare is instant), shared (a search already asked
for waits for that call, or is instant once it is done) for the batch, unshared (every
search pays its latency) for the unshared runs and, one slot, the sequential ones. At the
default 250-350 ms a search ends before its plan does, so all of these equal the bound;
--search-ms 2000-3000 shows what sharing saves when the tools are the long pole.

    python bench/batch.py [--queries 1000] [--concurrency 64] [--ttft 0.5] [--tps 40]
                          [--sample 20] [--search-ms 250-350]
    python bench/batch.py --memory [--lines 100000] [--concurrency 64]

--memory: peak RSS of a whole `plait batch` process (os.wait4's ru_maxrss) over a generated
--lines-line input with `replay:FILE?ttft=0&tps=0` and the same plans on instant pure tools,
plus RSS, peak so far and items done sampled from /proc every half second. The process holds
the parsed replay file itself (~80 MB at 100,000 lines), which a real model would not.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import math
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

import plait
from plait.batch import BatchStats, abatch
from plait.llm.replay import CHARS_PER_TOKEN, ReplayLLM

EXECUTED: Counter[tuple[str, str]] = Counter()  # (tool, arguments) -> executions this phase
SEED = 1
SEARCH_S = (0.25, 0.35)  # --search-ms


def latency(query: str) -> float:
    """Seeded per argument: uniform in SEARCH_S (250-350 ms), the same in every phase."""
    lo, hi = SEARCH_S
    return lo + (hi - lo) * zlib.crc32(f"{SEED}|{query}".encode()) / 2**32


HEIGHTS: dict[str, int] = {}  # entity -> metres, set by workload()


async def _search(query: str) -> str:
    """Search the web; returns the best snippet."""
    EXECUTED["search", query] += 1
    await asyncio.sleep(latency(query))
    entity = query.removeprefix("height of ")
    return f"{entity} is {HEIGHTS[entity]} m tall."


async def _compare(a: str, b: str) -> str:
    """Compare two heights given as snippets; says which is taller."""
    EXECUTED["compare", f"{a}|{b}"] += 1
    (ea, ha), (eb, hb) = ((s.split()[0], int(s.split()[2])) for s in (a, b))
    hi, lo = ((ea, ha), (eb, hb)) if ha >= hb else ((eb, hb), (ea, ha))
    return f"{hi[0]} ({hi[1]} m) is taller than {lo[0]} ({lo[1]} m)."


search = plait.tool(_search, name="search", pure=True)
compare = plait.tool(_compare, name="compare", pure=True)
search_impure = plait.tool(_search, name="search")
compare_impure = plait.tool(_compare, name="compare")


def workload(n: int, entities: int, seed: int) -> tuple[list[dict[str, object]], dict]:
    """Items ({"id", "question"}) and the replay replies, keyed by "[qN]"."""
    rng = random.Random(seed)
    names = [f"E{i}" for i in range(1, entities + 1)]
    HEIGHTS.clear()
    HEIGHTS.update(zip(names, rng.sample(range(50, 900), entities), strict=True))
    items, replies = [], {}
    for i in range(1, n + 1):
        a, b = rng.sample(names, 2)
        key = f"[q{i}]"
        items.append({"id": i, "question": f"{key} Which is taller, {a} or {b}?"})
        replies[key] = [plan_reply(a, b), joiner_reply(a, b)]
    return items, replies


def plan_reply(a: str, b: str) -> str:
    return (
        f'1. search("height of {a}")\n'
        f'2. search("height of {b}")\n'
        "3. compare($1, $2)\n"
        "Thought: I can answer once these are done.\n"
        "4. join()<END_OF_PLAN>"
    )


def joiner_reply(a: str, b: str) -> str:
    (hi, h1), (lo, h2) = sorted(((a, HEIGHTS[a]), (b, HEIGHTS[b])), key=lambda x: -x[1])
    return (
        f"Thought: {a} is {HEIGHTS[a]} m tall and {b} is {HEIGHTS[b]} m tall.\n"
        f"Action: Finish({hi} is taller: {h1} m against {lo}'s {h2} m.)"
    )


def answer_of(reply: str) -> str:
    return reply.split("Action: Finish(", 1)[1].rsplit(")", 1)[0]


# the bound ---------------------------------------------------------------------------


def stream_time(text: str, upto: int | None, ttft: float, tps: float) -> float:
    """When the token holding character `upto` (default: the last) arrives, as ReplayLLM
    streams: token k at ttft + k / tps."""
    upto = len(text) - 1 if upto is None else upto
    return ttft + (upto // CHARS_PER_TOKEN) / tps if tps > 0 else ttft


Query = tuple[list[float], list[str], float, float]  # search emits, their args, plan, joiner


def per_query(plan: str, joiner: str, ttft: float, tps: float) -> Query:
    """When each search is dispatched (the token with its line's newline), its argument, when
    the plan is done, and how long the joiner streams; times from the query's start."""
    plan = plan.split("<END_OF_PLAN>")[0]
    lines = plan.split("\n")
    emits, pos = [], 0
    for line in lines[:2]:  # the two searches
        pos += len(line)
        emits.append(stream_time(plan, pos, ttft, tps))
        pos += 1
    queries = [line.split('"')[1] for line in lines[:2]]
    return emits, queries, stream_time(plan, None, ttft, tps), stream_time(joiner, None, ttft, tps)


def schedule(queries: list[Query], slots: int, tools: str) -> tuple[float, list[float]]:
    """Makespan (and each query's duration) of admitting the queries in order into `slots`
    slots as they free. tools: "none" (free: L only), "unshared" (every search takes its
    latency) or "shared" (a search asked for before waits for that call, or is instant once
    it is done). compare is instant; the joiner starts at max(plan done, searches done)."""
    free = [0.0] * min(slots, len(queries))
    cache: dict[str, tuple[float, float]] = {}  # argument -> (started, finished)
    end, took = 0.0, []
    for emits, args, plan_done, joiner in queries:
        start = heapq.heappop(free)
        ready = start + plan_done
        for emit, arg in zip(emits, args, strict=True):
            t = start + emit
            if tools == "unshared":
                ready = max(ready, t + latency(arg))
            elif tools == "shared":
                began, finished = cache.get(arg, (math.inf, math.inf))
                if t < began:  # the first to ask (admission order is nearly time order)
                    began, finished = cache[arg] = (t, t + latency(arg))
                ready = max(ready, finished)
        finish = ready + joiner
        heapq.heappush(free, finish)
        end = max(end, finish)
        took.append(finish - start)
    return end, took


# the three ways to run it ----------------------------------------------------------------


async def run_batch(items, replies, conc, ttft, tps) -> tuple[float, BatchStats, list]:
    llm = ReplayLLM(replies, ttft=ttft, tps=tps)
    stats = BatchStats()
    out = []
    start = time.perf_counter()
    async for r in abatch(items, tools=[search, compare], model=llm, concurrency=conc, stats=stats):
        out.append(r)
    return time.perf_counter() - start, stats, out


async def run_unshared(items, replies, conc, ttft, tps) -> tuple[float, list]:
    llm = ReplayLLM(replies, ttft=ttft, tps=tps)
    slots = asyncio.Semaphore(conc)
    out: list = []

    async def one(item) -> None:
        try:
            r = await plait.arun(item["question"], tools=[search_impure, compare_impure], model=llm)
            out.append((item["id"], r))
        finally:
            slots.release()

    start = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for item in items:
            await slots.acquire()
            group.create_task(one(item))
    return time.perf_counter() - start, out


async def run_sequential(items, replies, ttft, tps) -> tuple[float, list]:
    llm = ReplayLLM(replies, ttft=ttft, tps=tps)
    out = []
    start = time.perf_counter()
    for item in items:
        result = await plait.arun(item["question"], tools=[search, compare], model=llm)
        out.append((item["id"], result))
    return time.perf_counter() - start, out


def check(results: list, replies: dict, what: str) -> None:
    bad = [
        (i, r.status, r.answer, r.error)
        for i, r in results
        if r.status != "done" or r.answer != answer_of(replies[f"[q{i}]"][1])
    ]
    assert not bad, f"{what}: {len(bad)} wrong, first {bad[0]}"


def tool_counts(items: list[dict]) -> dict[str, tuple[int, int, int]]:
    """Per tool: (requested, distinct among the requests, executed in this phase)."""
    pairs = [str(it["question"]).split(", ", 1)[1].rstrip("?").split(" or ") for it in items]
    wanted = {
        "search": [f"height of {e}" for pair in pairs for e in pair],
        "compare": [f"{a} is {HEIGHTS[a]} m tall.|{b} is {HEIGHTS[b]} m tall." for a, b in pairs],
    }
    return {
        tool: (len(args), len(set(args)), sum(EXECUTED[tool, a] for a in set(args)))
        for tool, args in wanted.items()
    }


async def main(args: argparse.Namespace) -> None:
    n, conc, ttft, tps = args.queries, args.concurrency, args.ttft, args.tps
    items, replies = workload(n, args.entities, args.seed)
    queries = [per_query(*replies[f"[q{it['id']}]"], ttft, tps) for it in items]
    llm_only = [plan_done + joiner for _, _, plan_done, joiner in queries]
    plan_tok = [math.ceil(len(p.split("<END")[0]) / CHARS_PER_TOKEN) for p, _ in replies.values()]
    ans_tok = [math.ceil(len(j) / CHARS_PER_TOKEN) for _, j in replies.values()]
    lo, hi = (round(x * 1000) for x in SEARCH_S)
    print(
        f"{n} questions over {args.entities} entities, each 2 × search + compare, then join; "
        f"search pure, {lo}-{hi} ms seeded per argument; compare pure, instant"
    )
    print(
        f"replayed LLM: ttft {ttft} s, {tps:g} tokens/s ({CHARS_PER_TOKEN} characters a token); "
        f"plan {min(plan_tok)}-{max(plan_tok)} tokens, answer {min(ans_tok)}-{max(ans_tok)} "
        f"tokens; concurrency C = {conc}"
    )
    _, alone = schedule(queries, 1, "unshared")
    hidden = sum(c <= lo + 1e-9 for lo, c in zip(llm_only, alone, strict=True))
    print(
        f"per query, L = planner stream + joiner stream: {min(llm_only):.3f}-{max(llm_only):.3f} s "
        f"(mean {statistics.mean(llm_only):.3f}); with its own searches unshared "
        f"{min(alone):.3f}-{max(alone):.3f} s, = L for {hidden}/{n} (a search that ends before "
        "the plan does costs no time)"
    )

    # warm-up: imports, pydantic, first-call paths; other keys, no timing
    w_items, w_replies = workload(8, args.entities, args.seed + 1)
    for it in w_items:
        it["question"] = str(it["question"]).replace("[q", "[w")
    w_replies = {k.replace("[q", "[w"): v for k, v in w_replies.items()}
    async for _ in abatch(w_items, tools=[search, compare], model=ReplayLLM(w_replies)):
        pass
    items, replies = workload(n, args.entities, args.seed)  # HEIGHTS back to the real ones

    EXECUTED.clear()
    wall, stats, out = await run_batch(items, replies, conc, ttft, tps)
    check([(r.id, r.run) for r in out], replies, "batch")
    counts = tool_counts(items)
    s = stats.to_dict()

    EXECUTED.clear()
    u_wall, u_out = await run_unshared(items, replies, conc, ttft, tps)
    check(u_out, replies, "unshared")
    u_counts = tool_counts(items)

    step = max(1, n // args.sample)
    picked = list(range(0, n, step))[: args.sample]
    sample = [items[i] for i in picked]
    EXECUTED.clear()
    q_wall, q_out = await run_sequential(sample, replies, ttft, tps)
    check(q_out, replies, "sequential")
    q_est = q_wall * n / len(sample)
    q_crit = sum(alone[i] for i in picked)  # the sample's own critical path, run alone

    print(f"\n{'tool calls':<16} {'requested':>10} {'distinct':>9} {'executed':>9} {'unshared':>9}")
    print("  (executed: in the batch, pure; unshared: in the unshared parallel runs, not pure)")
    for tool, (requested, distinct, executed) in counts.items():
        unshared = u_counts[tool][2]
        print(f"  {tool:<14} {requested:>10,} {distinct:>9,} {executed:>9,} {unshared:>9,}")
    made = sum(c[2] for c in counts.values())
    print(
        f"  BatchStats: tool calls made {s['tool_calls']['made']:,} of "
        f"{s['tool_calls']['requested']:,} requested; LLM calls made {s['llm_calls']['made']:,} "
        f"of {s['llm_calls']['requested']:,}; its wall {s['wall']:.3f} s"
    )
    ok = all(c[1] == c[2] for c in counts.values()) and s["tool_calls"]["made"] == made
    print(f"  executed == distinct for both tools, and BatchStats agrees: {ok}")

    waves = math.ceil(n / conc)
    simple = waves * statistics.mean(llm_only)
    bound = schedule(queries, conc, "none")[0]
    shared_crit = schedule(queries, conc, "shared")[0]
    unshared_crit = schedule(queries, conc, "unshared")[0]
    print(
        f"""
bound (concurrency + LLM timing): items admitted in input order into C slots as they free,
  item i lasting L(i) = [ttft + (plan chars-1)//4 / tps] + [ttft + (answer chars-1)//4 / tps]
  (<END_OF_PLAN> cut off the plan; a token is 4 characters). With equal L this is
  ceil(N/C) × L = {waves} × {statistics.mean(llm_only):.3f} (mean L) = {simple:.3f} s.
critical path: the same schedule, the searches also timed (dispatched when the token ending
  their line arrives; the joiner starts at max(plan done, searches done)); shared: a search
  already asked for in the batch waits for that call or is instant; unshared: every search
  pays its latency. "speedup" is the row's wall ÷ the batch's.
"""
    )
    print(f"{'':<40} {'wall s':>8} {'÷ bound':>8} {'÷ crit':>7} {'speedup':>8}")
    print(f"{'bound, ceil(N/C) × mean L':<40} {simple:>8.3f}")
    print(f"{'bound, list schedule of L(i)':<40} {bound:>8.3f}")
    print(f"{'critical path, shared searches':<40} {shared_crit:>8.3f}")
    print(f"{'critical path, unshared searches':<40} {unshared_crit:>8.3f}")
    rows = [
        (f"plait batch, C={conc} (target ≤ 1.1)", wall, wall / bound, wall / shared_crit),
        (f"unshared parallel arun, C={conc}", u_wall, None, u_wall / unshared_crit),
        (f"sequential arun, {len(sample)} × {n}/{len(sample)}", q_est, None, q_wall / q_crit),
    ]
    for label, t, to_bound, to_crit in rows:
        b = f"{to_bound:>7.3f}×" if to_bound is not None else f"{'':>8}"
        print(f"{label:<40} {t:>8.3f} {b} {to_crit:>6.3f}× {t / wall:>7.2f}×")
    print(
        f"  (sequential: {len(sample)} evenly spaced items run one after another took "
        f"{q_wall:.2f} s, ×{n}/{len(sample)}; ÷ crit is against their own critical paths)"
    )


# memory ----------------------------------------------------------------------------------

TOOLS_PY = """\
import plait


@plait.tool(pure=True)
async def search(query: str) -> str:
    \"\"\"Search the web; returns the best snippet.\"\"\"
    entity = query.removeprefix("height of ")
    return f"{entity} is {HEIGHTS[entity]} m tall."


@plait.tool(pure=True)
async def compare(a: str, b: str) -> str:
    \"\"\"Compare two heights given as snippets; says which is taller.\"\"\"
    (ea, ha), (eb, hb) = ((s.split()[0], int(s.split()[2])) for s in (a, b))
    hi, lo = ((ea, ha), (eb, hb)) if ha >= hb else ((eb, hb), (ea, ha))
    return f"{hi[0]} ({hi[1]} m) is taller than {lo[0]} ({lo[1]} m)."


HEIGHTS = %s
"""


def rss_kb(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM: the peak so far) of a live process, in KiB."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    try:
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
    except (KeyError, ValueError):
        return None


def lines_in(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return 0


def generate(d: Path, args: argparse.Namespace) -> None:
    """Write in.jsonl, replies.json and tools.py for --memory (run as its own process)."""
    items, replies = workload(args.lines, args.entities, args.seed)
    with (d / "in.jsonl").open("w") as f:
        for it in items:
            f.write(json.dumps(it) + "\n")
    (d / "replies.json").write_text(json.dumps(replies))
    (d / "tools.py").write_text(TOOLS_PY % json.dumps(HEIGHTS))


def memory(args: argparse.Namespace) -> None:
    plait_exe = shutil.which("plait") or str(Path(sys.executable).with_name("plait"))
    n = args.lines
    with tempfile.TemporaryDirectory(prefix="plait-bench-") as tmp:
        d = Path(tmp)
        # In another process: a child's ru_maxrss counts its parent's peak RSS at the fork
        # (Linux keeps the old mm's high-water mark across exec), so this one stays small.
        script = [sys.executable, __file__, "--generate", tmp, "--lines", str(n)]
        subprocess.run(
            [*script, "--entities", str(args.entities), "--seed", str(args.seed)], check=True
        )
        out = d / "out.jsonl"
        sizes = {p: (d / p).stat().st_size / 1e6 for p in ("in.jsonl", "replies.json")}
        cmd = [
            plait_exe,
            "batch",
            str(d / "in.jsonl"),
            "--tools",
            str(d / "tools.py"),
            "--model",
            f"replay:{d / 'replies.json'}?ttft=0&tps=0",
            "--out",
            str(out),
            "--concurrency",
            str(args.concurrency),
        ]
        print(
            f"plait batch over {n:,} lines (input {sizes['in.jsonl']:.1f} MB, replay file "
            f"{sizes['replies.json']:.1f} MB), two instant pure tools, C={args.concurrency}"
        )
        shown = shlex.join(cmd).replace(f"{d}/", "").replace(plait_exe, "plait")
        print(f"  {shown}")
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        samples: list[tuple[float, int, int, int]] = []  # (s, items done, RSS, peak so far)
        next_report = 0.0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            t = time.perf_counter() - start
            kb = rss_kb(proc.pid)
            if kb is not None:
                samples.append((t, lines_in(out), *kb))
                if t >= next_report:
                    print(
                        f"  {t:7.1f} s  {samples[-1][1]:>8,} done  RSS {kb[0] / 1024:7.1f} MB"
                        f"  peak so far {kb[1] / 1024:7.1f} MB"
                    )
                    next_report += args.report_every
            time.sleep(0.5)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout, stderr = proc.communicate()
        done = lines_in(out)
    print(f"  exit {proc.returncode}; {done:,} result lines; wall {wall:.1f} s")
    print(f"  stdout: {stdout.strip()}")
    if proc.returncode != 0:
        print(stderr[-2000:])
    peak = usage.ru_maxrss / 1024  # KiB on Linux
    print(f"  peak RSS (os.wait4 ru_maxrss) {peak:.1f} MB (target < 500 MB)")
    if samples:
        print("  RSS as items finish (/proc/PID/status sampled every 0.5 s):")
        marks = sorted({max(1, round(done * f)) for f in (0.01, 0.1, 0.25, 0.5, 0.75, 1.0)})
        for m in marks:
            first = next((s for s in samples if s[1] >= m), samples[-1])
            print(
                f"    {first[1]:>8,} done at {first[0]:7.1f} s  RSS {first[2] / 1024:7.1f} MB"
                f"  peak so far {first[3] / 1024:7.1f} MB"
            )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--entities", type=int, default=40)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--ttft", type=float, default=0.5)
    ap.add_argument("--tps", type=float, default=40.0)
    ap.add_argument("--sample", type=int, default=20, help="sequential runs timed")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--search-ms", default="250-350", help="search latency range, LO-HI")
    ap.add_argument("--memory", action="store_true", help="the peak-RSS bench instead")
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--report-every", type=float, default=30.0)
    ap.add_argument("--generate", metavar="DIR", help=argparse.SUPPRESS)
    args = ap.parse_args()
    SEED = args.seed
    SEARCH_S = tuple(float(x) / 1000 for x in args.search_ms.split("-"))  # type: ignore[assignment]
    if args.generate:
        generate(Path(args.generate), args)
    elif args.memory:
        memory(args)
    else:
        asyncio.run(main(args))
