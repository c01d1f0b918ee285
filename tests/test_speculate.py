"""Speculative tasks (agent/speculate.py): what is guessed, adoption, cancellation."""

from __future__ import annotations

import asyncio
import time

import plait
from plait.agent.schema import Formula, Span
from plait.agent.speculate import (
    Guess,
    Speculator,
    draft_guesses,
    from_draft,
    from_question,
    from_template,
    question_literals,
)
from plait.core.scheduler import Scheduler
from plait.core.shared import SharedCalls
from plait.core.task import Task
from plait.llm.base import Request
from plait.llm.replay import ReplayLLM


class Gate:
    """A pure search whose calls wait for a release; it records what was called and what
    was cancelled."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.cancelled: list[str] = []
        self.entered: dict[str, asyncio.Event] = {}
        self.release = asyncio.Event()

        @plait.tool(pure=True)
        async def search(query: str) -> str:
            self.calls.append(query)
            self.entered.setdefault(query, asyncio.Event()).set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.append(query)
                raise
            return f"found {query}"

        @plait.tool
        async def send(message: str) -> str:  # impure: has an effect
            self.calls.append(f"send {message}")
            return "sent"

        @plait.tool(pure=True)
        def calculate(expression: Formula) -> float:
            return 1.0

        self.tools = plait.Tools([search, send, calculate])

    def entered_event(self, query: str) -> asyncio.Event:
        return self.entered.setdefault(query, asyncio.Event())


Q = 'Is the Eiffel Tower taller than the Statue of Liberty or "K2"?'


def test_question_literals_are_quoted_strings_and_names() -> None:
    assert question_literals(Q) == ["K2", "Eiffel Tower", "Statue of Liberty"]


def test_only_pure_tools_with_one_string_are_guessed_from_the_question() -> None:
    g = Gate()
    guesses = from_question(Q, g.tools)
    assert {x.tool for x in guesses} == {"search"}  # never `send`, nor a formula
    assert {x.kwargs["query"] for x in guesses if x.tool == "search"} == {
        "K2",
        "Eiffel Tower",
        "Statue of Liberty",
    }


def test_a_draft_plan_gives_its_pure_tasks_that_need_no_result() -> None:
    g = Gate()
    text = (
        '1. search("Eiffel Tower")\n2. send("hi")\n3. calculate("$1 * 2")\n'
        '4. search(query="K2")\n5. bogus line('
    )
    guesses = from_draft(text, g.tools)
    assert [(x.tool, x.kwargs) for x in guesses] == [
        ("search", {"query": "Eiffel Tower"}),
        ("search", {"query": "K2"}),
    ]
    assert all(x.source == "draft" for x in guesses)


def test_template_tasks_are_guessed_like_a_plan() -> None:
    g = Gate()
    tasks = [Task(1, "search", ("A",)), Task(2, "send", ("B",)), Task(3, "search", ("A",))]
    assert [x.kwargs for x in from_template(tasks, g.tools)] == [{"query": "A"}]


async def test_a_draft_model_s_tasks_are_handed_over_as_they_stream() -> None:
    g = Gate()
    llm = ReplayLLM(['Thought: two lookups\n1. search("Nile")\n2. search("Amazon")\n3. join()'])
    got: list[Guess] = []
    await draft_guesses(llm, Request([{"role": "user", "content": "q"}]), g.tools, got.append)
    assert [x.kwargs["query"] for x in got] == ["Nile", "Amazon"]


async def test_the_plan_adopts_a_speculated_call_in_flight() -> None:
    g = Gate()
    shared = SharedCalls()
    async with (
        Scheduler(g.tools, lambda e: None, time.perf_counter, shared=shared) as s,
        Speculator(g.tools, shared, s.backend.call) as spec,
    ):
        spec.start(from_question("Where is the Eiffel Tower?", g.tools))
        await g.entered_event("Eiffel Tower").wait()  # speculation is running the call
        task = Task(1, "search", (), {"query": "Eiffel Tower"})
        s.add(task)
        assert spec.confirm(task)
        spec.settle()
        g.release.set()
        await s.wait()
    assert s.results[1] == "found Eiffel Tower"
    assert g.calls == ["Eiffel Tower"]  # one call, made by the speculation
    assert g.cancelled == []
    assert (spec.stats.started, spec.stats.used, spec.stats.wasted) == (1, 1, 0)


async def test_the_plan_adopts_a_speculated_result() -> None:
    g = Gate()
    g.release.set()
    shared = SharedCalls()
    async with (
        Scheduler(g.tools, lambda e: None, time.perf_counter, shared=shared) as s,
        Speculator(g.tools, shared, s.backend.call) as spec,
    ):
        spec.start(from_question("Where is Paris?", g.tools))
        while spec.in_flight:
            await asyncio.sleep(0)
        task = Task(1, "search", ("Paris",))
        s.add(task)
        spec.confirm(task)
        await s.wait()
    assert g.calls == ["Paris"]
    assert s.results[1] == "found Paris"


async def test_unconfirmed_speculated_calls_are_cancelled_counted_and_never_results() -> None:
    g = Gate()
    shared = SharedCalls()
    async with (
        Scheduler(g.tools, lambda e: None, time.perf_counter, shared=shared) as s,
        Speculator(g.tools, shared, s.backend.call) as spec,
    ):
        spec.start(from_question(Q, g.tools))
        for name in ("K2", "Eiffel Tower", "Statue of Liberty"):
            await g.entered_event(name).wait()
        task = Task(1, "search", ("Eiffel Tower",))
        s.add(task)
        spec.confirm(task)
        spec.settle()  # the plan is complete: K2 and the Statue were wrong
        g.release.set()
        await s.wait()
    assert sorted(g.cancelled) == ["K2", "Statue of Liberty"]
    assert list(s.results) == [1]
    assert spec.stats.used == 1
    assert spec.stats.wasted == 2
    assert spec.stats.wasted_seconds >= 0


async def test_a_guess_for_an_impure_tool_is_never_started() -> None:
    g = Gate()
    shared = SharedCalls()
    async with Speculator(g.tools, shared, lambda tool, kw: asyncio.sleep(0)) as spec:
        spec.start(Guess("send", {"message": "hi"}, 'send:{"message":"hi"}', "draft"))
        assert spec.stats.started == 0
    assert g.calls == []


async def test_closing_leaves_no_speculated_call_running() -> None:
    g = Gate()
    shared = SharedCalls()
    spec = Speculator(g.tools, shared, lambda tool, kw: tool.invoke(kw))
    spec.start(from_question("Where is Rome?", g.tools))
    await g.entered_event("Rome").wait()
    await spec.aclose()
    assert g.cancelled == ["Rome"]
    assert spec.in_flight == []
    assert spec.stats.wasted == spec.stats.started


async def test_speculation_is_bounded() -> None:
    g = Gate()
    g.release.set()
    spec = Speculator(g.tools, SharedCalls(), lambda tool, kw: tool.invoke(kw), max_guesses=2)
    spec.start(from_question(Q, g.tools))
    assert spec.stats.started == 2
    await spec.aclose()


def test_phrase_tools_are_preferred_when_the_tools_mark_them() -> None:
    @plait.tool(pure=True)
    def lookup(name: Span) -> str:
        return name

    @plait.tool(pure=True)
    def shout(text: str) -> str:
        return text

    guesses = from_question("Where is Paris?", plait.Tools([lookup, shout]))
    assert [(x.tool, x.kwargs) for x in guesses] == [("lookup", {"name": "Paris"})]


async def test_the_run_s_events_confirm_and_settle() -> None:
    from plait.core import events as ev

    g = Gate()
    g.release.set()
    async with Speculator(g.tools, SharedCalls(), lambda tool, kw: tool.invoke(kw)) as spec:
        spec.start(from_question(Q, g.tools))
        spec.watch(ev.LLMStarted(0.0, 1, "planner", "m"))
        spec.watch(ev.TaskAdded(0.1, Task(1, "search", (), {"query": "K2"})))
        spec.watch(ev.TaskAdded(0.1, Task(2, "search", (), {"query": "Eiffel Tower"}), True))
        assert spec.stats.wasted == 0
        spec.watch(ev.LLMFinished(0.2, 1))
        assert (spec.stats.used, spec.stats.wasted) == (1, 2)  # a restored task confirms none
        spec.watch(ev.LLMStarted(0.3, 2, "planner", "m"))  # a replan: speculation is over
        spec.watch(ev.TaskAdded(0.4, Task(3, "search", (), {"query": "Statue of Liberty"})))
        assert spec.stats.used == 1


async def test_nothing_is_speculated_once_the_plan_is_complete() -> None:
    g = Gate()
    spec = Speculator(g.tools, SharedCalls(), lambda tool, kw: tool.invoke(kw))
    spec.settle()
    spec.start(from_question(Q, g.tools))  # a draft still streaming after the plan
    assert spec.stats.started == 0
    await spec.aclose()
