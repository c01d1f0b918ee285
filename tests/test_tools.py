"""Tools (plait.core.tools): schemas from signatures, binding checks, validation, loading."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Literal

import pytest

import plait
from plait.agent.parse import parse_plan
from plait.core.task import Task
from plait.core.tools import Tool, Tools, tool
from plait.errors import PlanError, ToolError
from plait.runs.loading import as_tools, load_tools


@tool
def search(query: str, k: int = 3, tags: list[str] | None = None, *, exact: bool = False) -> str:
    """Look something up.

    A longer explanation the planner does not need.
    """
    return query


@tool(max_concurrency=2, timeout=1.5, retries=3, retry_backoff=0.5)
async def fetch(url: str, mode: Literal["text", "json"] = "text") -> str:
    return url


def test_tool_keeps_its_options_and_still_calls():
    assert isinstance(search, Tool) and isinstance(fetch, Tool)
    assert search.name == "search"
    assert search.description == "Look something up."
    assert not search.is_async and fetch.is_async
    assert (fetch.max_concurrency, fetch.timeout, fetch.retries, fetch.retry_backoff) == (
        2,
        1.5,
        3,
        0.5,
    )
    assert (search.max_concurrency, search.timeout, search.retries) == (None, None, 0)
    assert search("x") == "x"
    assert asyncio.run(fetch("u")) == "u"


def test_schema_from_signature():
    schema = search.schema()
    assert schema["type"] == "object"
    assert schema["required"] == ["query"]
    assert schema["additionalProperties"] is False
    props = schema["properties"]
    assert list(props) == ["query", "k", "tags", "exact"]
    assert props["query"] == {"type": "string"}
    assert props["k"] == {"type": "integer", "default": 3}
    assert props["tags"]["anyOf"] == [
        {"type": "array", "items": {"type": "string"}},
        {"type": "null"},
    ]
    assert props["exact"] == {"type": "boolean", "default": False}
    assert fetch.schema()["properties"]["mode"]["enum"] == ["text", "json"]


def test_string_annotations_resolve_in_the_tools_module():
    # this file uses `from __future__ import annotations`: hints are strings naming its imports
    with pytest.raises(PlanError, match="argument 'mode'"):
        bind(fetch, '1. fetch("u", mode="xml")')
    assert bind(fetch, '1. fetch("u", mode="json")') == {"url": "u", "mode": "json"}


def test_unresolvable_type_hints_are_a_tool_error():
    def bad(x: NoSuchType) -> None:  # type: ignore[name-defined]  # noqa: F821
        pass

    with pytest.raises(ToolError, match="tool bad: cannot read its type hints: NameError"):
        tool(bad)


class Point:
    """A plain class (not pydantic): tools may pass such objects between them."""

    def __init__(self, x: int) -> None:
        self.x = x


async def test_plain_classes_pass_between_tools_and_literals_cannot_fit_them():
    @tool
    def make(x: int) -> Point:
        return Point(x)

    @tool
    def norm(p: Point) -> int:
        return p.x

    result = await plait.aexecute("1. make(3)\n2. norm($1)", tools=[make, norm])
    assert result.status == "done"
    assert result.answer == "3"
    with pytest.raises(PlanError, match="argument 'p': Input should be an instance of Point"):
        await plait.aexecute("1. norm(5)", tools=[norm])


def test_schema_of_untyped_and_var_keyword_tools():
    @tool
    def loose(x, **extra):
        return x

    schema = loose.schema()
    assert schema["required"] == ["x"]
    assert schema["properties"]["x"] == {}
    assert schema["additionalProperties"] is True


def test_parameter_names_that_clash_with_pydantic_do_not_break():
    @tool
    def odd(json: str, copy: int = 1, schema: str = "s") -> str:
        return json * copy

    assert list(odd.schema()["properties"]) == ["json", "copy", "schema"]
    assert odd.validate({"json": "ab", "copy": "2"}) == {"json": "ab", "copy": 2, "schema": "s"}


def test_signature_for_the_prompt():
    assert search.signature() == (
        "search(query: str, k: int = 3, tags: list[str] | None = None, *, exact: bool = False)"
    )


@tool
async def total(*inputs: int) -> int:
    return sum(inputs)


@tool
def shape(a: int, /, b: int = 2, *, c: int = 3) -> int:
    return a * 100 + b * 10 + c


def test_signature_marks_positional_only_and_varargs():
    assert total.signature() == "total(*inputs: int)"
    assert shape.signature() == "shape(a: int, /, b: int = 2, *, c: int = 3)"


def test_varargs_and_positional_only_receive_their_arguments():
    plan = "1. total(1, 2)\n2. total($1, 5)\n3. shape(1, c=$1)\n4. total()\n5. shape(4)\n"
    result = plait.execute(plan, tools=[total, shape])
    assert [t.result for t in result.tasks] == [3, 8, 123, 0, 423]
    assert result.task(2).args == {"inputs": ["$1", 5]}


def test_varargs_items_are_checked_before_the_run():
    with pytest.raises(PlanError, match="inputs"):
        plait.execute('1. total(1, "x")', tools=[total])


def test_bad_options():
    with pytest.raises(ToolError, match="max_concurrency"):
        tool(max_concurrency=0)(lambda: None)
    with pytest.raises(ToolError, match="retries"):
        tool(retries=-1)(lambda: None)


# -- binding: checks that need no results ---------------------------------------------


def bind(tool_: Tool, line: str, known: set[int] = frozenset()) -> dict[str, object]:
    (task,) = parse_plan(line, known=known)
    return Tools([tool_]).prepare(task).kwargs


def test_bind_names_every_argument():
    assert bind(search, '1. search("a", 5, exact=True)') == {"query": "a", "k": 5, "exact": True}
    assert bind(search, "1. search(In Cold Blood)") == {"query": "In Cold Blood"}
    assert bind(search, "2. search($1, tags=[$1])", {1}) == {"query": "$1", "tags": ["$1"]}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("1. nothere(1)", "task 1: unknown tool 'nothere' (tools: search)"),
        ("1. search()", "missing argument 'query'"),
        ("1. search(k=2)", "missing argument 'query'"),
        ('1. search("a", colour="red")', "unknown argument 'colour'"),
        ('1. search("a", query="b")', "argument 'query' given twice"),
        ('1. search("a", 1, None, True)', "takes 3 positional arguments, 4 given"),
        ("1. search(42)", "argument 'query': Input should be a valid string"),
        ('1. search("a", k="many")', "argument 'k': Input should be a valid integer"),
        ('1. search("a", tags=[1, 2])', "argument 'tags'"),
        ('1. search("a", exact="perhaps")', "argument 'exact'"),
    ],
)
def test_bind_errors(line, message):
    with pytest.raises(PlanError) as info:
        bind(search, line)
    assert message in str(info.value)
    assert info.value.line == 1
    assert "\n" not in str(info.value)


def test_bind_defers_references_to_call_time():
    # `k` must be an int; a reference could be one, so it is checked when the call is made
    assert bind(search, '2. search("a", k=$1)', {1}) == {"query": "a", "k": "$1"}


def test_bare_text_must_fit_the_schema():
    @tool
    def count(n: int) -> int:
        return n

    with pytest.raises(PlanError, match="argument 'n'"):
        bind(count, "1. count(In Cold Blood)")


def test_validation_coerces_at_call_time():
    assert search.validate({"query": "q", "k": "7"}) == {
        "query": "q",
        "k": 7,
        "tags": None,
        "exact": False,
    }
    with pytest.raises(ValueError, match="invalid arguments for search"):
        search.validate({"query": "q", "k": "seven"})


async def test_results_are_validated_and_coerced_before_the_call():
    got: list[object] = []

    @tool
    async def digits() -> str:
        return "42"

    @tool
    def take(n: int, ratio: float = 0.0) -> int:
        got.append((n, ratio))
        return n

    result = await plait.aexecute("1. digits()\n2. take($1, ratio=$1)\n", tools=[digits, take])
    assert result.status == "done"
    assert got == [(42, 42.0)]
    assert type(got[0][0]) is int


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("3. missing_tool()", "unknown tool"),
        ("3. record()", "missing argument 'name'"),
        ('3. record("x", colour=1)', "unknown argument 'colour'"),
        ("3. record(123)", "argument 'name'"),
        ("3. record($9)", "not an earlier task"),
        ('3. record("x"', "unclosed parenthesis"),
    ],
)
async def test_a_plan_that_can_never_fit_is_rejected_before_anything_runs(bad_line, message):
    calls: list[str] = []

    @tool
    def record(name: str) -> str:
        calls.append(name)
        return name

    plan = f'1. record("a")\n2. record("b")\n{bad_line}\n4. record("$1")\n'
    with pytest.raises(PlanError, match=message) as info:
        await plait.aexecute(plan, tools=[record])
    assert info.value.line == 3
    assert calls == []


# -- registries ---------------------------------------------------------------------------


def test_tools_registry_and_coerce():
    def plain(x: int) -> int:
        return x

    tools = Tools([search, plain])
    assert list(tools) == ["search", "plain"] and len(tools) == 2
    assert isinstance(tools["plain"], Tool)
    assert as_tools(tools) is tools
    renamed = as_tools({"lookup": search, "p": plain})
    assert list(renamed) == ["lookup", "p"]
    assert renamed["lookup"].name == "lookup"
    with pytest.raises(ToolError, match="two tools are named 'search'"):
        Tools([search, search])


def test_prepare_keeps_the_task_otherwise():
    task = Task(5, "search", ("q",), {}, frozenset(), 9)
    prepared = Tools([search]).prepare(task)
    assert (prepared.id, prepared.tool, prepared.args, prepared.line) == (5, "search", (), 9)
    assert prepared.kwargs == {"query": "q"}


# -- loading ----------------------------------------------------------------------------

TOOLS_SOURCE = '''
import plait

@plait.tool
def shout(text: str) -> str:
    """Upper-case the text."""
    return text.upper()

@plait.tool(retries=1)
async def whisper(text: str) -> str:
    return text.lower()

def helper():  # not a tool
    return 1

EXAMPLES = "1. shout('a')\\n2. join()"
'''


def test_load_tools_from_a_path(tmp_path: Path):
    path = tmp_path / "my_tools.py"
    path.write_text(TOOLS_SOURCE)
    tools = load_tools(str(path))
    assert sorted(tools) == ["shout", "whisper"]
    assert tools["whisper"].retries == 1
    assert tools.examples == "1. shout('a')\n2. join()"
    assert tools["shout"]("a") == "A"


def test_load_the_example_tools(example_tools: Path):
    tools = load_tools(str(example_tools))
    assert sorted(tools) == ["calculate", "extract_number", "search", "which_larger"]
    assert tools.examples and "join()" in tools.examples


def test_load_tools_from_a_module_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "plait_test_toolmod.py").write_text(TOOLS_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    tools = load_tools("plait_test_toolmod")
    assert sorted(tools) == ["shout", "whisper"]
    assert sorted(as_tools("plait_test_toolmod")) == ["shout", "whisper"]


@pytest.mark.parametrize(
    ("files", "spec", "message"),
    [
        ({}, "nope.py", "tools file not found: {tmp}/nope.py"),
        ({}, "plait_no_such_module_x", "tools module not found: plait_no_such_module_x"),
        ({"bad.py": "import plait\ndef f(:\n"}, "bad.py", "{tmp}/bad.py:2: syntax error"),
        ({"empty.py": "x = 1\n"}, "empty.py", "{tmp}/empty.py: no @plait.tool functions found"),
        (
            {"raises.py": "raise RuntimeError('no config')\n"},
            "raises.py",
            "{tmp}/raises.py: import failed: RuntimeError: no config",
        ),
        (
            {"needs.py": "import plait_missing_dependency_q\n"},
            "needs.py",
            "import failed: No module named 'plait_missing_dependency_q'",
        ),
    ],
)
def test_load_tools_errors(tmp_path: Path, files, spec, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    if spec.endswith(".py"):
        spec = f"{tmp_path}/{spec}"
    with pytest.raises(ToolError) as info:
        load_tools(spec)
    text = str(info.value)
    assert message.format(tmp=tmp_path) in text
    assert "\n" not in text


def test_load_tools_does_not_accept_a_directory(tmp_path: Path):
    with pytest.raises(ToolError, match="not found"):
        load_tools(str(tmp_path))


def test_a_mapping_renames_a_tool_and_keeps_its_limits():
    limited = tool(max_concurrency=2, timeout=5, retries=3)(lambda query: query)
    renamed = as_tools({"lookup": limited})["lookup"]
    assert renamed.name == "lookup"
    assert (renamed.max_concurrency, renamed.timeout, renamed.retries) == (2, 5, 3)


def test_validate_hands_plain_values_on_as_the_model_would():
    @tool
    def f(a: int, b: float = 1.5, c: list | None = None, d: str = "x") -> None: ...

    items = [1, "$2"]
    out = f.validate({"a": 3, "c": items})
    # Defaults filled in (a pure call's key depends on it), a list copied, not shared.
    assert out == {"a": 3, "b": 1.5, "c": [1, "$2"], "d": "x"} and out["c"] is not items
    coerced = f.validate({"a": 3, "b": 2})
    assert coerced["b"] == 2.0 and type(coerced["b"]) is float  # not a plain match: pydantic's
    with pytest.raises(ValueError, match="invalid arguments for f"):
        f.validate({"a": "three"})

    @tool
    def g(a: int, xs: list | None = []) -> None: ...  # noqa: B006 - the model copies it

    out = g.validate({"a": 1})
    assert out["xs"] == [] and out["xs"] is not g._defaults["xs"]
