"""Parallel samples with early stop: N attempts at one question, voted, cut short at K agreeing.

Self-consistency (Wang et al.), with CodeMonkeys' parallel candidates and asynchronous
test-time scaling's early stop: `vote` starts N plan-run-join attempts at once and reads
their answers as they arrive. Answers are compared as `normalise` writes them (case,
whitespace, articles, trailing punctuation; numbers without thousands separators and to
three significant digits unless whole; units by one name: "8,849 metres" and "8849 m" are
one answer; a lone number agrees with itself followed by a unit, but "330 m" and "330 ft"
differ). As soon as `agree`
attempts give one answer, the others are cancelled (their model streams closed, their tasks
cancelled: `vote` returns only once they have stopped) and that answer is returned. With
no agreement once all have finished, the most frequent answer wins; a tie goes to the
`judge` when there is one, else to the answer given first.

An answer the attempt's own plan argues against (`doubt`: agent/doubts.py, e.g. a plan
that computed two numbers and an answer that gives one) is a candidate that failed its
test: it never counts towards agreement, and it wins only if no attempt gave an undoubted
answer. A small model's mistakes repeat across attempts, so a plain majority keeps them;
what does scatter is whether an attempt's plan finished the job, and this is what picks
the attempts that did.

Attempts differ by what `variant` gives attempt i, and the caller shares their pure tool
calls (one SharedCalls for all of them). A model that writes text samples attempts after
the first at a temperature. A model that chooses by score (agent/choose.py) samples each
choice instead: attempt i > 0 runs on `ChoiceSampler(model, seed=i)`, which picks each
choice from softmax(score / T) (the Gumbel-max trick: the candidates' scores plus T times
Gumbel noise drawn from the seed and the choice point, so the chooser's argmax is such a
sample, and an attempt at the same choice point always draws the same). Every attempt
keeps one prompt, so their common choice points are one scoring request, which the model
answers once (llm/local.py's score cache); only where paths part does an attempt cost
model time. Attempt 0 stays greedy: the run as asked. This module owns the voting; it
knows nothing of plans, tools or stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from ..core import events as ev
from ..llm.base import LLM, Delta, Request, Scorer, Usage, Wrapper
from .choose import NEUTRAL_SESSION

# A number (thousands separators allowed) and the unit right after it, if any.
_NUMBER = re.compile(r"(?<![\w.])([-+]?\d[\d,]*(?:\.\d+)?)(?![\d])")
_SPACE = re.compile(r"\s+")
_ARTICLE = re.compile(r"^(?:the|a|an)\s+")

UNITS = {
    "m": ("m", "metre", "metres", "meter", "meters"),
    "km": ("km", "kilometre", "kilometres", "kilometer", "kilometers"),
    "cm": ("cm", "centimetre", "centimetres", "centimeter", "centimeters"),
    "ft": ("ft", "foot", "feet"),
    "mi": ("mi", "mile", "miles"),
    "kg": ("kg", "kilogram", "kilograms", "kilo", "kilos"),
    "%": ("%", "percent", "per cent"),
    "years": ("year", "years", "yr", "yrs"),
}
_UNIT = {alias: name for name, aliases in UNITS.items() for alias in aliases}
_WITH_UNIT = re.compile(
    r"^(-?\d+(?:\.\d+)?) (" + "|".join(map(re.escape, UNITS)) + r")$"
)  # a number and its unit, normalised: "330 m"
_UNIT_AFTER_NUMBER = re.compile(
    r"(\d) ?(" + "|".join(sorted(map(re.escape, _UNIT), key=len, reverse=True)) + r")(?![\w])"
)

MAX_SAMPLES = 64  # attempts at once at most: each is a whole run (its model calls, its tasks)
SAMPLE_TEMPERATURE = 0.7  # attempts after the first, when the run's own is 0
CHOICE_TEMPERATURE = 0.7  # a scoring model's choices: its softmax at 0.7 (bench/README: at 1
# the attempts part more often, cost more and were no more accurate)


def normalise(answer: str) -> str:
    """The form answers are compared in (see the module docstring)."""
    text = _SPACE.sub(" ", answer.strip().casefold())
    text = text.strip(" \"'`").rstrip(" .!;:")
    text = _ARTICLE.sub("", text)
    text = _NUMBER.sub(lambda m: _number(m.group(1)), text)
    text = _UNIT_AFTER_NUMBER.sub(lambda m: f"{m.group(1)} {_UNIT[m.group(2)]}", text)
    return text


def _bare(key: str) -> str | None:
    """The number of a normalised "number unit" answer ("330" of "330 m"), else None."""
    found = _WITH_UNIT.match(key)
    return found.group(1) if found else None


def _support(counts: Counter[str], key: str) -> int:
    """How many answers agree with `key`: its own, and a lone number agrees with the same
    number followed by a unit (with the one unit most given: "330" backs "330 m" or "330
    ft", never both into one answer)."""
    bare = _bare(key)
    if bare is not None:
        return counts[key] + counts[bare]
    return counts[key] + max((counts[k] for k in counts if _bare(k) == key), default=0)


def _related(counts: Counter[str], key: str) -> list[str]:
    """`key`, then the answers it agrees with (see `_support`)."""
    bare = _bare(key)
    if bare is not None:
        return [key, bare] if bare in counts else [key]
    return [key, *(k for k in counts if _bare(k) == key)]


def _number(text: str) -> str:
    try:
        x = float(text.replace(",", ""))
    except ValueError:
        return text
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    rounded = float(f"{x:.3g}")
    return str(int(rounded)) if rounded == int(rounded) else repr(rounded)


def variant(i: int, temperature: float | None, scores: bool = False) -> tuple[float | None, float]:
    """Attempt i's sampling temperature (for the text a model writes) and its choice
    temperature (0: choices greedy; for a model that chooses by score, whose writing
    temperature would turn a chooser back into a free writer). Attempt 0 is the run as
    asked; the others sample: a writer at the run's temperature (`SAMPLE_TEMPERATURE` when
    that is 0), a chooser its choices at the run's temperature (`CHOICE_TEMPERATURE` when 0)."""
    if i == 0:
        return temperature, 0.0
    if scores:
        return temperature, temperature or CHOICE_TEMPERATURE
    return temperature or SAMPLE_TEMPERATURE, 0.0


def gumbel(seed: str) -> float:
    """A Gumbel(0, 1) draw fixed by `seed`."""
    u = random.Random(seed).random()
    return -math.log(-math.log(u)) if u > 0.0 else -math.log(-math.log(1e-300))


class ChoiceSampler(Wrapper):
    """A scoring model whose choices are sampled (see the module docstring): `score` returns
    each candidate's log-probability plus `temperature` times Gumbel noise fixed by `seed`
    and the choice point, so taking the best is drawing from softmax(score / temperature).
    A calibration prior (`NEUTRAL_SESSION`) is scored as it is, so the chooser's calibrated
    choice is still one draw. Text the model writes is streamed unchanged."""

    def __init__(self, llm: LLM, seed: int, temperature: float = CHOICE_TEMPERATURE) -> None:
        super().__init__(llm)
        self.seed = seed
        self.temperature = temperature
        self._inner = getattr(llm, "score", None)
        if self._inner is not None:
            self.score = self._sampled

    def stream(self, request: Request) -> AsyncIterator[Delta]:
        return self.llm.stream(request)

    async def _sampled(
        self, request: Request, prefix: str, candidates: Sequence[str]
    ) -> tuple[list[float], Usage]:
        assert self._inner is not None
        scores, usage = await self._inner(request, prefix, candidates)
        if request.session == NEUTRAL_SESSION or len(scores) < 2 or not self.temperature:
            return scores, usage
        point = json.dumps([self.seed, request.messages, prefix, list(candidates)])
        noisy = [s + self.temperature * gumbel(f"{point}{k}") for k, s in enumerate(scores)]
        return noisy, usage


@dataclass(slots=True)
class Attempt:
    """One attempt's fate."""

    index: int
    answer: str | None = None
    normalised: str | None = None
    error: str | None = None
    cut_short: bool = False  # cancelled because the others had agreed
    tokens: int = 0  # model tokens it used (filled in by the caller)
    doubt: str | None = None  # why its own plan argues against its answer

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "answer": self.answer,
            "error": self.error,
            "cut_short": self.cut_short,
            "tokens": self.tokens,
            "doubt": self.doubt,
        }


