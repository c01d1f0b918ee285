"""Plans and decisions chosen among candidates by a model that scores text (choose.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

import plait
from plait.agent.choose import DecisionChooser, answers, fmt_number
from plait.agent.schema import phrase_spans, plan_schema, question_spans
from plait.llm.base import Delta, LLMError, Request, Usage

QUESTION = "How much taller is the Eiffel Tower than the Statue of Liberty?"


class Script:
    """A scoring model that prefers, at each call, the candidate holding the next choice of
    its script; it records what it was offered. It cannot generate."""

    name = "script"
    supports_json_schema = False

    def __init__(self, *choices: str) -> None:
        self.choices = list(choices)
        self.offered: list[tuple[str, list[str]]] = []

    async def score(
        self, request: Request, prefix: str, candidates: Sequence[str]
    ) -> tuple[list[float], Usage]:
        if request.session == "plait:neutral":  # calibration: no preference
            return [0.0] * len(candidates), Usage(1, 1)
        self.offered.append((prefix, list(candidates)))
        want = self.choices.pop(0)
        hits = [c for c in candidates if want in c]
        assert hits, f"{want!r} not among {candidates}"
        return [0.0 if c == hits[0] else -10.0 for c in candidates], Usage(10, len(candidates))

    async def stream(self, request: Request) -> AsyncIterator[Delta]:
        raise LLMError("a scoring model is not asked to generate")
        yield Delta()  # pragma: no cover


@pytest.fixture
def tools(example_tools: Path) -> plait.Tools:
    return plait.load_tools(str(example_tools))


async def test_the_plan_and_the_answer_are_chosen_among_grounded_candidates(
    tools: plait.Tools,
) -> None:
    llm = Script(
        # 1. search( is all there is: nothing else can start, and join() must wait until
        # every name of the question was looked up
        '"Eiffel Tower"',  # only the question's phrases are offered
        "search(",  # one phrase left: not asked
        "extract_number(", "$1",
        "extract_number(",  # one result left: not asked
        "calculate(", '"$3 - $4"',  # then join() is all that is left: not asked
        "237 metres",
    )  # fmt: skip
    result = await plait.arun(QUESTION, tools=tools, model=llm, store="memory://")
    assert result.status == "done" and result.answer == "237 metres", result.error
    assert [(t.tool, tuple(t.args.values())) for t in result.tasks] == [
        ("search", ("Eiffel Tower",)),
        ("search", ("Statue of Liberty",)),
        ("extract_number", ("$1",)),
        ("extract_number", ("$2",)),
        ("calculate", ("$3 - $4",)),
    ]
    assert not llm.choices
    offered = dict(llm.offered)
    assert "1. " not in offered
    assert offered['1. search("Eiffel Tower")\n2. '] == ["search(", "extract_number("]
    assert offered["1. search("] == ['"Eiffel Tower")\n', '"Statue of Liberty")\n']
    formulas = offered[next(p for p in offered if p.endswith("5. calculate("))]
    # operands in the question's order; no result taken twice
    assert formulas == [f'"$3 {op} $4")\n' for op in "-+/*"]
    assert offered[next(p for p in offered if p.endswith("Action: Finish("))] == [
        "237)",
        "237 metres)",
    ]
    assert result.llm_calls[0].usage.completion_tokens > 0  # scored tokens are counted


async def test_a_scoring_model_is_asked_to_generate_when_the_technique_is_off(
    tools: plait.Tools,
) -> None:
    from plait.agent.loop import Tactics

    result = await plait.arun(
        QUESTION, tools=tools, model=Script(), store="memory://", tactics=Tactics(choose=False)
    )
    assert result.status == "failed" and "not asked to generate" in (result.error or "")


async def test_a_run_resumed_keeps_the_tactics_it_was_started_with(tools: plait.Tools) -> None:
    from plait.agent.loop import Tactics

    store = plait.open_store("memory://")
    off = Tactics(choose=False)
    first = await plait.arun(QUESTION, tools=tools, model=Script(), store=store, tactics=off)
    assert store.get(first.run_id).options["tactics"]["choose"] is False
    # Resumed with no tactics given: still not choosing (choosing would ask Script to score).
    again = await plait.aresume(first.run_id, tools=tools, store=store, model=Script())
    assert again.status == "failed" and "not asked to generate" in (again.error or "")


def test_question_phrases_are_whole_names() -> None:
    assert question_spans(QUESTION) == ["Eiffel Tower", "Statue of Liberty"]
    assert question_spans("Which is taller, Big Ben or the Great Pyramid of Giza?") == [
        "Big Ben",
        "Great Pyramid of Giza",
    ]
    assert question_spans("Who wrote In Cold Blood?") == ["Cold Blood"]
    assert question_spans("How high is Mount Everest than K2?") == ["Mount Everest", "K2"]
    # overlapping an earlier task's phrase: not offered
    assert [p for _, _, p in phrase_spans(QUESTION, taken=[(5, 7)], maximal=True)] == [
        "Statue of Liberty"
    ]


def test_the_json_plan_schema_limits_lookups_to_the_question(tools: plait.Tools) -> None:
    schema = plan_schema(tools, 1, question=QUESTION)
    query = schema["$defs"]["args-search"]["properties"]["query"]["anyOf"][0]
    assert query["enum"] == ["Eiffel Tower", "Statue of Liberty"]
    assert "x-plait" not in str(schema)
    free = plan_schema(tools, 1)["$defs"]["args-search"]["properties"]["query"]["anyOf"][0]
    assert "enum" not in free


def test_answers_are_outputs_numbers_with_units_and_phrases() -> None:
    assert fmt_number(237.0) == "237" and fmt_number(828 / 93) == "8.9"
    assert fmt_number(8.9 - 2.1) == "6.8" and fmt_number(6650 / 2850) == "2.33"
    found = answers([237.0], ["The Eiffel Tower is 330 metres tall, completed in 1889."])
    assert found == ["237", "237 metres"]
    assert "Truman Capote" in answers(["Truman Capote wrote In Cold Blood, in 1966."])


def test_the_question_is_not_an_answer_unless_it_offers_a_choice() -> None:
    text = "George Orwell wrote Nineteen Eighty-Four and Animal Farm."
    found, _ = DecisionChooser(Script(), [text], [], question="Who wrote Animal Farm?").options()
    assert "George Orwell" in found and "Animal Farm" not in found
    later = "The Empire State Building in New York City is 443 metres tall."
    earlier = "The Eiffel Tower in Paris is 330 metres tall."
    choice = "Which is taller, the Eiffel Tower or the Empire State Building?"
    found, _ = DecisionChooser(Script(), [443.0], [], [earlier, later], question=choice).options()
    assert found == ["Empire State Building"]  # the latest result naming an option


async def test_nothing_to_answer_with_is_a_replan_naming_the_failure() -> None:
    chooser = DecisionChooser(Script(), [], ["task 1 search failed: nothing found for 'x'"])
    reply = "".join([d.text async for d in chooser.stream(Request([]))])
    assert reply == "Action: Replan(task 1 search failed: nothing found for 'x')"


async def test_a_batch_on_a_scoring_model_chooses_too(tools: plait.Tools) -> None:
    # The batch wraps the model (SharedLLM): scoring must pass through, not fall back.
    script = ('"Eiffel Tower"', "search(", "extract_number(", "$1", "extract_number(")
    llm = Script(*script, "calculate(", '"$3 - $4"', "237 metres")
    items = [{"id": 1, "question": QUESTION}]
    results = [r async for r in plait.batch.abatch(items, tools=tools, model=llm)]
    assert [(r.status, r.answer) for r in results] == [("done", "237 metres")]
