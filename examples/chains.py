"""Crash and resume, to try by hand: parallel chains of slow steps that log each execution.

    python examples/chains.py > chains.plan
    PLAIT_KILL_LOG=ran.log plait exec chains.plan --tools examples/chains.py --run-id c1
    # kill it half-way (Ctrl-C, or kill -9 from another shell), then:
    PLAIT_KILL_LOG=ran.log plait resume c1 --tools examples/chains.py
    # ran.log: a step settled before the kill appears once, under the first process's pid

tests/test_kill.py and bench/kill.py use it the same way, with a real SIGKILL.

`step(name, inputs)` sleeps 20-80 ms (fixed by `name`) and returns a value computed from its
arguments only, so any run of the plan, interrupted or not, gives the same results. Each
execution first appends one line, `"{pid} {run_id} {task_id}"`, to the file named by
$PLAIT_KILL_LOG (O_APPEND, one write per line), so one can tell which process ran what. A
real tool would key its side effect on `plait.current_task().idempotency_key` instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import Counter
from pathlib import Path

import plait

LOG_ENV = "PLAIT_KILL_LOG"


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=6).digest(), "big")


def _log_execution() -> None:
    path = os.environ.get(LOG_ENV)
    ctx = plait.current_task()
    if not path or ctx is None:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{os.getpid()} {ctx.run_id} {ctx.task_id}\n".encode())
    finally:
        os.close(fd)


@plait.tool
async def step(name: str, inputs: list[int] | None = None) -> int:
    """One link of a chain: a deterministic value from `name` and its inputs' values."""
    _log_execution()
    await asyncio.sleep((20 + _digest(name) % 61) / 1000)
    return _digest(f"{name}|{inputs or []}")


@plait.tool
async def combine(inputs: list[int]) -> int:
    """The fan-in of every chain's last link."""
    _log_execution()
    await asyncio.sleep(0.02)
    return _digest(f"combine|{inputs}")


def plan_text(chains: int = 5, length: int = 6) -> str:
    """`chains` parallel chains of `length` steps; some steps also read the neighbouring
    chain's previous step (joins across chains); one final task combines every chain."""
    lines = []

    def tid(c: int, k: int) -> int:
        return k * chains + c + 1  # step-major, so every reference points to an earlier id

    for k in range(length):
        for c in range(chains):
            refs = []
            if k > 0:
                refs.append(tid(c, k - 1))
                if (c + k) % 3 == 0:
                    refs.append(tid((c + 1) % chains, k - 1))
            arg = f", [{', '.join(f'${r}' for r in refs)}]" if refs else ""
            lines.append(f'{tid(c, k)}. step("c{c}k{k}"{arg})')
    last = chains * length + 1
    ends = ", ".join(f"${tid(c, length - 1)}" for c in range(chains))
    lines.append(f"{last}. combine([{ends}])")
    lines.append(f"{last + 1}. join()")
    return "\n".join(lines) + "\n"


def read_log(path: Path, run_id: str) -> Counter[tuple[int, int]]:
    """How many times each (pid, task id) ran for `run_id`, from the execution log."""
    counts: Counter[tuple[int, int]] = Counter()
    if not path.exists():
        return counts
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == run_id:
            counts[int(parts[0]), int(parts[2])] += 1
    return counts


if __name__ == "__main__":
    print(plan_text(), end="")