@dataclass(slots=True)
class Vote:
    answer: str | None
    decided_by: str  # "agreement", "majority", "plan check" (doubted answers set aside),
    # "judge", "only one", "none"
    attempts: list[Attempt] = field(default_factory=list)
    chosen: int | None = None  # the attempt whose answer it is

    @property
    def cut_short(self) -> int:
        return sum(1 for a in self.attempts if a.cut_short)

    def tokens_saved(self) -> int:
        """Tokens the cut-short attempts would still have used, estimated as the finished
        attempts' mean minus what each had used when it was stopped."""
        finished = [a.tokens for a in self.attempts if not a.cut_short and a.error is None]
        if not finished:
            return 0
        mean = sum(finished) / len(finished)
        return int(sum(max(0.0, mean - a.tokens) for a in self.attempts if a.cut_short))


RunAttempt = Callable[
    [int], Coroutine[Any, Any, str | None]
]  # attempt i -> its answer, None: no answer
Judge = Callable[[Sequence[str]], Awaitable[int | None]]  # tied answers -> the one chosen
Doubt = Callable[[int], str | None]  # attempt i (answered) -> why its plan argues against it


async def vote(
    run_attempt: RunAttempt,
    n: int,
    agree: int,
    judge: Judge | None = None,
    doubt: Doubt | None = None,
) -> Vote:
    """Run `n` attempts at once; stop when `agree` give one undoubted answer (see the
    docstring)."""
    if not 1 <= n <= MAX_SAMPLES:
        raise ValueError(f"samples must be between 1 and {MAX_SAMPLES}, not {n}")
    if not 1 <= agree <= n:
        raise ValueError(f"agree must be between 1 and samples ({n}), not {agree}")
    attempts = [Attempt(i) for i in range(n)]
    order: list[int] = []  # attempts in the order their answers came
    counts: Counter[str] = Counter()  # the undoubted answers
    doubted: Counter[str] = Counter()
    pending: dict[asyncio.Task[str | None], int] = {
        asyncio.create_task(run_attempt(i), name=f"plait-sample-{i}"): i for i in range(n)
    }
    arrived: list[asyncio.Task[str | None]] = []  # in the order they finished
    for task in pending:
        task.add_done_callback(arrived.append)
    winner: str | None = None
    try:
        while pending and winner is None:
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            done, arrived[:] = [t for t in arrived if t in pending], []
            for task in done:
                attempt = attempts[pending.pop(task)]
                if task.cancelled():
                    attempt.error = "cancelled"
                    continue
                error = task.exception()
                if error is not None:
                    attempt.error = f"{type(error).__name__}: {error}"
                    continue
                answer = task.result()
                if answer is None:
                    attempt.error = attempt.error or "no answer"
                    continue
                attempt.answer, attempt.normalised = answer, normalise(answer)
                order.append(attempt.index)
                attempt.doubt = doubt(attempt.index) if doubt is not None else None
                if attempt.doubt is not None:
                    doubted[attempt.normalised] += 1
                    continue
                counts[attempt.normalised] += 1
                for key in _related(counts, attempt.normalised):
                    if winner is None and _support(counts, key) >= agree:
                        winner = key
    finally:
        for task, i in pending.items():
            task.cancel()
            attempts[i].cut_short = winner is not None
        for task in list(pending):
            with contextlib.suppress(BaseException):
                await task  # stopped, streams closed, before the vote is returned
    answered = [attempts[i] for i in order]
    undoubted = [a for a in answered if a.doubt is None]
    set_aside = bool(undoubted) and len(undoubted) < len(answered)  # doubted ones left out
    if undoubted:
        answered = undoubted
    else:  # every answer doubted: they are all there is
        counts = doubted
    if winner is not None:
        first = next(a for a in answered if a.normalised == winner)
        by = "agreement" if agree > 1 or len(answered) > 1 else "only one"
        by = "plan check" if by == "only one" and set_aside else by  # the first set aside
        return Vote(first.answer, by, attempts, first.index)
    if not answered:
        return Vote(None, "none", attempts)
    support = {k: _support(counts, k) for k in counts}
    top = max(support.values())
    tied = [k for k in dict.fromkeys(a.normalised or "" for a in answered) if support[k] == top]
    # A lone number tied with its own number-and-unit is that answer, not a tie with it.
    tied = [k for k in tied if not any(_bare(j) == k for j in tied)]
    decided = "plan check" if set_aside else "majority" if len(answered) > 1 else "only one"
    choice = tied[0]
    if len(tied) > 1 and judge is not None:
        texts = [next(a.answer for a in answered if a.normalised == k) or "" for k in tied]
        picked = await judge(texts)
        if picked is not None and 0 <= picked < len(tied):
            choice, decided = tied[picked], "judge"
    first = next(a for a in answered if a.normalised == choice)
    return Vote(first.answer, decided, attempts, first.index)


