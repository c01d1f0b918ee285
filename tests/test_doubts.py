"""agent/doubts.py: what a finished attempt's own plan says against its answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from plait.agent.doubts import doubt
from plait.runs.result import TaskRecord

EIFFEL = "The Eiffel Tower in Paris is 330 metres tall; it was completed in 1889."
LIBERTY = "The Statue of Liberty is 93 metres tall."
MOON = "The Moon is on average 384400 kilometres from the Earth."


@dataclass
class Run:
    answer: str | None
    tasks: list[TaskRecord] = field(default_factory=list)
    replans: int = 0


def plan(*steps: tuple[str, Any, Any]) -> list[TaskRecord]:
    """Tasks 1, 2, ... (tool, args, result), all done."""
    return [
        TaskRecord(i, tool, args, status="done", result=result)
        for i, (tool, args, result) in enumerate(steps, 1)
    ]


TWO_HEIGHTS = plan(
    ("search", {"query": "Eiffel Tower"}, EIFFEL),
    ("search", {"query": "Statue of Liberty"}, LIBERTY),
    ("extract_number", {"text": "$1"}, 330.0),
    ("extract_number", {"text": "$2"}, 93.0),
)


def test_an_answer_that_leaves_out_a_number_its_plan_computed_is_doubted() -> None:
    assert doubt(Run("330 metres", TWO_HEIGHTS)) == "the answer leaves out 93, task 4's result"


def test_an_answer_that_uses_every_number_its_plan_computed_is_not() -> None:
    summed = [*TWO_HEIGHTS, TaskRecord(5, "calculate", {"expression": "$3 + $4"}, "done", 423.0)]
    assert doubt(Run("423 metres", summed)) is None
    assert doubt(Run("423", summed)) is None
    # An answer that says every number, in whatever words, is whole.
    assert doubt(Run("330 m and 93 m", TWO_HEIGHTS)) is None


@pytest.mark.parametrize(
    ("answer", "result"), [("8.9", 8.903225806), ("1,834 metres", 1834), ("3.55", 3.548387)]
)
def test_a_number_is_the_result_as_an_answer_rounds_it(answer: str, result: float) -> None:
    tasks = plan(("calculate", {"expression": "1"}, result))
    assert doubt(Run(answer, tasks)) is None


def test_answers_without_a_number_text_results_and_replans_are_not_doubted() -> None:
    assert doubt(Run("Truman Capote", TWO_HEIGHTS)) is None
    assert doubt(Run(None, TWO_HEIGHTS)) is None
    # A text without numbers is context: a number answer need not use it.
    context = plan(("search", {"q": "Paris"}, "Paris is in France."), ("f", {}, 330))
    assert doubt(Run("330 metres", context)) is None
    # A replan's plan may rightly leave the first plan's results unused.
    assert doubt(Run("330 metres", TWO_HEIGHTS, replans=1)) is None


def test_an_answer_that_uses_no_number_of_a_text_its_plan_looked_up_is_doubted() -> None:
    """Two lookups, the joiner reads one: the other text's numbers (93, 1886) are unused."""
    assert (
        doubt(Run("330 metres", TWO_HEIGHTS[:2])) == "the answer uses no number of task 2's result"
    )
    lookup_and_number = [*TWO_HEIGHTS[:3]]  # the Statue's text never extracted
    assert doubt(Run("330", lookup_and_number)) == "the answer uses no number of task 2's result"
    assert doubt(Run("330 metres", TWO_HEIGHTS[:1])) is None  # the one text it read
    assert doubt(Run("1889", TWO_HEIGHTS[:1])) is None  # any of its numbers


def test_a_failed_task_is_not_a_result_the_answer_leaves_out() -> None:
    tasks = [TWO_HEIGHTS[0], TWO_HEIGHTS[2], TaskRecord(2, "search", {"q": "Liberty"}, "failed")]
    assert doubt(Run("330 metres", tasks)) is None
    # But a text a failed task could not read is still one the answer does not use.
    tasks = [*TWO_HEIGHTS[:3], TaskRecord(4, "extract_number", {"text": "$2"}, "failed")]
    assert doubt(Run("330 metres", tasks)) == "the answer uses no number of task 2's result"


def test_one_fact_combined_with_itself_is_doubted() -> None:
    """Both lookups found the one text: its number minus itself answers nothing."""
    tasks = plan(
        ("search", {"query": "Moon"}, MOON),
        ("extract_number", {"text": "$1"}, 384400.0),
        ("search", {"query": "Earth"}, MOON),
        ("extract_number", {"text": "$3"}, 384400.0),
        ("calculate", {"expression": "$2 - $4"}, 0.0),
    )
    assert doubt(Run("0 kilometres", tasks)) == "task 5 combines one result with itself ($2, $4)"
    # The same number from two different facts is a real comparison: 0 is an answer.
    other = [*tasks]
    other[2] = TaskRecord(3, "search", {"query": "Earth"}, "done", "Also 384400 km, elsewhere.")
    assert doubt(Run("0 kilometres", other)) is None


def test_a_long_chain_is_checked_without_recursion() -> None:
    n = 5000
    tasks = [TaskRecord(1, "search", {"query": "x"}, "done", "7 apples")]
    tasks += [TaskRecord(i, "f", {"x": f"${i - 1}"}, "done", "7 apples") for i in range(2, n)]
    tasks.append(TaskRecord(n, "g", {"a": f"${n - 1}", "b": f"${n - 2}"}, "done", 7))
    assert (
        doubt(Run("7", tasks)) == f"task {n} combines one result with itself (${n - 2}, ${n - 1})"
    )


@pytest.mark.parametrize("result", [10**400, float("nan"), float("inf"), True, None, [330]])
def test_results_that_are_no_number_an_answer_could_give_are_not_left_out(result: Any) -> None:
    tasks = plan(("f", {}, result))
    assert doubt(Run("330", tasks)) is None


def test_a_question_offering_its_options_gets_no_partial_check() -> None:
    """A question like "Which is taller, A or B?": the answer names one and may give its
    height as the reason; leaving the other's out is right, not half an answer."""
    heights = plan(
        ("search", {"query": "Eiffel Tower"}, EIFFEL),
        ("search", {"query": "Empire State Building"}, "The Empire State Building is 443 m."),
        ("extract_number", {"text": "$1"}, 330.0),
        ("extract_number", {"text": "$2"}, 443.0),
    )
    run = Run("The Empire State Building, at 443 metres", heights)
    question = "Which is taller, the Eiffel Tower or the Empire State Building?"
    assert doubt(run, question) is None
    assert doubt(run) == "the answer leaves out 330, task 3's result"  # no question: checked
    # The one-fact-twice check still holds there.
    same = plan(("search", {}, MOON), ("search", {}, MOON), ("f", {"a": "$1", "b": "$2"}, 0))
    assert doubt(Run("0", same), question) == "task 3 combines one result with itself ($1, $2)"


async def test_a_run_of_a_question_offering_its_options_is_not_doubted(example_tools) -> None:
    import plait
    from plait.llm.replay import ReplayLLM

    plan_text = (
        '1. search("Eiffel Tower")\n2. search("Empire State Building")\n'
        "3. extract_number($1)\n4. extract_number($2)\n5. join()\n<END_OF_PLAN>"
    )
    model = ReplayLLM([plan_text, "Action: Finish(The Empire State Building, 443 metres)"])
    result = await plait.arun(
        "Which is taller, the Eiffel Tower or the Empire State Building?",
        tools=plait.load_tools(str(example_tools)),
        model=model,
    )
    assert result.answer == "The Empire State Building, 443 metres"
    assert result.doubt is None
