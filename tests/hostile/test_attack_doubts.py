"""Attacks on the plan check of sampled attempts (agent/doubts.py, samples.vote): answers
that give a plan's number in another form, results the check could not print, plans whose
check grew quadratic, and a vote's label when the plan check set the first answer aside."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from plait.agent.doubts import doubt
from plait.agent.samples import vote
from plait.runs.result import TaskRecord


@dataclass
class Run:
    answer: str | None
    tasks: list[TaskRecord] = field(default_factory=list)
    replans: int = 0


def done(i: int, args: Any, result: Any) -> TaskRecord:
    return TaskRecord(i, "f", args, status="done", result=result)


@pytest.mark.parametrize(
    ("answer", "result"),
    [
        ("1.2e3 metres", 1200.0),
        ("3.844e5 km", 384400),
        ("45.2%", 0.452),
        ("45.2 per cent", 0.452),
        ("The Statue is 237 metres shorter", -237.0),  # `$4 - $3`, said as a distance
        ("about 2.1 million people", 2148271),
        ("1.5 billion", 1_500_000_000),
        ("about 1.3 times as tall", 1.3424),  # rounded to the digits it writes
        ("8 849 m", 8849),  # French and SI thousands
        ("8\u202f849 m", 8849.0),
    ],
)
def test_a_number_the_answer_writes_another_way_is_not_left_out(answer: str, result: Any) -> None:
    """The old check read "1.2e3" as 1.2, "45.2%" as 45.2, "2.1 million" as 2.1, -237 as no
    distance of 237 and "1.3" as no rounding of 1.3424 (it allowed 0.5%): each answer was
    doubted, and lost to any undoubted one."""
    tasks = [done(1, {"q": "x"}, "source text"), done(2, {"text": "$1"}, result)]
    assert doubt(Run(answer, tasks)) is None


def test_a_number_the_answer_does_leave_out_is_still_doubted() -> None:
    tasks = [done(1, {}, 330.0), done(2, {}, 93.0)]
    assert doubt(Run("330 metres", tasks)) == "the answer leaves out 93, task 2's result"
    assert doubt(Run("2.1 million", [done(1, {}, 2_300_000)])) is not None
    assert doubt(Run("-5", [done(1, {}, 6.0)])) is not None


class NoRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


@pytest.mark.parametrize("result", [10**5000, NoRepr()], ids=["huge int", "broken repr"])
def test_a_result_that_cannot_be_printed_does_not_break_the_check(result: Any) -> None:
    """repr(10**5000) raises (Python's 4300-digit limit), as does a tool object's broken
    __repr__: the old check raised it out of the vote, losing every attempt's answer."""
    tasks = [done(1, {}, result), done(2, {}, "a text"), done(3, {"a": "$1", "b": "$2"}, 7)]
    assert doubt(Run("7", tasks)) is None
    twice = [done(1, {}, result), done(2, {"x": "$1"}, result), done(3, {"x": "$1"}, result)]
    twice.append(done(4, {"a": "$2", "b": "$3"}, 7))
    found = doubt(Run("7", twice))
    if isinstance(result, int):  # the one huge number from one source, twice
        assert found == "task 4 combines one result with itself ($2, $3)"


def calls(check: Callable[[], object]) -> int:
    """How many Python and C function calls `check()` makes (a count, not a time)."""
    n = 0

    def count(frame: Any, event: str, arg: Any) -> None:
        nonlocal n
        n += event in ("call", "c_call")

    sys.setprofile(count)
    try:
        check()
    finally:
        sys.setprofile(None)
    return n


def test_a_long_text_against_a_long_answer_is_checked_in_linear_work() -> None:
    """The old check compared each of a text's numbers with each of the answer's: a tool's
    100,000-number table against a 2,000-number answer took 88 s on the event loop."""
    n = 2000
    text = " ".join(str(i) for i in range(10**6, 10**6 + 2 * n, 2))
    answer = " ".join(f"{i}.5" for i in range(1, n + 1))
    run = Run(answer, [done(1, {}, text)])
    assert doubt(run) == "the answer uses no number of task 1's result"
    assert calls(lambda: doubt(run)) < 40 * n  # the old check: n * n comparisons


def test_a_plan_of_many_joined_lookups_is_checked_in_linear_work() -> None:
    """A ladder: task c_i takes c_(i-1) and a new lookup with the same text. The old check
    walked every task's whole ancestry again (8,000 rungs: 44 s)."""
    n = 1000
    tasks = [done(1, {}, "text 1")]
    for i in range(2, n + 1):
        prev = 1 if i == 2 else 2 * (i - 1) + 1
        rung = {"a": f"${prev}", "b": f"${2 * i}"}
        tasks += [done(2 * i, {}, f"text {i}"), done(2 * i + 1, rung, f"text {i + 1}")]
    run = Run("7", tasks, replans=1)
    assert doubt(run) is None
    assert calls(lambda: doubt(run)) < 400 * n  # the old check: about 4 n * n


def test_a_doubt_names_a_wide_task_s_operands_in_a_few() -> None:
    """A task taking 10,000 equal lookups: the old doubt listed all ten thousand `$N` in
    the attempt's --json and vote line."""
    tasks = [done(i, {"q": "x"}, "no numbers") for i in range(1, 10_001)]
    tasks.append(done(10_001, {"xs": [f"${i}" for i in range(1, 10_001)]}, 7))
    assert (
        doubt(Run("7", tasks))
        == "task 10001 combines one result with itself ($1, $2, $3 and 9997 more)"
    )


def test_a_first_answer_set_aside_is_said_to_be_the_plan_check_s_doing() -> None:
    """agree=1: the first answer wins. When the plan check set the first aside and the
    second won, the old vote said "only one" though two attempts had answered."""
    answers = ["330", "423"]
    first_in = asyncio.Event()

    async def attempt(i: int) -> str:
        if i == 1:
            await first_in.wait()  # the doubted one answers first
        else:
            first_in.set()
        return answers[i]

    voted = asyncio.run(vote(attempt, 2, 1, None, lambda i: "doubted" if i == 0 else None))
    assert (voted.answer, voted.decided_by, voted.chosen) == ("423", "plan check", 1)
    lone = asyncio.run(vote(attempt, 1, 1, None, lambda i: None))
    assert (lone.answer, lone.decided_by) == ("330", "only one")


EIFFEL = (
    "The Eiffel Tower in Paris is 330 metres tall including its antennas; it was completed"
    " in 1889 for the World's Fair."
)
DESIGNER = "Gustave Eiffel (1832-1923) was a French engineer whose company built the Eiffel Tower."


def test_a_right_answer_beside_a_context_lookup_does_not_lose_to_a_wrong_one() -> None:
    """ "How tall is the tower Gustave Eiffel's company built?": a strong model's plan looks
    the engineer up beside the tower, and rightly answers with the tower's height only. The
    old check doubted it (the engineer's text's 1832 and 1923 unused), so two right attempts
    lost to one wrong, undoubted, attempt (decided_by "plan check")."""
    right = Run(
        "330 metres",
        [
            TaskRecord(1, "search", {"query": "Gustave Eiffel"}, "done", DESIGNER),
            TaskRecord(2, "search", {"query": "Eiffel Tower height"}, "done", EIFFEL),
            TaskRecord(3, "extract_number", {"text": "$2", "unit": "metres"}, "done", 330.0),
        ],
    )
    wrong = Run(
        "324 metres",
        [
            TaskRecord(1, "search", {"query": "Eiffel Tower"}, "done", "It was 324 metres tall."),
            TaskRecord(2, "extract_number", {"text": "$1"}, "done", 324.0),
        ],
    )
    runs = [right, wrong, right]
    assert doubt(right) is None
    voted = asyncio.run(vote(_answer(runs), 3, 2, None, lambda i: doubt(runs[i])))
    assert (voted.answer, voted.decided_by) == ("330 metres", "agreement")
    # A text with a quantity of the answer's kind is still one the answer leaves out.
    statue = TaskRecord(4, "search", {"query": "Statue of Liberty"}, "done", "It is 93 m tall.")
    assert doubt(Run("330 metres", [*right.tasks, statue])) == (
        "the answer uses no number of task 4's result"
    )


def _answer(runs: list[Run]) -> Callable[[int], Any]:
    async def attempt(i: int) -> str | None:
        return runs[i].answer

    return attempt