_PICK = re.compile(r"\d+")


def llm_judge(llm: LLM, question: str) -> Judge:
    """A judge that asks `llm` which of the tied answers answers `question` best: by the
    answers' scores where the model scores text, else by the number it replies."""

    async def judge(answers: Sequence[str]) -> int | None:
        if isinstance(llm, Scorer):
            ask = Request([{"role": "user", "content": f"Question: {question}"}])
            scores, _ = await llm.score(ask, "Answer: ", list(answers))
            return max(range(len(answers)), key=scores.__getitem__) if scores else None
        listed = "\n".join(f"{i}. {a}" for i, a in enumerate(answers, 1))
        prompt = (
            f"Question: {question}\nCandidate answers:\n{listed}\n"
            "Reply with the number of the best answer only."
        )
        parts: list[str] = []
        stream = llm.stream(Request([{"role": "user", "content": prompt}], max_tokens=8))
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            async for delta in stream:
                parts.append(delta.text)
        m = _PICK.search("".join(parts))
        return int(m.group()) - 1 if m else None

    return judge


class Answered(Protocol):
    """What an attempt returns: a run's result, as far as voting is concerned."""

    status: str
    answer: str | None
    error: str | None


R = TypeVar("R", bound=Answered)


async def sampled(
    attempt: Callable[[int, ev.Listener], Coroutine[Any, Any, R]],
    n: int,
    agree: int,
    judge: Judge | None = None,
    doubt: Callable[[R], str | None] | None = None,
) -> tuple[Vote, dict[int, R]]:
    """Run `n` whole runs (`attempt(i, listener)`, the listener given their events) and
    vote on their answers (a run that did not end "done" gives none, and its error is the
    attempt's; `doubt` reads a finished run's plan against its answer). Returns the vote
    and the results of the attempts that finished. Each attempt's tokens are counted from its
    events, so the vote knows what the cut-short ones had used. If every attempt raised,
    the first one's error is raised."""
    results: dict[int, R] = {}
    errors: dict[int, BaseException] = {}
    tokens = [0] * n

    def counter(i: int) -> ev.Listener:
        streamed = [0]  # tokens of the call in flight, until its usage is reported

        def count(e: ev.Event) -> None:
            if isinstance(e, ev.LLMToken):
                streamed[0] += 1
            elif isinstance(e, ev.LLMFinished) and not e.restored:
                used = e.usage.prompt_tokens + e.usage.completion_tokens
                tokens[i] += used or streamed[0]
                streamed[0] = 0
            elif isinstance(e, ev.RunFinished):
                tokens[i] += streamed[0]  # a call cut short reports no usage

        return count

    async def one(i: int) -> str | None:
        try:
            result = await attempt(i, counter(i))
        except Exception as e:
            errors[i] = e
            raise
        results[i] = result
        return result.answer if result.status == "done" else None

    check = doubt  # narrowed for the closure below
    doubted = None if check is None else lambda i: check(results[i])
    outcome = await vote(one, n, agree, judge, doubted)
    for a in outcome.attempts:
        a.tokens = tokens[a.index]
        ended = results.get(a.index)
        if a.answer is None and ended is not None and ended.error:
            a.error = ended.error  # why it has none (a model error, a failed plan), said
    if not results and errors:
        raise errors[min(errors)]
    return outcome, results
