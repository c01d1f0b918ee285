"""The plan cache (agent/templates.py): learning, matching, slots, misses, persistence."""

from __future__ import annotations

import pytest

import plait
from plait.agent.parse import parse_plan
from plait.agent.templates import TemplateCache, fingerprint, learn, render, scope, tokens
from plait.core.task import Task
from plait.stores import open_store
from plait.stores.memory import MemoryStore


@plait.tool(pure=True)
def search(query: str) -> str:
    return query


@plait.tool(pure=True)
def calculate(expression: str) -> float:
    return 0.0


TOOLS = plait.Tools([search, calculate])

DIFF_PLAN = """\
1. search("Eiffel Tower")
2. search("Statue of Liberty")
3. calculate("$1 - $2")
4. join()"""
DIFF_Q = "How much taller is the Eiffel Tower than the Statue of Liberty?"


def plan(text: str) -> list[Task]:
    return parse_plan(text, tools=TOOLS)


def test_tokens_fold_case_and_keep_numbers_whole() -> None:
    assert [t.text for t in tokens("How TALL is K2, 8,611 m?")] == [
        "how", "tall", "is", "k2", ",", "8,611", "m", "?",
    ]  # fmt: skip


def test_learned_template_slots_the_question_phrases_and_keeps_the_rest() -> None:
    t = learn(DIFF_Q, plan(DIFF_PLAN))
    assert t is not None
    assert t.slots == [("name", 2), ("name", 3)]
    assert t.shape == ["how", "much", "taller", "is", "the", 0, "than", "the", 1, "?"]
    assert t.tasks[2]["args"] == ["$1 - $2"]  # references stay fixed


def test_a_new_question_of_the_same_shape_gets_its_own_phrases() -> None:
    t = learn(DIFF_Q, plan(DIFF_PLAN))
    assert t is not None
    q = "How much taller is the Burj Khalifa than the Tokyo Skytree?"
    values = t.fit(q)
    assert values == ["Burj Khalifa", "Tokyo Skytree"]
    tasks = t.instantiate(values)
    assert [(x.tool, x.args) for x in tasks] == [
        ("search", ("Burj Khalifa",)),
        ("search", ("Tokyo Skytree",)),
        ("calculate", ("$1 - $2",)),
    ]
    assert tasks[2].deps == frozenset({1, 2})


def test_a_question_of_another_shape_does_not_match() -> None:
    t = learn(DIFF_Q, plan(DIFF_PLAN))
    assert t is not None
    assert t.fit("How much shorter is the Burj Khalifa than the Tokyo Skytree?") is None
    assert t.fit("How much taller is the Burj Khalifa?") is None


def test_slots_are_filled_only_with_the_new_questions_text() -> None:
    """Whatever the new question says, a slot holds its text verbatim: never evaluated,
    never parsed, and only text of the kind the slot was learned from (a name here), so
    code, quotes and `$N` never fit."""
    t = learn(DIFF_Q, plan(DIFF_PLAN))
    assert t is not None
    assert t.fit('How much taller is the __import__("os") than the x"), delete("y?') is None
    assert t.fit("How much taller is the $3 than the Statue?") is None
    values = t.fit("How much taller is the Import Os than the Delete Y?")
    assert values == ["Import Os", "Delete Y"]
    tasks = t.instantiate(values)
    assert [x.args[0] for x in tasks[:2]] == values
    assert {x.tool for x in tasks} == {"search", "calculate"}
    # The text form reads back as the same tasks: the values stay string literals.
    again = plan(render(tasks))
    assert [(x.tool, x.args) for x in again] == [(x.tool, x.args) for x in tasks]


def test_a_text_slot_takes_words_only_and_never_many_more() -> None:
    t = learn("How many legs does a spider have?", plan('1. search("spider")'))
    assert t is not None and t.slots == [("text", 1)]
    assert t.fit("How many legs does a black widow spider have?") == ["black widow spider"]
    assert t.fit('How many legs does a x") or ("y have?') is None
    assert t.fit("How many legs does a one two three four five have?") is None


def test_a_name_slot_does_not_swallow_the_words_after_the_name() -> None:
    t = learn("How tall is the Amber Gate?", plan('1. search("Amber Gate")'))
    assert t is not None
    assert t.fit("How tall is the Golden Lighthouse?") == ["Golden Lighthouse"]
    assert t.fit("How tall is the Golden Lighthouse in feet?") is None


