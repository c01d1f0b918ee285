"""The Python API (plait.api): aexecute/execute, arun/run, astream, and the agent loop
on the replay model."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import plait
from plait.core import events as ev
from plait.errors import PlanError
from plait.llm.base import Delta, LLMError, Request, Usage
from plait.llm.replay import ReplayLLM

PLAN = (
    "Thought: Both heights can be looked up at once.\n"
    '1. search("Eiffel Tower height")\n'
    '2. search("Statue of Liberty height")\n'
    '3. extract_number($1, unit="metres")\n'
    '4. extract_number($2, unit="metres")\n'
    '5. calculate("$3 - $4")\n'
    "6. join()\n"
    "<END_OF_PLAN>"
)
FINISH = "Thought: 330 - 93 = 237.\nAction: Finish(237 metres)"
QUESTION = "How much taller is the Eiffel Tower than the Statue of Liberty?"


@pytest.fixture
def tools(example_tools: Path) -> plait.Tools:
    return plait.load_tools(str(example_tools))


def kinds(events: list[ev.Event]) -> list[str]:
    return [type(e).__name__ for e in events]


# -- written plans ----------------------------------------------------------------------


async def test_aexecute_returns_a_typed_result(tools, example_plan):
    events: list[ev.Event] = []
    result = await plait.aexecute(example_plan.read_text(), tools=tools, on_event=events.append)
    assert isinstance(result, plait.RunResult)
    assert result.ok and result.status == "done"
    assert result.answer == "237.0"
    assert [t.id for t in result.tasks] == [1, 2, 3, 4, 5]
    assert all(isinstance(t, plait.TaskRecord) for t in result.tasks)
    assert result.task(5).result == 237.0
    with pytest.raises(KeyError):
        result.task(99)
    data = result.to_dict()
    assert {"run_id", "status", "answer", "tasks", "usage"} <= set(data)
    assert json.loads(result.to_json()) == data
    assert isinstance(events[0], ev.RunStarted)
    assert isinstance(events[-1], ev.RunFinished)
    assert events[-1].result.to_dict() == data
    assert kinds(events).count("TaskStarted") == 5
    assert kinds(events).count("TaskFinished") == 5


def test_execute_is_the_blocking_form():
    @plait.tool
    def double(n: int) -> int:
        return 2 * n

    result = plait.execute("1. double(4)\n2. double($1)\n3. join()", tools=[double], run_id="fixed")
    assert result.run_id == "fixed"
    assert result.answer == "16"
    assert [t.args for t in result.tasks] == [{"n": 4}, {"n": "$1"}]


async def test_aexecute_invalid_plan_raises_before_running():
    calls: list[int] = []

    @plait.tool
    def one(n: int) -> int:
        calls.append(n)
        return n

    with pytest.raises(PlanError, match="line 2"):
        await plait.aexecute("1. one(1)\n2. one(\n", tools=[one])
    assert calls == []


async def test_aexecute_failure_is_a_failed_result_not_an_exception():
    @plait.tool
    async def boom() -> None:
        raise ValueError("bad input")

    result = await plait.aexecute("1. boom()", tools=[boom])
    assert result.status == "failed" and not result.ok
    assert result.error == "task 1 (boom) failed: ValueError: bad input"


# -- questions on the replay model ----------------------------------------------------------


async def test_arun_answers_with_usage(tools):
    plan = PLAN.replace("6. join()\n", "")  # so the planner's stream ends and reports usage
    llm = ReplayLLM([plan, FINISH])
    result = await plait.arun(QUESTION, tools=tools, model=llm)
    assert result.status == "done"
    assert result.answer == "237 metres"
    assert result.task(5).result == 237.0
    assert len(llm.calls) == 2
    planner, joiner = result.llm_calls
    assert (planner.role, joiner.role) == ("planner", "joiner")
    for call, request, text in [(planner, llm.calls[0], plan), (joiner, llm.calls[1], FINISH)]:
        prompt = sum(len(m["content"]) for m in request.messages) // 4
        visible = text.split("<END_OF_PLAN>")[0]
        assert call.usage == plait.Usage(prompt, -(-len(visible) // 4))
    assert result.usage == planner.usage + joiner.usage
    # the planner saw the tools, the joiner saw the results
    system = llm.calls[0].messages[0]["content"]
    assert "search(query: str)" in system and "calculate(expression: str)" in system
    assert "330 metres" in llm.calls[1].messages[-1]["content"]


def test_run_is_the_blocking_form(tools):
    result = plait.run(QUESTION, tools=tools, model=ReplayLLM([PLAN, FINISH]))
    assert result.answer == "237 metres"


# -- the blocking forms where an event loop already runs (a Jupyter cell) -------------------


async def test_execute_works_inside_a_running_event_loop():
    asyncio.get_running_loop()  # this test body runs on a loop, as a notebook cell does

    @plait.tool
    async def double(n: int) -> int:
        return 2 * n

    result = plait.execute("1. double(4)\n2. double($1)\n3. join()", tools=[double])
    assert (result.status, result.answer) == ("done", "16")


async def test_run_and_resume_work_inside_a_running_event_loop(tools, tmp_path):
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    result = plait.run(QUESTION, tools=tools, model=ReplayLLM([PLAN, FINISH]), store=store)
    assert result.answer == "237 metres"
    again = plait.resume(result.run_id, tools=tools, store=store)
    assert (again.status, again.answer) == ("done", "237 metres")


async def test_a_blocking_call_inside_a_loop_raises_what_the_run_raised():
    @plait.tool
    def one() -> int:
        return 1

    with pytest.raises(PlanError, match="unknown tool"):
        plait.execute("1. nope()", tools=[one])


async def test_a_blocking_call_inside_a_loop_sees_the_callers_context_variables():
    import contextvars

    seen: list[str] = []
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    var.set("the caller's")

    @plait.tool
    async def look() -> str:
        seen.append(var.get())
        return "ok"

    assert plait.execute("1. look()", tools=[look]).ok
    assert seen == ["the caller's"]


# -- temperature and max_tokens --------------------------------------------------------------


async def test_arun_sends_every_request_at_the_temperature_and_bound_given(tools):
    llm = ReplayLLM([PLAN, FINISH])
    result = await plait.arun(QUESTION, tools=tools, model=llm, temperature=0.4, max_tokens=50)
    assert result.ok
    assert [(r.temperature, r.max_tokens) for r in llm.calls] == [(0.4, 50), (0.4, 50)]
    assert result.llm_calls[0].model == llm.name  # the run is labelled with the model's name


async def test_replan_sees_earlier_results_and_numbers_after_them(tools):
    llm = ReplayLLM(
        [
            '1. search("Eiffel Tower height")\n2. join()\n<END_OF_PLAN>',
            "Thought: one height only.\nAction: Replan(need the Statue of Liberty height)",
            '2. search("Statue of Liberty height")\n3. extract_number($1, unit="metres")\n'
            '4. extract_number($2, unit="metres")\n5. calculate("$3 - $4")\n6. join()\n',
            FINISH,
        ]
    )
    events: list[ev.Event] = []
    result = await plait.arun(QUESTION, tools=tools, model=llm, on_event=events.append)
    assert result.answer == "237 metres"
    assert result.replans == 1
    assert [e.reason for e in events if isinstance(e, ev.Replanning)] == [
        "need the Statue of Liberty height"
    ]
    second = llm.calls[2].messages[-1]["content"]
    conversation = "\n".join(m["content"] for m in llm.calls[2].messages)
    assert "330 metres" in conversation  # the result of task 1
    assert "numbered from 2" in second
    assert "need the Statue of Liberty height" in second
    assert result.task(3).result == 330.0
    # one conversation: each call's prompt starts with the whole previous call and its reply
    for before, after in zip(llm.calls, llm.calls[1:], strict=False):
        assert after.messages[: len(before.messages)] == before.messages
        assert after.messages[len(before.messages)]["role"] == "assistant"


async def test_replan_ids_must_come_after_earlier_tasks(tools):
    llm = ReplayLLM(
        [
            '1. search("Eiffel Tower height")\n2. join()\n',
            "Action: Replan(more)",
            '1. search("Statue of Liberty height")\n2. join()\n',  # reuses id 1
            '2. search("Statue of Liberty height")\n3. join()\n',
            FINISH,
        ]
    )
    result = await plait.arun(QUESTION, tools=tools, model=llm, max_replans=2)
    assert result.answer == "237 metres"
    assert "task id 1 is used twice" in llm.calls[3].messages[-1]["content"]
    assert [t.id for t in result.tasks] == [1, 2]


async def test_an_invalid_plan_is_shown_to_the_planner_and_fixed(tools):
    broken = '1. search("Eiffel Tower height"\n2. join()\n<END_OF_PLAN>'
    llm = ReplayLLM([broken, PLAN, FINISH])
    events: list[ev.Event] = []
    result = await plait.arun(QUESTION, tools=tools, model=llm, on_event=events.append)
    assert result.status == "done" and result.answer == "237 metres"
    invalid = [e.error for e in events if isinstance(e, ev.PlanInvalid)]
    assert len(invalid) == 1 and "line 1: unclosed parenthesis" in invalid[0]
    retry_prompt = llm.calls[1].messages[-1]["content"]
    assert "unclosed parenthesis" in retry_prompt
    assert [t.id for t in result.tasks] == [1, 2, 3, 4, 5]


async def test_a_plan_that_does_not_fit_the_tools_is_replanned(tools):
    wrong = "1. search(query=12)\n2. join()\n"
    llm = ReplayLLM([wrong, PLAN, FINISH])
    result = await plait.arun(QUESTION, tools=tools, model=llm)
    assert result.answer == "237 metres"
    assert "argument 'query'" in llm.calls[1].messages[-1]["content"]


async def test_max_replans_0_ends_without_an_answer(tools):
    llm = ReplayLLM(['1. search("Eiffel Tower height"\n', PLAN, FINISH])
    result = await plait.arun(QUESTION, tools=tools, model=llm, max_replans=0)
    assert result.status == "failed"
    assert result.answer is None
    assert "invalid plan" in result.error
    assert len(llm.calls) == 1


async def test_a_lost_planner_reply_is_retried_without_dispatching_twice(tools):
    calls = 0

    class Flaky:
        name = "flaky"
        supports_json_schema = False

        async def stream(self, request: Request) -> AsyncIterator[Delta]:
            nonlocal calls
            calls += 1
            if calls == 1:  # the planner's first attempt dies after task 1 was written
                yield Delta('1. search("Eiffel Tower height")\n2. sea')
                raise LLMError("connection reset", retryable=True)
            text = PLAN if calls == 2 else FINISH
            yield Delta(text)
            yield Delta("", Usage(10, 5))

    events: list[ev.Event] = []
    result = await plait.arun(
        QUESTION,
        tools=tools,
        model=Flaky(),
        on_event=events.append,
        retry=plait.RetryPolicy(attempts=2, base=0.0),
    )
    assert result.answer == "237 metres"
    assert [e.task.id for e in events if isinstance(e, ev.TaskAdded)] == [1, 2, 3, 4, 5]
    assert kinds(events).count("LLMRetrying") == 1
    assert result.llm_calls[0].retries == 1


# -- streaming -----------------------------------------------------------------------------


async def test_astream_yields_the_run_as_events(tools):
    seen: list[ev.Event] = []
    async for event in plait.astream(QUESTION, tools=tools, model=ReplayLLM([PLAN, FINISH])):
        seen.append(event)
    names = kinds(seen)
    assert names[0] == "RunStarted"
    assert names[-1] == "RunFinished"
    assert {"TaskStarted", "TaskFinished", "LLMToken", "LLMStarted", "LLMFinished"} <= set(names)
    tokens = "".join(e.text for e in seen if isinstance(e, ev.LLMToken) and e.call == 1)
    assert tokens.startswith("Thought: Both heights")
    final = seen[-1]
    assert isinstance(final, ev.RunFinished)
    assert final.result.answer == "237 metres"
    for i in range(1, 6):
        started = [k for k, e in enumerate(seen) if isinstance(e, ev.TaskStarted) and e.id == i]
        ended = [k for k, e in enumerate(seen) if isinstance(e, ev.TaskFinished) and e.id == i]
        assert len(started) == 1 and len(ended) == 1 and started[0] < ended[0]


async def test_astream_a_written_plan():
    @plait.tool
    async def hello(name: str) -> str:
        return f"hello {name}"

    seen = [e async for e in plait.astream(plan='1. hello("you")', tools=[hello])]
    assert kinds(seen)[-1] == "RunFinished"
    assert seen[-1].result.answer == "hello you"


async def test_astream_needs_exactly_one_of_question_and_plan():
    with pytest.raises(TypeError):
        async for _ in plait.astream(tools=[]):
            pass
    with pytest.raises(TypeError):
        async for _ in plait.astream("q", plan="1. x()", tools=[]):
            pass


async def test_astream_raises_an_invalid_plan():
    @plait.tool
    async def hello(name: str) -> str:
        return name

    with pytest.raises(PlanError, match="unclosed parenthesis"):
        async for _ in plait.astream(plan='1. hello("you"', tools=[hello]):
            pass
    assert {t for t in asyncio.all_tasks() if t is not asyncio.current_task()} == set()


async def test_leaving_astream_early_cancels_the_run():
    started = asyncio.Event()
    cancelled = asyncio.Event()

    @plait.tool
    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    stream = plait.astream(plan="1. forever()", tools=[forever])
    async for event in stream:
        if isinstance(event, ev.TaskStarted):
            break
    await stream.aclose()
    assert started.is_set() and cancelled.is_set()
    assert {t for t in asyncio.all_tasks() if t is not asyncio.current_task()} == set()


async def test_cancelling_a_run_reports_cancelled_and_leaves_nothing_running(tools):
    started = asyncio.Event()

    @plait.tool
    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    events: list[ev.Event] = []
    runner = asyncio.create_task(
        plait.aexecute("1. forever()\n2. forever()", tools=[forever], on_event=events.append)
    )
    async with asyncio.timeout(5):
        await started.wait()
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    final = events[-1]
    assert isinstance(final, ev.RunFinished)
    assert final.result.status == "cancelled"
    assert [t.status for t in final.result.tasks] == ["cancelled", "cancelled"]
    assert {t for t in asyncio.all_tasks() if t is not asyncio.current_task()} == set()


async def test_tasks_start_while_the_planner_is_still_writing(tools):
    # 4-character tokens at 100 tokens/s: the plan takes about 0.6 s to stream
    llm = ReplayLLM([PLAN, FINISH], tps=100)
    events: list[ev.Event] = []
    result = await plait.arun(QUESTION, tools=tools, model=llm, on_event=events.append)
    assert result.answer == "237 metres"
    first_start = next(k for k, e in enumerate(events) if isinstance(e, ev.TaskStarted))
    planner_end = next(
        k for k, e in enumerate(events) if isinstance(e, ev.LLMFinished) and e.call == 1
    )
    assert first_start < planner_end
    # task 1 was added the moment its line was complete, not at the end of the plan
    added = next(k for k, e in enumerate(events) if isinstance(e, ev.TaskAdded))
    text_before = "".join(e.text for e in events[:added] if isinstance(e, ev.LLMToken))
    assert text_before.count("\n") == 2  # the Thought line and task 1's line


async def test_a_task_finishes_before_the_planner_writes_the_next_line():
    """Handshake: the model will not write line 2 until task 1 has run."""
    ran = asyncio.Event()

    @plait.tool
    async def first() -> str:
        ran.set()
        return "one"

    @plait.tool
    async def second(x: str) -> str:
        return x + " two"

    class Waiting:
        name = "waiting"
        supports_json_schema = False

        def __init__(self) -> None:
            self.calls = 0

        async def stream(self, request: Request) -> AsyncIterator[Delta]:
            self.calls += 1
            if self.calls == 1:
                yield Delta("1. first()\n")
                async with asyncio.timeout(5):  # fails the run if task 1 was not dispatched
                    await ran.wait()
                yield Delta("2. second($1)\n3. join()\n")
            else:
                yield Delta("Action: Finish(done)")

    result = await plait.arun("q", tools=[first, second], model=Waiting())
    assert result.status == "done", result.error
    assert result.task(2).result == "one two"


def test_run_result_fields_match_the_cli(tools):
    result = plait.run(QUESTION, tools=tools, model=ReplayLLM([PLAN, FINISH]))
    data = result.to_dict()
    assert data["status"] == "done"
    assert data["answer"] == "237 metres"
    assert data["usage"]["total_tokens"] == (
        data["usage"]["prompt_tokens"] + data["usage"]["completion_tokens"]
    )
    for task in data["tasks"]:
        assert {"id", "tool", "args", "status", "result", "error", "started", "finished"} <= set(
            task
        )


def test_unknown_model_spec_is_a_plait_error(tools):
    with pytest.raises(plait.PlaitError, match="unknown model"):
        plait.run("q", tools=tools, model="nope:x")
