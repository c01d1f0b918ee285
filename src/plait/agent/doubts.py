"""What an attempt's own plan says against its answer: the check that makes samples a vote
of candidates that passed a test, not of whatever the model repeated most.

Self-consistency only helps where a model's mistakes scatter; a small model's repeat, so a
plain majority of its attempts keeps its favourite mistake (bench/README, issue 18). What
scatters across attempts is the *plan*: some attempts compute what the question asks, some
stop short. CodeMonkeys selects among candidates with tests; a finished attempt carries
one test of its own, its plan's results, which the answer can be checked against without a
model and without knowing the question. Two checks, each a sign the answer does not rest
on what the plan found:

- **Partial**: the plan's outputs (results no later task took) hold numbers the answer
  does not use: a number result the answer does not give, or a text with numbers none of
  which the answer gives. A plan that looks up two heights and answers one of them
  answered half the question ("330 metres" for the combined height of two towers). A text
  without numbers is context, never doubted. Checked only on a run with no replan: a
  replan's plan may rightly leave the first plan's outputs unused.
- **One fact twice**: a task combined two results that are one and the same value from
  one and the same source (`$2 - $4` where both lookups found the one text): x - x = 0
  answers nothing, whatever the question was.

A doubted answer is still an answer: `samples.vote` counts it only where no undoubted
answer exists. Text answers with no number are never doubted here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, Protocol

from ..core.task import references

_NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?")


class Done(Protocol):
    """A task of a finished run, as far as the checks are concerned (runs.result.TaskRecord)."""

    id: int
    status: str
    args: Any
    result: Any


class Finished(Protocol):
    """A finished run, as far as the checks are concerned (runs.result.RunResult)."""

    @property
    def answer(self) -> str | None: ...
    @property
    def tasks(self) -> Sequence[Any]: ...
    @property
    def replans(self) -> int: ...


def _numbers(text: str) -> list[float]:
    out = []
    for m in _NUMBER.finditer(text):
        try:
            out.append(float(m.group().replace(",", "")))
        except ValueError:
            continue
    return out


def _is_number(value: object) -> bool:
    """A finite int or float (not a bool; not an int too big for a float)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _same(a: float, b: float) -> bool:
    """Equal as an answer writes numbers: to 2 decimals, or within 0.5% (8.9 for 8.903)."""
    return abs(a - b) < 0.006 or abs(a - b) <= 0.005 * max(abs(a), abs(b))


def doubt(run: Finished) -> str | None:
    """Why `run`'s own plan doubts its answer (see the module docstring), or None."""
    if not run.answer:
        return None
    said = _numbers(run.answer)
    if not said:
        return None
    done: dict[int, Done] = {t.id: t for t in run.tasks if t.status == "done"}
    refs = {t.id: sorted({n for n, _ in references(t.args) if n in done}) for t in done.values()}
    taken = {r for rs in refs.values() for r in rs}
    if run.replans == 0:
        for t in sorted(done.values(), key=lambda t: t.id):
            if t.id in taken:
                continue
            if _is_number(t.result) and not any(_same(float(t.result), x) for x in said):
                return f"the answer leaves out {float(t.result):.6g}, task {t.id}'s result"
            found = _numbers(t.result) if isinstance(t.result, str) else []
            if found and not any(_same(a, b) for a in found for b in said):
                return f"the answer uses no number of task {t.id}'s result"
    for t in sorted(done.values(), key=lambda t: t.id):
        operands = refs[t.id]
        if len(operands) < 2 or len({repr(done[r].result) for r in operands}) > 1:
            continue
        if len({_sources(r, refs, done) for r in operands}) == 1:
            both = ", ".join(f"${r}" for r in operands)
            return f"task {t.id} combines one result with itself ({both})"
    return None


def _sources(task: int, refs: dict[int, list[int]], done: dict[int, Done]) -> frozenset[str]:
    """The results of the lookups (tasks that take no other result) `task` rests on."""
    seen, stack, out = {task}, [task], set()
    while stack:
        up = refs.get(i := stack.pop(), [])
        if not up:
            out.add(repr(done[i].result))
        for r in up:
            if r not in seen:
                seen.add(r)
                stack.append(r)
    return frozenset(out)