def test_a_name_slot_takes_no_function_word_and_no_two_names() -> None:
    """A name slot once took "And" (or "Than", "The") as a name, and "Eiffel Tower and Big
    Ben" as one: a plan for one landmark run on two, or on a word."""
    ask = "Which is taller, the {} or the {}?"
    t = learn(ask.format("Eiffel Tower", "Statue of Liberty"), plan(DIFF_PLAN))
    assert t is not None and t.slots == [("name", 2), ("name", 3)]
    assert t.fit(ask.format("Big Ben", "Tokyo Skytree")) == ["Big Ben", "Tokyo Skytree"]
    assert t.fit(ask.format("The Shard", "Statue of Liberty")) == ["The Shard", "Statue of Liberty"]
    for first in ["And", "AND", "Than", "The", "Of The", "Height", "Eiffel Tower and Big Ben"]:
        assert t.fit(ask.format(first, "Big Ben")) is None, first
    assert t.fit(ask.format("Big Ben", "Or")) is None
    assert t.fit(ask.format("Big Ben", "Tower & Bridge")) is None


def test_a_word_argument_next_to_a_name_stays_fixed() -> None:
    """`extract_number($1, "built")` after search("Amber Gate") would make "built" a slot
    right after the name's: ambiguous, so only the name is a slot."""
    tasks = [Task(1, "search", ("Amber Gate",)), Task(2, "calculate", ("built",))]
    t = learn("When was the Amber Gate built?", tasks)
    assert t is not None
    assert t.shape == ["when", "was", "the", 0, "built", "?"]
    assert t.fit("When was the Cobalt Pagoda built?") == ["Cobalt Pagoda"]


def test_a_number_slot_takes_a_number() -> None:
    t = learn("What is 15 percent of 200?", plan('1. calculate("200 * 15 / 100")'))
    assert t is not None
    assert t.fit("What is 20 percent of 3000?") == ["3000", "20"]  # slots in plan order
    assert t.instantiate(["3000", "20"])[0].args == ("3000 * 20 / 100",)
    assert t.fit("What is 20 percent of 3,000?") is None  # "3,000 * 20" is no arithmetic
    assert t.fit("What is twenty percent of 3,000?") is None


async def test_the_most_specific_template_wins() -> None:
    cache = TemplateCache.for_tools(TOOLS)
    await cache.learn("How tall is the Amber Gate?", plan('1. search("Amber Gate")'))
    await cache.learn(
        "How tall is the Amber Gate in feet, roughly?",
        plan('1. search("Amber Gate")\n2. calculate("$1 * 3.28")'),
    )
    m = await cache.match("How tall is the Iron Arch in feet, roughly?")
    assert m is not None and len(m.tasks) == 2
    m = await cache.match("How tall is the Iron Arch?")
    assert m is not None and len(m.tasks) == 1


def test_a_phrase_inside_a_longer_argument_is_a_slot_when_it_names_something() -> None:
    t = learn("How tall is the Eiffel Tower?", plan('1. search("Eiffel Tower height")'))
    assert t is not None
    values = t.fit("How tall is the Tokyo Skytree?")
    assert values == ["Tokyo Skytree"]
    assert t.instantiate(values)[0].args == ("Tokyo Skytree height",)


def test_a_plan_with_nothing_of_the_question_is_a_template_of_that_question_only() -> None:
    t = learn("What is the answer to everything?", plan('1. search("forty-two")'))
    assert t is not None and t.slots == []
    assert t.fit("what is the answer  to everything ?") == []
    assert t.fit("What is the answer to nothing?") is None


def test_a_shape_that_would_match_almost_anything_is_not_learned() -> None:
    assert learn("Eiffel Tower?", plan('1. search("Eiffel Tower")')) is None


def test_dict_arguments_are_kept_and_never_taken_for_slots() -> None:
    @plait.tool(pure=True)
    def lookup(where: dict) -> str:  # type: ignore[type-arg]
        return ""

    tools = plait.Tools([lookup])
    tasks = parse_plan('1. lookup({"$slot": [0], "name": "Paris"})', tools=tools)
    t = learn("Where is the city of Paris?", tasks)
    assert t is not None
    got = t.instantiate(t.fit("Where is the city of Rome?") or [])
    assert got[0].args == ({"$slot": [0], "name": "Rome"},)


