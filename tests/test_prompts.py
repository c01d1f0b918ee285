"""Reading the joiner's decision strictly, and choosing few-shot examples like the question."""

from __future__ import annotations

from pathlib import Path

import pytest

import plait
from plait.agent.prompts import (
    parse_decision,
    planner_messages,
    select_examples,
    split_examples,
    tool_lines,
)


@pytest.mark.parametrize(
    ("reply", "action", "text"),
    [
        ("Thought: 330 - 93.\nAction: Finish(237 metres)", "finish", "237 metres"),
        ("Action: Replan(need the second height)", "replan", "need the second height"),
        ("Action: Finish(f(x) = 2 (roughly))", "finish", "f(x) = 2 (roughly)"),
        ("action : finish( Paris )", "finish", "Paris"),
        ('{"action": "Finish", "text": "237"}', "finish", "237"),
        ('{"action": "Replan", "text": "look up K2"}', "replan", "look up K2"),
        (
            '{ "action": "Finish", "text" : "The tower is 330 metres tall; it',
            "finish",
            "The tower is 330 metres tall; it",
        ),
        # cut off at max tokens: what came is kept
        (
            "Thought: ok\nAction: Finish(The Eiffel Tower is taller",
            "finish",
            "The Eiffel Tower is taller",
        ),
        # an echoed template line first, then a real decision
        ("Action: Finish(...)\nThought: 237\nAction: Finish(237)", "finish", "237"),
    ],
)
def test_decisions_are_read(reply: str, action: str, text: str) -> None:
    decision = parse_decision(reply)
    assert decision is not None
    assert (decision.action, decision.text) == (action, text)


@pytest.mark.parametrize(
    "reply",
    [
        # issue 13: our own instruction echoed back was read as Replan("...")
        "Thought: 330 metres\nAction: Finish(...) or Action: Replan(...).",
        "Action: Finish(<the final answer>)",
        "Action: Replan(<what is missing and should be done next>)",
        "Action: Finish(…)",
        "Action: Finish()",
        "Action: Finish(the answer)",
        "Action: Finish(237) or Action: Replan(more)",
        # no decision at all: never the answer
        "Thought: 330 metres",
        "The Eiffel Tower is 237 metres taller.",
        "",
        '{"action": "Finish", "text": "..."}',
        '{"action": "Stop", "text": "237"}',
    ],
)
def test_echoes_placeholders_and_missing_decisions_are_none(reply: str) -> None:
    assert parse_decision(reply) is None


EXAMPLES = """\
Question: How long is the Thames?
1. search("Thames")
2. join()

Question: Who wrote Hamlet?
1. search("Hamlet")
2. join()

Question: How much longer is the Danube than the Thames?
1. search("Danube")
2. search("Thames")
3. calculate("$1 - $2")
4. join()

Question: How many times taller is the Sydney Opera House than the Leaning Tower of Pisa?
1. search("Sydney Opera House")
2. calculate("$1 / $1")
3. join()"""


def test_examples_most_like_the_question_are_shown_nearest_last() -> None:
    assert len(split_examples(EXAMPLES)) == 4
    shown = select_examples(EXAMPLES, "How much taller is the Eiffel Tower than the Statue?", 2)
    firsts = [e.splitlines()[0] for e in split_examples(shown)]
    assert firsts[-1] == "Question: How much longer is the Danube than the Thames?"
    assert len(firsts) == 2
    one = select_examples(EXAMPLES, "Who wrote In Cold Blood?", 1)
    assert one.startswith("Question: Who wrote Hamlet?") and "Thames" not in one
    lookup = select_examples(EXAMPLES, "How tall is the CN Tower?", 1)
    assert lookup.startswith("Question: How long is the Thames?")
    assert select_examples(EXAMPLES, "anything", 4) == EXAMPLES  # k or fewer: all of them


def test_prompts_hide_the_grounding_marks_and_the_compact_form_is_short(
    example_tools: Path,
) -> None:
    tools = plait.load_tools(str(example_tools))
    lines = tool_lines(tools)
    assert "x-plait" not in lines and "search(query: str)" in lines
    full = planner_messages("Q?", tools, examples="Question: x\n1. join()")[0]["content"]
    compact = planner_messages("Q?", tools, examples="Question: x", compact=True)[0]["content"]
    assert len(compact) < len(full) / 2
    assert "search(query: str)" in compact and compact.endswith("Question: x")
