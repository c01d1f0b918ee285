"""Hostile questions and stores against the plan cache (agent/templates.py): a template
must never give a question a plan that does not fit it (a confident wrong answer), and a
stored template nobody could have learned must never crash a run or be run."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import plait
from plait.agent.parse import parse_plan
from plait.agent.samples import normalise, vote
from plait.agent.speculate import Speculator, guess
from plait.agent.templates import Template, TemplateCache, learn, scope
from plait.core.backend import ToolRaised
from plait.core.shared import SharedCalls
from plait.core.task import Task
from plait.stores.memory import MemoryStore

from .plaitproc import one_line
from .plaitproc import plait as plait_cli

EXAMPLE_TOOLS = str(Path(__file__).parents[2] / "examples" / "tools.py")


@plait.tool(pure=True)
def search(query: str) -> str:
    return query


@plait.tool(pure=True)
def extract_number(text: str) -> float:
    return 0.0


@plait.tool(pure=True)
def calculate(expression: str) -> float:
    return 0.0


TOOLS = plait.Tools([search, extract_number, calculate])


def plan(text: str) -> list[Task]:
    return parse_plan(text, tools=TOOLS)


def test_a_plan_using_the_questions_number_as_a_constant_too_teaches_nothing() -> None:
    """`100 / $2 * 100`: the second 100 is a percent, not the question's number; a template
    would answer "What is 50 divided by ..." with `50 / $2 * 50`."""
    t = learn(
        "What is 100 divided by the population of Iceland, in percent?",
        plan(
            '1. search("population of Iceland")\n2. extract_number($1)\n'
            '3. calculate("100 / $2 * 100")'
        ),
    )
    assert (
        t is None or t.fit("What is 50 divided by the population of Iceland, in percent?") is None
    )


def test_a_number_slot_never_takes_a_number_with_commas() -> None:
    t = learn(
        "What is 500 times the height of the Eiffel Tower?",
        plan('1. search("Eiffel Tower height")\n2. extract_number($1)\n3. calculate("$2 * 500")'),
    )
    assert t is not None
    assert t.fit("What is 1,000 times the height of the Eiffel Tower?") is None
    assert t.fit("What is 1e3 times the height of the Eiffel Tower?") is None
    assert t.fit("What is 1000 times the height of the Eiffel Tower?") == ["Eiffel Tower", "1000"]


def _row(tasks: object, slots: object = (("name", 1),)) -> str:
    return json.dumps(
        {"v": 1, "shape": ["how", "tall", "is", 0], "slots": slots, "question": "q", "tasks": tasks}
    )


def _task(
    args: object, id: object = 1, tool: object = "search", deps: tuple[int, ...] = ()
) -> dict[str, object]:
    return {"id": id, "tool": tool, "args": args, "kwargs": {"$map": {}}, "deps": list(deps)}


SLOT = {"$slot": [0]}
HOSTILE = {
    "nested past the recursion limit": '{"v": 1, "shape": ["how", "tall", "is", 0], '
    '"slots": [["name", 1]], "question": "q", "tasks": [{"id": 1, "tool": "search", "args": '
    + "[" * 100_000
    + "]" * 100_000
    + ', "kwargs": {"$map": {}}, "deps": []}]}',
    "no tasks": _row([]),
    "a reference to no task": _row([_task(["$7", SLOT], deps=(7,))]),
    "a join task": _row([_task([SLOT]), _task([], id=2, tool="join")]),
    "the question's text unused": _row([_task(["rm -rf"])]),
    "a slot with no place in the question": _row([_task([{"$slot": [-1]}])]),
    "two tasks with one id": _row([_task([SLOT]), _task(["x"])]),
    "a dependency on a later task": _row([_task([SLOT], deps=(2,)), _task(["x"], id=2)]),
    "NaN, which no plan text can write": _row([_task([SLOT, float("nan")])]),
}


@pytest.mark.parametrize("row", HOSTILE.values(), ids=HOSTILE.keys())
async def test_a_stored_template_no_plan_could_teach_is_passed_over(row: str) -> None:
    store = MemoryStore()
    store.put_calls(scope(TOOLS), [("t:0", row)])
    cache = TemplateCache.for_tools(TOOLS, store)
    assert await cache.match("How tall is Eiffel", TOOLS) is None
    # and a good one after it still works
    good = _row([_task([SLOT])])
    store.put_calls(scope(TOOLS), [("t:1", good)])
    fresh = TemplateCache.for_tools(TOOLS, store)
    m = await fresh.match("How tall is Eiffel", TOOLS)
    assert m is not None and m.tasks[0].args == ("Eiffel",)


# -- speculation ----------------------------------------------------------------------------


async def test_a_speculated_tool_raising_systemexit_fails_its_call_not_the_process() -> None:
    """The scheduler makes a tool's SystemExit its failure (ToolRaised); a speculated call
    of the same tool must too, or it stops the event loop and the whole run is lost."""
    shared = SharedCalls()
    gate = asyncio.Event()

    async def invoke(tool: object, kwargs: object) -> object:
        await gate.wait()
        raise SystemExit("tool exits")

    async def never() -> object:
        raise AssertionError("the plan's task adopts the speculated call")

    spec = Speculator(TOOLS, shared, invoke)
    g = guess(TOOLS, Task(1, "search", ("Eiffel Tower",)), "question")
    assert g is not None
    spec.start(g)
    while g.key not in shared._flying:  # the speculated call has claimed its key
        await asyncio.sleep(0)
    adopter = asyncio.create_task(shared.call(g.key, never))
    await asyncio.sleep(0)
    gate.set()
    with pytest.raises(ToolRaised) as raised:
        await adopter
    assert isinstance(raised.value.original, SystemExit)
    await spec.aclose()


async def test_a_speculated_call_that_failed_before_the_plan_wrote_it_is_wasted_not_used() -> None:
    """A failure is not kept in the shared calls, so the plan's task calls again: the
    speculated call was of no use and must be counted wasted."""

    async def invoke(tool: object, kwargs: object) -> object:
        raise ValueError("no such page")

    spec = Speculator(TOOLS, SharedCalls(), invoke)
    task = Task(1, "search", ("Eiffel Tower",))
    g = guess(TOOLS, task, "question")
    assert g is not None
    spec.start(g)
    while spec.in_flight:
        await asyncio.sleep(0)
    assert spec.confirm(task) is False
    await spec.aclose()
    assert (spec.stats.started, spec.stats.used, spec.stats.wasted) == (1, 0, 1)


# -- samples --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("330 metres", "330 feet"),
        ("5 m", "5 mi"),
        ("2.5 million", "2.5 billion"),
        ("237 metres", "23.7 metres"),
        ("-5", "5"),
    ],
)
def test_answers_with_different_units_or_words_after_a_number_stay_different(
    a: str, b: str
) -> None:
    assert normalise(a) != normalise(b)


async def test_two_attempts_in_different_units_do_not_agree() -> None:
    answers = ["330 metres", "330 feet"]

    async def attempt(i: int) -> str | None:
        return answers[i]

    result = await vote(attempt, 2, 2)
    assert result.decided_by != "agreement"


async def test_a_lone_number_agrees_with_one_unit_not_with_two_at_once() -> None:
    answers = ["330 metres", "330", "330 feet", "330 m"]

    async def attempt(i: int) -> str | None:
        return answers[i]

    result = await vote(attempt, 4, 4)  # no four agree: "330" backs metres or feet, not both
    assert (result.answer, result.decided_by) == ("330 metres", "majority")
    assert (await vote(attempt, 2, 2)).decided_by == "agreement"  # "330 metres" and "330"


def test_ten_thousand_samples_is_invalid_input_before_anything_runs(tmp_path) -> None:
    """Each attempt is a whole run at once: 10,000 of them is no sampling but a flood."""
    model = tmp_path / "r.json"
    model.write_text('["Action: Finish(1)"]')
    code, out, err = plait_cli(
        "run", "How tall?", "--tools", EXAMPLE_TOOLS, "--model", f"replay:{model}",
        "--samples", "10000",
    )  # fmt: skip
    assert code == 2 and out == ""
    assert "--samples" in one_line(err)
    with pytest.raises(plait.PlaitError, match="samples"):
        plait.run("How tall?", tools=TOOLS, model=f"replay:{model}", samples=10_000)


async def test_runs_of_one_shape_finishing_at_once_teach_one_template() -> None:
    """A batch's first runs of a shape all finish unmatched; each teaching its own copy
    would make a bad shape take twice as many replans per copy to be dropped."""
    store = MemoryStore()
    cache = TemplateCache.for_tools(TOOLS, store)
    learned = await asyncio.gather(
        *(
            cache.learn(f"How tall is the Tower Alpha{i}?", plan(f'1. search("Tower Alpha{i}")'))
            for i in range(5)
        )
    )
    assert sum(t is not None for t in learned) == 1
    fresh = TemplateCache.for_tools(TOOLS, store)
    await fresh.load()
    assert len(fresh.templates) == 1


UNIT_PLAN = '1. search("Eiffel Tower")\n2. extract_number($1, "metres")'
UNIT_Q = "How tall is the Eiffel Tower in metres?"


@pytest.mark.parametrize(
    "question",
    [
        "How tall is the Eiffel Tower in not metres?",
        "How tall is the Eiffel Tower in metres minus 5?",
        "How tall is the Eiffel Tower in metres and feet?",
        "How tall is the Eiffel Tower in metres or feet?",
        "How tall is the Eiffel Tower in 5 metres?",
    ],
)
def test_a_word_slot_never_takes_words_that_turn_it_around(question: str) -> None:
    """The plan reads one unit; "metres minus 5" in its place is a question it never
    answered (extract_number($1, "metres minus 5") would be another question's plan)."""
    t = learn(UNIT_Q, plan(UNIT_PLAN))
    assert t is not None
    assert t.fit("How tall is the Eiffel Tower in feet?") == ["Eiffel Tower", "feet"]
    assert t.fit(question) is None


@pytest.mark.parametrize("number", ["200.0.1", "015", "١٥", "１５", "2,5"])
def test_a_number_slot_takes_plain_decimals_only(number: str) -> None:
    t = learn("What is 15 percent of 200?", plan('1. calculate("200 * 15 / 100")'))
    assert t is not None
    assert t.fit("What is 15.5 percent of 200?") == ["200", "15.5"]
    assert t.fit(f"What is {number} percent of 200?") is None


def test_a_stored_shape_of_many_slots_side_by_side_is_not_read() -> None:
    """Twenty word slots in a row: fitting a question to it backtracks for ever (every run
    of the tool set would hang in `match`). No learned template has such a shape."""
    n = 20
    row = json.dumps(
        {
            "v": 1,
            "shape": [*range(n), "end"],
            "slots": [["text", 6]] * n,
            "question": "q",
            "tasks": [_task([{"$slot": list(range(n))}])],
        }
    )
    assert Template.from_json(row, 0) is None
    spaced = json.loads(row)
    spaced["shape"] = [0, "a", 1, "a", 2, "a", 3, "a", 4, "a", 5, "a", 6, "end"]
    spaced["slots"] = [["text", 1]] * 7
    spaced["tasks"] = [_task([{"$slot": list(range(7))}])]
    assert Template.from_json(json.dumps(spaced), 0) is None  # more slots than learned ever
