"""`plait run --model openai:…` against a real llama-cpp-python server on loopback.

SmolLM2-135M is tiny: these assert the pipeline (valid plans, tasks run, usage, statuses,
exit codes), not the answers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from llamaserver import EXAMPLE_TOOLS

import plait
from plait.cli.main import main
from plait.core import events as ev
from plait.llm.base import Delta, Request
from plait.llm.openai import OpenAILLM

pytestmark = pytest.mark.real_llm
TOOL_NAMES = {"search", "extract_number", "calculate", "which_larger"}
QUESTION = "How much taller is the Eiffel Tower than the Statue of Liberty?"


def test_cli_run_streams_plans_joins_and_counts_usage(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main(["run", QUESTION, "--model", "openai:smollm2", "--base-url", server,
              "--tools", EXAMPLE_TOOLS, "--json"])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert e.value.code == (0 if out["status"] == "done" else 1), out
    assert out["status"] == "done", out
    assert out["tasks"] and {t["tool"] for t in out["tasks"]} <= TOOL_NAMES
    assert all(t["status"] in ("done", "failed", "skipped") for t in out["tasks"])
    roles = [c["role"] for c in out["usage"]["calls"]]
    assert roles[0] == "planner" and "joiner" in roles  # the joiner ran
    joiner = out["usage"]["calls"][roles.index("joiner")]
    assert joiner["prompt_tokens"] > 0 and joiner["completion_tokens"] > 0
    assert out["usage"]["prompt_tokens"] > 0 and out["usage"]["completion_tokens"] > 0


async def test_constrained_plan_streams_task_by_task(server: str) -> None:
    seen: list[Any] = []
    result = await plait.arun(QUESTION, tools=EXAMPLE_TOOLS, model="openai:smollm2",
                              base_url=server, on_event=seen.append)  # fmt: skip
    tokens = [e for e in seen if isinstance(e, ev.LLMToken) and e.call == 1]
    plan = "".join(t.text for t in tokens)
    assert plan.lstrip().startswith("{"), plan  # the JSON form, under the schema
    assert '"tool": "join"' in plan  # the agent stops reading right after the join task
    assert result.tasks and {t.tool for t in result.tasks} <= TOOL_NAMES
    assert len(tokens) > 5  # streamed, not one blob
    first_added = next(e.t for e in seen if isinstance(e, ev.TaskAdded))
    assert first_added < tokens[-1].t  # dispatched before the plan finished streaming


class ForceReplanOnce:
    """The real server model, but the first joiner reply is constrained (by the server's
    grammar) to `Action: Replan(...)`, so a replan round happens for real."""

    def __init__(self, inner: OpenAILLM) -> None:
        self.inner = inner
        self.name = inner.name
        self.requests: list[Request] = []
        self.forced = False

    @property
    def supports_json_schema(self) -> bool:
        return True

    async def stream(self, request: Request) -> AsyncIterator[Delta]:
        self.requests.append(request)
        joiner = request.json_schema is None or "tasks" not in request.json_schema.get(
            "properties", {}
        )
        if joiner and not self.forced:
            self.forced = True
            request = Request(
                request.messages,
                json_schema={
                    "type": "string",
                    "pattern": "^Thought: [a-z ]{1,20} Action: Replan[(]search more[)]$",
                },
                session=request.session,
                max_tokens=40,
            )
        async for d in self.inner.stream(request):
            yield d


async def test_replan_round(server: str) -> None:
    llm = ForceReplanOnce(OpenAILLM("smollm2", base_url=server))
    seen: list[Any] = []
    result = await plait.arun(QUESTION, tools=EXAMPLE_TOOLS, model=llm, max_replans=1,
                              on_event=seen.append)  # fmt: skip
    assert any(isinstance(e, ev.Replanning) for e in seen), result
    planners = [r for r in llm.requests if r.json_schema and "tasks" in r.json_schema.get(
        "properties", {})]  # fmt: skip
    assert len(planners) == 2
    first_ids = [t.id for t in result.tasks if t.id < 100]
    second_start = planners[1].json_schema["$defs"]["task-0"]["anyOf"][0]["properties"]["id"]
    assert second_start["const"] > min(first_ids)  # the replan numbers after earlier tasks
    assert len({t.id for t in result.tasks}) == len(result.tasks)
    assert result.status in ("done", "failed")
    assert all(r.session == llm.requests[0].session for r in llm.requests)  # one run, one key
