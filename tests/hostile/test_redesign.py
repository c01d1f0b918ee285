"""Hostile checks of the redesign (issue 15): the fast paths against the general ones they
stand in for, and durable runs whose records must read back as they were written."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import plait
from plait.runs.runlog import Restored
from plait.stores import open_store


def test_a_result_too_large_to_read_back_fails_its_task_instead_of_breaking_the_run(
    tmp_path: Path,
) -> None:
    # An int of 5,000 digits encodes to JSON, but no decoder reads it back (Python's and
    # pydantic_core's stop at 4,300 digits): recorded as done, it made the run's log
    # unreadable, so `plait resume` and `plait show` ended in an internal error.
    @plait.tool
    def big() -> int:
        return 10**5000

    @plait.tool
    def small() -> int:
        return -(10**4298)  # 4,299 digits and a sign: still read back

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    result = plait.execute("1. big()\n2. small()\n", tools=[big, small], store=url, run_id="r")
    tasks = {t.id: t for t in result.tasks}
    assert tasks[1].status == "failed"
    assert "result cannot be stored" in (tasks[1].error or "")
    assert (tasks[2].status, tasks[2].result) == ("done", -(10**4298))
    store = open_store(url)
    try:
        restored = Restored(store.records("r"))  # raised ValueError before
    finally:
        store.close()
    assert restored.tasks[2][1] is not None and restored.tasks[2][1].result == -(10**4298)


# -- the simple plan line against the general reader -------------------------------------

_SIMPLE_TOKENS = [
    '"a"', '""', '"$1"', '"x $1"', '"$١"', '"\U0001f600"', '"\x7f"', '"\u2028"', '"\t"', '"é"',
    '"\\"', "$1", "${1}", "$01", "${01}", "$١", "$2", "$0", "$1234567890123456789",
    "$123456789012345678", "0", "-0", "1", "-1", "00", "123456789012345678",
    "-123456789012345678", "1234567890123456789", "1٢", "٣", "True", "False", "None", "true",
    "null", "[", "]", ",", ",", ", ", " ", "\t", "1.5", "x=1",
]  # fmt: skip


def _read(line: str, general: bool) -> object:
    """The tasks `line` gives after a first task (or the error), read the simple way when it
    can be, or always the general way."""
    import re

    from plait.agent import parse
    from plait.errors import PlanError

    saved = parse._SIMPLE_LINE
    if general:
        parse._SIMPLE_LINE = re.compile(r"(?!x)x")  # matches nothing
    try:
        tasks = parse.parse_plan("1. a()\n" + line, tools={"f"})
        return [(t.id, t.tool, repr(t.args), repr(t.kwargs), t.deps, t.line) for t in tasks]
    except PlanError as e:
        return str(e)
    finally:
        parse._SIMPLE_LINE = saved


@pytest.mark.parametrize("line", ['1. f("$1")', "1. f($1)", "1. f(${1}, 2)", '1. f("a $1")'])
def test_a_repeated_id_is_the_same_error_whichever_reader_reads_the_line(line: str) -> None:
    # The simple line checked its references before its id: "task 1 references $1, which
    # is not an earlier task" where the general reader says the id is used twice.
    assert _read(line, general=False) == _read(line, general=True)
    assert _read(line, general=False) == "line 2: task id 1 is used twice"


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(st.sampled_from(_SIMPLE_TOKENS), max_size=8),
    st.sampled_from(["2. f(", "2.f(", " 2. f(", "2. f (", "3. f(", "1. f(", "2. join("]),
    st.sampled_from([")", ") ", ")\t", "),"]),
)
def test_a_simple_plan_line_reads_as_the_general_reader_reads_it(
    tokens: list[str], head: str, tail: str
) -> None:
    line = head + "".join(tokens) + tail
    assert _read(line, general=False) == _read(line, general=True)


# -- validation without pydantic against pydantic -----------------------------------------

_ANNOTATIONS: dict[str, Any] = {
    "int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict,
    "None": type(None), "Any": Any, "object": object, "int|None": int | None,
    "int|str": int | str, "str|int": str | int, "float|int": float | int, "bool|int": bool | int,
    "list[int]": list[int], "dict[str,int]": dict[str, int], "tuple": tuple,
    "Literal": Literal["a", 1], "float|None": float | None, "str|list": str | list,
}  # fmt: skip
_VALUES = [True, False, 0, 1, -1, 2**70, "3", "x", "", 3.0, 3.5, -0.0, None, [], [1], {"a": 1}]
_DEFAULTS = [..., None, 5, "d", 2.5, True, [1]]


@pytest.mark.parametrize("name", sorted(_ANNOTATIONS))
def test_validation_skipping_pydantic_gives_what_pydantic_gives(name: str) -> None:
    for default in _DEFAULTS:
        namespace = {"ann": _ANNOTATIONS[name], "default": default}
        given_default = "" if default is ... else " = default"
        exec(f"def f(a: ann{given_default}, b: int = 7): return a", namespace)
        fast, slow = plait.Tool(namespace["f"]), plait.Tool(namespace["f"])
        slow._fills = False  # every call through the arguments model
        for value in _VALUES:
            for arguments in ({"a": value}, {"a": value, "b": 1}, {"b": value}, {}):
                assert _outcome(fast, arguments) == _outcome(slow, arguments), (name, default)


def _outcome(tool: plait.Tool, arguments: dict[str, Any]) -> object:
    try:
        out = tool.validate(arguments)
    except ValueError as e:
        return str(e)
    return sorted((k, type(v).__name__, repr(v)) for k, v in out.items())


def test_a_result_with_no_str_still_reads_as_text() -> None:
    # Python gives no str() of an int of 4,300+ digits: the text of such a result (a written
    # plan's answer, `$1` inside a string) raised ValueError out of plait.execute.
    from plait.core.task import result_text

    huge = 10**5000

    @plait.tool
    def big() -> int:
        return huge

    @plait.tool
    def head(text: str) -> str:
        return text[:8]

    result = plait.execute('1. big()\n2. head("v=$1")\n', tools=[big, head])
    assert result.status == "done", result.error
    assert result.answer == "v=100000"
    assert plait.execute("1. big()\n", tools=[big]).answer == "1" + "0" * 5000
    assert result_text([huge, "a"]) == "[1" + "0" * 5000 + ',"a"]'
    assert result_text([1, "a"]) == '[1, "a"]'  # as before: json.dumps's text


@pytest.mark.parametrize("arguments", ["1٢", "1.٥", "[1, 2٣]", "x=1٢", "1e٣"])
def test_digits_of_other_scripts_read_as_python_reads_them(
    arguments: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The literal reader that spares `ast` took any Unicode digit after an ASCII one
    # (int("1٢") is 12), where Python's own reader sees no number: `f(1٢)` ran f(12).
    from plait.agent import parse

    line = f"1. f({arguments})"

    def read() -> object:
        try:
            return [(t.args, t.kwargs) for t in parse.parse_plan(line)]
        except plait.PlanError as e:
            return str(e)

    fast = read()

    def only_ast(raw: str) -> object:
        raise parse._NotSimple

    monkeypatch.setattr(parse, "_fast_arguments", only_ast)
    assert fast == read()


async def test_a_batch_keeps_only_call_results_it_can_read_back(tmp_path: Path) -> None:
    from plait.batch import StoredCalls

    store = open_store(f"sqlite:///{tmp_path / 'runs.db'}")
    try:
        calls = StoredCalls(store, "b")
        await calls.put("big", 10**5000)  # encodes, but no decoder reads it back
        assert await calls.get("big") == (False, None)
        await calls.put("small", 7)
        assert await calls.get("small") == (True, 7)
        store.put_calls("b", [("kept-before", "1" * 5000)])  # what an older version kept
        assert await calls.get("kept-before") == (False, None)  # was: ValueError
    finally:
        store.close()
