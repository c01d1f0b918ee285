"""The joiner's reply is read strictly: no decision is a failed call, asked again, never
the answer."""

from __future__ import annotations

from pathlib import Path

import pytest

import plait
from plait.agent.loop import JOIN_RETRIES
from plait.llm.replay import ReplayLLM

QUESTION = "How tall is the Eiffel Tower?"
PLAN = '1. search("Eiffel Tower")\n2. join()\n<END_OF_PLAN>'
ECHO = "Thought: 330 metres\nAction: Finish(...) or Action: Replan(...)."


@pytest.fixture
def tools(example_tools: Path) -> plait.Tools:
    return plait.load_tools(str(example_tools))


async def test_a_reply_without_a_decision_is_asked_again(tools: plait.Tools) -> None:
    llm = ReplayLLM([PLAN, "The tower is tall.", "Action: Finish(330 metres)"])
    result = await plait.arun(QUESTION, tools=tools, model=llm, store="memory://")
    assert result.status == "done" and result.answer == "330 metres"
    assert [c.role for c in result.llm_calls] == ["planner", "joiner", "joiner"]
    again = llm.calls[2].messages
    assert again[-2] == {"role": "assistant", "content": "The tower is tall."}
    assert again[-1]["role"] == "user" and "no decision" in again[-1]["content"]


async def test_an_echoed_template_is_never_the_answer(tools: plait.Tools) -> None:
    # Issue 13: the prompt's own instruction came back and was read as Replan("...").
    llm = ReplayLLM([PLAN] + [ECHO] * (JOIN_RETRIES + 1))
    result = await plait.arun(QUESTION, tools=tools, model=llm, store="memory://")
    assert result.status == "failed" and result.answer is None
    assert result.error is not None
    assert result.error.startswith(f"the joiner gave no decision in {JOIN_RETRIES + 1} replies")
    assert "Finish(...) or Action: Replan(...)" in result.error  # the reply, in words
    assert result.replans == 0  # no new plan was made for a placeholder reason


async def test_a_prompt_echoed_whole_is_not_reported_done(tools: plait.Tools) -> None:
    # Issue 13: a reply with no Action line was the answer, exit 0.
    echo = "Given a user question, write a plan of tool calls that answers it. " * 20
    llm = ReplayLLM([PLAN] + [echo] * (JOIN_RETRIES + 1))
    result = await plait.arun(QUESTION, tools=tools, model=llm, store="memory://")
    assert result.status == "failed" and result.answer is None


async def test_replans_say_the_reason_in_words(tools: plait.Tools) -> None:
    again = '3. search("Eiffel Tower height")\n4. join()'
    llm = ReplayLLM([PLAN, "Action: Replan(the height is missing)", again, "Action: Replan(no)"])
    result = await plait.arun(QUESTION, tools=tools, model=llm, max_replans=1, store="memory://")
    assert result.status == "failed"
    assert result.error == "the joiner asked for a new plan 2 times: no"