async def test_cache_hits_learned_templates_and_drops_after_repeated_misses() -> None:
    cache = TemplateCache.for_tools(TOOLS, MemoryStore(), max_misses=2)
    assert await cache.match(DIFF_Q) is None
    assert await cache.learn(DIFF_Q, plan(DIFF_PLAN)) is not None
    assert await cache.learn(DIFF_Q, plan(DIFF_PLAN)) is None  # already answered
    q = "How much taller is the Burj Khalifa than the Tokyo Skytree?"
    m = await cache.match(q, TOOLS)
    assert m is not None and m.values == ["Burj Khalifa", "Tokyo Skytree"]
    cache.hit(m)
    await cache.miss(m)
    assert await cache.match(q) is not None  # one miss: still live
    await cache.miss(m)
    assert await cache.match(q) is None  # dropped
    assert (cache.stats.hits, cache.stats.misses, cache.stats.dropped) == (1, 2, 1)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_templates_and_misses_outlive_the_process_in_the_store(tmp_path, kind) -> None:
    url = "memory://" if kind == "memory" else f"sqlite:///{tmp_path / 'runs.db'}"
    store = open_store(url) if kind == "sqlite" else MemoryStore()
    try:
        first = TemplateCache.for_tools(TOOLS, store)
        await first.learn(DIFF_Q, plan(DIFF_PLAN))
        q = "How much taller is the Burj Khalifa than the Tokyo Skytree?"
        m = await first.match(q)
        assert m is not None
        await first.miss(m)
        second = TemplateCache.for_tools(TOOLS, store)  # a new process, the same store
        m2 = await second.match(q)
        assert m2 is not None and m2.template.misses == 1
        await second.miss(m2)
        third = TemplateCache.for_tools(TOOLS, store)
        assert await third.match(q) is None
        # Another tool set sees none of them.
        other = TemplateCache.for_tools(plait.Tools([search]), store)
        assert await other.match(DIFF_Q) is None
    finally:
        store.close()


async def test_two_writers_racing_for_one_place_both_keep_their_template() -> None:
    store = MemoryStore()
    a = TemplateCache.for_tools(TOOLS, store)
    b = TemplateCache.for_tools(TOOLS, store)
    await a.load()
    await b.load()
    await a.learn(DIFF_Q, plan(DIFF_PLAN))
    other = "What is the sum of the Eiffel Tower and the Statue of Liberty?"
    await b.learn(other, plan(DIFF_PLAN.replace("-", "+")))
    fresh = TemplateCache.for_tools(TOOLS, store)
    await fresh.load()
    assert len(fresh.templates) == 2


async def test_a_template_whose_plan_no_longer_fits_the_tools_is_not_used() -> None:
    cache = TemplateCache.for_tools(TOOLS)
    await cache.learn(DIFF_Q, plan(DIFF_PLAN))
    narrower = plait.Tools([search])
    assert await cache.match("How much taller is the A B than the C D?", narrower) is None


def test_the_fingerprint_changes_with_a_signature() -> None:
    @plait.tool(pure=True, name="search")
    def search2(query: str, limit: int = 3) -> str:
        return query

    assert fingerprint(TOOLS) != fingerprint(plait.Tools([search2, calculate]))
    assert scope(TOOLS).startswith("plan-template:")


def test_a_long_question_neither_teaches_nor_matches() -> None:
    long_q = "How tall is the Eiffel Tower " + "and so on " * 100 + "?"
    assert learn(long_q, plan('1. search("Eiffel Tower")')) is None
    t = learn("How tall is the Eiffel Tower?", plan('1. search("Eiffel Tower")'))
    assert t is not None
    assert t.fit("How tall is the " + "Very " * 2000 + "Tower?") is None  # no recursion error


async def test_a_corrupt_template_in_the_store_is_passed_over() -> None:
    store = MemoryStore()
    good = learn(DIFF_Q, plan(DIFF_PLAN))
    assert good is not None
    bad = good.to_json().replace('"tool": "search"', '"toolz": "search"', 1)
    odd = good.to_json().replace('"the", 1, "?"', '"the", -1, "?"', 1)
    assert odd != good.to_json()
    store.put_calls(
        scope(TOOLS),
        [("t:0", bad), ("t:1", "not json"), ("t:2", good.to_json()), ("t:3", odd)],
    )
    cache = TemplateCache.for_tools(TOOLS, store)
    m = await cache.match("How much taller is the Burj Khalifa than the Tokyo Skytree?")
    assert m is not None and m.template.number == 2


def test_a_reference_s_number_is_never_a_slot() -> None:
    """ "$12" in a plan is task 12's result whatever the question's "12" is: a slot there
    would let a new question's number point the plan at another task."""
    t = learn("What is twice the result of task 12?", [Task(1, "calculate", ("$12 * 2",))])
    assert t is not None and t.slots == []
    assert t.fit("What is twice the result of task 3?") is None
    assert t.instantiate([])[0].args == ("$12 * 2",)
