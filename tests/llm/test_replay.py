"""The replay model's two file forms: a list in call order, or replies keyed by prompt text."""

from __future__ import annotations

import asyncio
import json

import pytest

import plait
from plait.errors import PlaitError
from plait.llm.base import LLMError, Request
from plait.llm.replay import ReplayLLM

PLAN = "1. double({n})\n2. join()\n<END_OF_PLAN>"


@plait.tool
def double(n: int) -> int:
    return 2 * n


def user(*texts: str) -> Request:
    return Request([{"role": "user", "content": t} for t in texts])


async def text(llm: ReplayLLM, request: Request) -> str:
    return "".join([d.text async for d in llm.stream(request)])


async def test_keyed_replies_go_to_the_longest_key_in_the_last_user_message():
    llm = ReplayLLM({"Paris": ["p1", "p2"], "Paris, France": ["pf1"], "Rome": ["r1"]})
    assert await text(llm, user("what of Rome?")) == "r1"
    assert await text(llm, user("Paris, France: how big?")) == "pf1"
    assert await text(llm, user("Paris?")) == "p1"
    # The last user message names no key: earlier ones are searched, latest first.
    assert await text(llm, user("Paris again", "Results: 4")) == "p2"


async def test_keyed_replies_run_out_and_unmatched_prompts_are_errors():
    llm = ReplayLLM({"Rome": ["r1"]})
    await text(llm, user("Rome"))
    with pytest.raises(LLMError, match="no reply left for 'Rome'"):
        await text(llm, user("Rome"))
    with pytest.raises(LLMError, match="no key of the replay file matches the prompt 'Oslo"):
        await text(llm, user("Oslo is north"))


async def test_concurrent_runs_each_get_their_own_replies(tmp_path):
    replies = {
        f"question {n}": [PLAN.format(n=n), f"Action: Finish(answer {2 * n})"] for n in range(8)
    }
    path = tmp_path / "replies.json"
    path.write_text(json.dumps(replies))
    results = await asyncio.gather(
        *(
            plait.arun(f"question {n}", tools=[double], model=f"replay:{path}?ttft=0.01&tps=500")
            for n in range(8)
        )
    )
    assert [r.answer for r in results] == [f"answer {2 * n}" for n in range(8)]
    assert [r.tasks[0].result for r in results] == [2 * n for n in range(8)]


@pytest.mark.parametrize(
    "content", ['{"a": "not a list"}', '{"": ["x"]}', "[1, 2]", '"text"', '{"a": [1]}']
)
def test_bad_replay_files_are_one_line_errors(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(PlaitError, match="must hold a JSON list of strings, or an object"):
        ReplayLLM.from_spec(str(path))
