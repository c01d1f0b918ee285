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
  without numbers is context, never doubted; so is one whose numbers are of no unit the
  answer gives numbers in (an engineer's "1832-1923" beside the tower's 330 metres the
  answer gives: a strong model's plan looks up such context alongside). Checked only on a
  run with no replan (a replan's plan may rightly leave the first plan's outputs unused),
  and not on a question that offers its answer's options ("Which is taller, A or B?": the
  answer names one, "B, at 443 metres", and leaves A's height out rightly).
  A number is given in whatever way an answer writes it: rounded ("8.9", "2.1 million"
  for 2,148,271), as a percentage (45.2% for 0.452), in e-notation, without its sign
  (-237: "237 shorter").
- **One fact twice**: a task combined two results that are one and the same value from
  one and the same source (`$2 - $4` where both lookups found the one text): x - x = 0
  answers nothing, whatever the question was. Each task's sources are worked out once,
  so the check stays linear in the plan's size (a result resting on more than
  MOST_SOURCES lookups is no one fact).

A doubted answer is still an answer: `samples.vote` counts it only where no undoubted
answer exists. Text answers with no number are never doubted here.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..core.task import references
from .samples import UNITS, normalise
from .schema import offers_choice

# A number as text writes it: a sign, thousands separators, decimals, an exponent.
_NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d{1,3}(?![\w]))?")
# A number in groups of three digits parted by spaces, as French and SI write it: "8 849".
_SPACED = re.compile(r"(?<![\w.,])\d{1,3}(?:[ \u00a0\u202f]\d{3})+(?![\w.,])")
# What an answer may write after a number that scales it: "2.1 million", "45%", "3k".
_SCALE = re.compile(r" ?(%|per ?cent\b|thousand\b|million\b|billion\b|bn\b|trillion\b)", re.I)
_SCALES = {"%": 0.01, "percent": 0.01, "per cent": 0.01, "thousand": 1e3, "million": 1e6}
_SCALES |= {"billion": 1e9, "bn": 1e9, "trillion": 1e12}
# A number and its unit, as samples.normalise writes them ("330 m", "45 %").
_KIND = re.compile(r"\d (" + "|".join(map(re.escape, UNITS)) + r")(?![\w])")
TOLERANCE = 0.005  # relative: 8.9 is 8.903 written to 2 significant digits (0.04% off)
MOST_SOURCES = 16  # a result resting on more lookups than this is no "one fact"
SHOWN = 3  # operands a doubt names at most


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


def _numbers(text: str) -> list[tuple[float, float]]:
    """Each number `text` writes, as (value, half its last digit's unit), once as written and
    once scaled by the word after it ("2.1 million": 2.1 and 2,100,000 give or take 50,000;
    "45%": 45 and 0.45; "8 849": 8, 849 and 8849). Signs are dropped: -237 is given by "237
    metres shorter". Not a finite float (a 400-digit number), no number."""
    out = []
    for m in _NUMBER.finditer(text):
        written = m.group().replace(",", "")
        mantissa, _, exponent = written.lower().partition("e")
        decimals = len(mantissa.partition(".")[2])
        try:
            value = abs(float(written))
            unit = 0.5 * 10.0 ** (int(exponent or 0) - decimals)
        except (ValueError, OverflowError):
            continue
        if not math.isfinite(value):
            continue
        out.append((value, unit))
        if scaled := _SCALE.match(text, m.end()):
            factor = _SCALES[" ".join(scaled.group(1).lower().replace("cent", " cent").split())]
            out.append((value * factor, unit * factor))
    out.extend((float("".join(m.group().split())), 0.5) for m in _SPACED.finditer(text))
    return out


class _Said:
    """The numbers an answer gives, as intervals of the values each may stand for (to its
    last digit, to 2 decimals, or within TOLERANCE): which values it gives, each found in
    log time, so a result with 100,000 numbers against an answer with thousands is cheap."""

    def __init__(self, answer: str) -> None:
        spans = []
        for value, unit in _numbers(answer):
            width = max(0.006, unit, value * TOLERANCE / (1 - TOLERANCE))
            spans.append((value - width, value + width))
        self.starts: list[float] = []
        self.ends: list[float] = []
        for start, end in sorted(spans):
            if self.ends and start <= self.ends[-1]:
                self.ends[-1] = max(self.ends[-1], end)
            else:
                self.starts.append(start)
                self.ends.append(end)

    def __bool__(self) -> bool:
        return bool(self.starts)

    def gives(self, value: float) -> bool:
        i = bisect.bisect_right(self.starts, abs(value)) - 1
        return i >= 0 and abs(value) <= self.ends[i]


