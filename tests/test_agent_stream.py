"""One model call is one stream of text (agent/loop.py `Agent._reply`): what its reader
stops early is still read for its usage, and a call is reported once however it ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import plait
from plait.core import events as ev
from plait.llm.base import Delta, Request, Usage

QUESTION = "How tall is the Eiffel Tower?"


class Scripted:
    """A model that streams each reply of its script as the given pieces, in call order."""

    name = "scripted"
    supports_json_schema = False

    def __init__(self, *replies: list[Delta]) -> None:
        self.replies = list(replies)
        self.requests: list[Request] = []

    async def stream(self, request: Request) -> AsyncIterator[Delta]:
        self.requests.append(request)
        for delta in self.replies.pop(0):
            yield delta


@pytest.fixture
def tools(example_tools: Path) -> plait.Tools:
    return plait.load_tools(str(example_tools))


async def test_a_plan_stopped_at_a_bad_line_keeps_its_usage_and_its_text_as_used(
    tools: plait.Tools,
) -> None:
    bad = [
        Delta('1. search("Eiffel Tower")\n'),
        Delta("2. no_such_tool(1)\n"),
        Delta("3. join()\n"),  # after the bad line: read for the usage, never used
        Delta(usage=Usage(40, 12)),
    ]
    good = [Delta('3. search("Eiffel Tower height")\n4. join()\n'), Delta(usage=Usage(50, 9))]
    llm = Scripted(bad, good, [Delta("Action: Finish(330 metres)")])
    events: list[ev.Event] = []
    result = await plait.arun(QUESTION, tools=tools, model=llm, on_event=events.append)
    assert result.status == "done" and result.answer == "330 metres"
    invalid = [e for e in events if isinstance(e, ev.PlanInvalid)]
    assert len(invalid) == 1 and "no_such_tool" in invalid[0].error
    assert result.llm_calls[0].usage == Usage(40, 12)  # drained: the report came last
    finished = [e for e in events if isinstance(e, ev.LLMFinished)]
    assert [e.call for e in finished] == [1, 2, 3]  # one report per call
    said = llm.requests[1].messages[-2]  # the replanner sees the plan as it was used
    assert said == {
        "role": "assistant",
        "content": '1. search("Eiffel Tower")\n2. no_such_tool(1)\n',
    }
    assert [t.id for t in result.tasks] == [1, 3]


class Lingering:
    """A model whose plan is complete (join()) but whose stream never ends after it."""

    name = "lingering"
    supports_json_schema = False

    def __init__(self, plan: str) -> None:
        self.plan = plan
        self.draining = asyncio.Event()  # set once the reader has stopped and reads on

    async def stream(self, request: Request) -> AsyncIterator[Delta]:
        yield Delta(self.plan)
        self.draining.set()
        await asyncio.Event().wait()
        yield Delta(usage=Usage(1, 1))  # pragma: no cover


async def test_a_cancel_while_the_rest_of_a_used_reply_is_read_keeps_the_reply(
    tools: plait.Tools,
) -> None:
    plan = '1. search("Eiffel Tower")\njoin()\n'
    llm = Lingering(plan)
    events: list[ev.Event] = []
    run = asyncio.create_task(plait.arun(QUESTION, tools=tools, model=llm, on_event=events.append))
    await llm.draining.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    finished = [e for e in events if isinstance(e, ev.LLMFinished)]
    # The run acted on the reply: a resume must replay it, not find it failed.
    assert [(e.call, e.error, e.text) for e in finished] == [(1, None, plan)]