def _kinds(text: str) -> set[str]:
    """The units `text` gives numbers in ("330 metres", "2 km": {"m", "km"})."""
    return set(_KIND.findall(normalise(text)))


def _is_number(value: object) -> bool:
    """A finite int or float (not a bool; not an int too big for a float)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _key(value: object) -> str:
    """`value` as results are compared: its repr; an int too long for one in hex; a value
    whose repr fails, as itself alone (never the same as another)."""
    try:
        return repr(value)
    except Exception:
        if isinstance(value, int):
            return hex(value)
        return f"<{type(value).__name__} at {id(value):#x}>"


def doubt(run: Finished, question: str = "") -> str | None:
    """Why `run`'s own plan doubts its answer (see the module docstring), or None. A
    `question` that offers the answer's options ("A or B?") gets no partial check: its
    answer names one, and any numbers it gives are its reasons."""
    if not run.answer:
        return None
    said = _Said(run.answer)
    if not said:
        return None
    done: dict[int, Done] = {t.id: t for t in run.tasks if t.status == "done"}
    refs = {t.id: sorted({n for n, _ in references(t.args) if n in done}) for t in done.values()}
    taken = {r for rs in refs.values() for r in rs}
    kinds = _kinds(run.answer)
    if run.replans == 0 and not offers_choice(question):
        for t in sorted(done.values(), key=lambda t: t.id):
            if t.id in taken:
                continue
            if _is_number(t.result) and not said.gives(float(t.result)):
                return f"the answer leaves out {float(t.result):.6g}, task {t.id}'s result"
            found = _numbers(t.result) if isinstance(t.result, str) else []
            if found and not any(said.gives(value) for value, _ in found):
                if kinds and not kinds & _kinds(t.result):
                    continue  # context: no quantity of the kind the answer gives
                return f"the answer uses no number of task {t.id}'s result"
    keys: dict[int, str] = {}

    def key(task: int) -> str:
        if task not in keys:
            keys[task] = _key(done[task].result)
        return keys[task]

    sources = _Sources(refs, key)
    for t in sorted(done.values(), key=lambda t: t.id):
        operands = refs[t.id]
        if len(operands) < 2 or len({key(r) for r in operands}) > 1:
            continue
        rests_on = {sources.of(r) for r in operands}
        if len(rests_on) == 1 and None not in rests_on:
            shown = ", ".join(f"${r}" for r in operands[:SHOWN])
            more = f" and {len(operands) - SHOWN} more" if len(operands) > SHOWN else ""
            return f"task {t.id} combines one result with itself ({shown}{more})"
    return None


class _Sources:
    """The results of the lookups (tasks that take no other result) each task rests on,
    worked out once a task, so a plan's check stays linear in its size; None for a task
    resting on more than MOST_SOURCES of them (or on a loop), which is no one fact."""

    def __init__(self, refs: dict[int, list[int]], key: Callable[[int], str]) -> None:
        self.refs = refs
        self.key = key
        self.known: dict[int, frozenset[str] | None] = {}

    def of(self, task: int) -> frozenset[str] | None:
        stack, open_ = [task], set()
        while stack:
            i = stack[-1]
            if i in self.known:
                stack.pop()
                continue
            up = self.refs.get(i, [])
            waiting = [r for r in up if r not in self.known]
            if waiting and i not in open_:
                open_.add(i)
                stack.extend(r for r in waiting if r not in open_)
                continue
            stack.pop()
            if not up:
                self.known[i] = frozenset([self.key(i)])
                continue
            parts = [self.known.get(r) for r in up]  # one still open: a loop
            if any(p is None for p in parts):
                self.known[i] = None
                continue
            out = frozenset().union(*parts)  # type: ignore[arg-type]
            self.known[i] = out if len(out) <= MOST_SOURCES else None
        return self.known[task]
