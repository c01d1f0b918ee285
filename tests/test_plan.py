"""The plan format and its streaming parser (plait.agent.parse)."""

from __future__ import annotations

import keyword
import math
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plait.agent.parse import MAX_NESTING, PlanParser, _CallScan, parse_plan
from plait.core.task import Task, references, resolve, whole_ref
from plait.errors import PlanError

ISSUE_PLAN = """\
Thought: free text, ignored
1. search("Eiffel Tower height")
2. search("Statue of Liberty height")
3. compare(a=$1, b="height of ${2}")
4. join()
<END_OF_PLAN>
"""

# Plans as real models write them (LLMCompiler's few-shot style).
LLMCOMPILER_PLAN = """\
Thought: I need to look up both books first.
1. search(In Cold Blood)
Thought: and the author.
2. search("Truman Capote")
3. combine(["$1", "$2"], sep=", ")
Thought: I can answer now.
4. join()<END_OF_PLAN>
###
Question: the next few-shot example, which must be ignored
1. search("ignored")
2. join()
"""

JSON_PLAN = (
    '{"tasks": [{"id": 1, "tool": "search", "args": ["x"]},\n'
    ' {"id": 2, "tool": "compare", "args": {"a": "$1", "b": "of ${1}"}},\n'
    ' {"id": 3, "tool": "join", "args": {}}]}'
)

PLANS = [
    ISSUE_PLAN,
    LLMCOMPILER_PLAN,
    JSON_PLAN,
    "```json\n" + JSON_PLAN + "\n```\nSome words after the fence.",
    '[{"id": 1, "tool": "a", "args": ["}{\\"]"]}, {"id": 2, "tool": "b", "args": ["$1"]}]',
    '1. f("a",\n   b=[1,\n      2])\n2. g($1)\n',
    "1. f('it''s', \"\"\"tri\nple\"\"\", x='$')\n2. g(${1})",
    "1. a()<END_OF_PLAN>2. b()",
    "1. a()\r\n2. b($1)\r\n",
    '1. a("x"\n2. b()\n',  # an error: the split must give the same error
    "1. a()\n1. b()\n",
    '{"tasks": [{"id": 1, "tool": "a"',
    "   \n\n  Thought: nothing\n",
    # issue 14: decorated task lines, text after a call, JSON outside tasks[*], hostile literals
    '- 1) a("x")\n**2. b($1)**\n[3] c()\n',
    '1. a("x") 2. b("y")\n',
    '{"tasks": [{"id": 1, "tool": "a"}, {"id": 2, "tool": "join"}], "meta": {"x": 1}}',
    '{"meta": {"x": {"id": 7, "tool": "a"}}, "tasks": []}',
    '{"tasks": [1, {"id": 1, "tool": "a"}]}',
    '{"tasks": [{"id": 1, "tool": "a", "args": ["a\\"b", "\\\\"]}, {"id": 2, "tool": "b"}]}',
    "[Thought] first\n1. a()\n",
    "1. f(...)\n",
    "1. f(" + "[" * 120 + "]" * 120 + ")\n",
    '{"tasks": [{"id": 1, "tool": "f", "args": [' + "[" * 120 + "]" * 120 + "]}]}",
]


def names(tasks: list[Task]) -> list[tuple[int, str]]:
    return [(t.id, t.tool) for t in tasks]


def outcome(
    chunks: list[str], known: tuple[int, ...] = (), tools: set[str] | None = None
) -> tuple[object, ...]:
    """Tasks (or the error) from feeding `chunks` one by one and closing."""
    parser = PlanParser(known, tools)
    tasks: list[Task] = []
    try:
        for chunk in chunks:
            tasks += parser.feed(chunk)
        tasks += parser.close()
    except PlanError as e:
        return ("error", str(e), e.line)
    return ("ok", tasks, parser.joined)


# -- the text form ----------------------------------------------------------------------


def test_issue_plan():
    tasks = parse_plan(ISSUE_PLAN)
    assert names(tasks) == [(1, "search"), (2, "search"), (3, "compare")]
    assert tasks[0].args == ("Eiffel Tower height",)
    assert tasks[0].deps == frozenset()
    assert tasks[2].args == ()
    assert tasks[2].kwargs == {"a": "$1", "b": "height of ${2}"}
    assert tasks[2].deps == {1, 2}
    assert [t.line for t in tasks] == [2, 3, 4]


def test_llmcompiler_style_plan():
    parser = PlanParser()
    tasks = parser.feed(LLMCOMPILER_PLAN) + parser.close()
    assert names(tasks) == [(1, "search"), (2, "search"), (3, "combine")]
    # bare text is one string argument, as LLMCompiler reads it
    assert tasks[0].args == ("In Cold Blood",)
    # "$1" quoted inside a list is still a reference
    assert tasks[2].args == (["$1", "$2"],)
    assert tasks[2].kwargs == {"sep": ", "}
    assert tasks[2].deps == {1, 2}
    assert parser.done and parser.joined


@pytest.mark.parametrize(
    "tail",
    [
        "4. join()<END_OF_PLAN>\n5. x()\n",
        "4. join()\n5. x()\n",
        "<END_OF_PLAN>\n5. x()\n",
        "### the end\n5. x()\n",
        "4. join\n5. x()\n",
    ],
)
def test_plan_end_markers_ignore_the_rest(tail):
    text = '1. a()\n2. b($1)\n3. c("$2")\n' + tail
    assert names(parse_plan(text)) == [(1, "a"), (2, "b"), (3, "c")]


def test_end_of_text_ends_the_plan():
    parser = PlanParser()
    assert names(parser.feed("1. a()\n2. b()")) == [(1, "a")]
    assert names(parser.close()) == [(2, "b")]
    assert parser.done and not parser.joined


def test_join_marks_joined():
    parser = PlanParser()
    parser.feed("1. a()\n2. join()\n")
    assert parser.done and parser.joined
    assert parser.feed("3. b()\n") == []  # text after the plan is ignored
    assert parser.close() == []


def test_literal_argument_types():
    # JSON has no tuple: a tuple is carried as a list, as it will be read back after a resume
    (t,) = parse_plan(
        "1. f('s', 2, -3, -2.5, 1e3, True, False, None, [1, 'a'], (1, -2), {'k': [None]},"
        " (), [], {}, key=-7, other={'n': (1,)})"
    )
    assert t.args == (
        "s",
        2,
        -3,
        -2.5,
        1000.0,
        True,
        False,
        None,
        [1, "a"],
        [1, -2],
        {"k": [None]},
        [],
        [],
        {},
    )
    assert t.kwargs == {"key": -7, "other": {"n": [1]}}
    assert t.deps == frozenset()


def test_references_everywhere():
    text = (
        '1. a()\n2. b()\n3. c($1, x=${2}, y=[$1, {"k": "$2"}], z="from $1 and ${2}!", w=("$1",))\n'
    )
    t = parse_plan(text)[2]
    assert t.args == ("$1",)
    assert t.kwargs == {
        "x": "${2}",
        "y": ["$1", {"k": "$2"}],
        "z": "from $1 and ${2}!",
        "w": ["$1"],
    }
    assert t.deps == {1, 2}


def test_inner_reference_to_no_task_is_text():
    (t,) = parse_plan('1. price("costs $5 or ${7}")')
    assert t.args == ("costs $5 or ${7}",)
    assert t.deps == frozenset()


def test_bare_text_with_a_reference():
    t = parse_plan("1. a()\n2. search(books by $1)\n")[1]
    assert t.args == ("books by $1",)
    assert t.deps == {1}


def test_unparsable_arguments_become_one_string():
    (t,) = parse_plan("1. f(1 +, 2)")
    assert t.args == ("1 +, 2",)
    (t,) = parse_plan("1. f(what is x = 4?, y == 2)")  # `=` inside text: not keywords
    assert t.args == ("what is x = 4?, y == 2",)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ('echo(x="a", x="b")', "line 2: task 2: keyword argument repeated: x"),
        ("f(x=1, x=2)", "line 2: task 2: keyword argument repeated: x"),
        ('f("a", q=foo bar)', 'line 2: task 2: invalid arguments: "a", q=foo bar'),
        ("f(x = 1 +, 2)", "line 2: task 2: invalid arguments: x = 1 +, 2"),
    ],
)
def test_broken_keyword_arguments_are_a_plan_error_not_one_string(call, message):
    # Read as one string they would be a different call, run with exit 0.
    with pytest.raises(PlanError) as info:
        parse_plan(f'1. f("ok")\n2. {call}\n')
    assert str(info.value) == message


def test_multi_line_task():
    text = '1. f(\n  "a",\n  b={"k": 1,\n     "l": 2},\n)\n2. g($1)\n'
    tasks = parse_plan(text)
    assert names(tasks) == [(1, "f"), (2, "g")]
    assert tasks[0].args == ("a",)
    assert tasks[0].kwargs == {"b": {"k": 1, "l": 2}}
    assert tasks[0].line == 1
    assert tasks[1].line == 6


def test_parentheses_inside_strings_do_not_count():
    (t,) = parse_plan('1. f(")(", \'(\', "\\")")')
    assert t.args == (")(", "(", '")')


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('1. search("a"\n2. search("b")\n', 1),
        ('1. a()\nThought: hm\n2. b("x",\n3. c()\n', 3),
        ('1. a()\n2. b("x",\n  "y"\nThought: oops\n', 2),
        ('1. a()\n2. b("never closed"', 2),
        ("1. a(\n", 1),
        ('1. a("x"<END_OF_PLAN>', 1),
    ],
)
def test_unclosed_parenthesis_names_the_line(text, line):
    with pytest.raises(PlanError, match="unclosed parenthesis") as info:
        parse_plan(text)
    assert info.value.line == line
    assert f"line {line}:" in str(info.value)
    assert "\n" not in str(info.value)


def test_tasks_before_an_error_were_already_emitted():
    parser = PlanParser()
    assert names(parser.feed("1. a()\n2. b(\n")) == [(1, "a")]
    with pytest.raises(PlanError):
        parser.feed("3. c()\n")


def test_duplicate_id():
    with pytest.raises(PlanError, match="task id 2 is used twice") as info:
        parse_plan("1. a()\n2. b()\n2. c()\n")
    assert info.value.line == 3


def test_duplicate_of_a_known_id():
    with pytest.raises(PlanError, match="used twice"):
        parse_plan("3. a()\n", known=[1, 2, 3])


@pytest.mark.parametrize(
    "text",
    [
        "1. a($1)\n",
        "1. a($2)\n2. b()\n",
        '1. a(x="${3}")\n',
        "1. a([$9])\n",
        '{"tasks": [{"id": 1, "tool": "a", "args": ["$2"]}]}',
    ],
)
def test_whole_reference_must_name_an_earlier_task(text):
    with pytest.raises(PlanError, match="not an earlier task") as info:
        parse_plan(text)
    assert info.value.line == 1


def test_references_to_known_tasks_from_an_earlier_round():
    (t,) = parse_plan('4. f($2, "and ${3}")\n', known={1, 2, 3})
    assert t.deps == {2, 3}


def test_huge_numbers_are_not_a_crash():
    with pytest.raises(PlanError, match="too large"):
        parse_plan("9" * 5000 + ". a()\n")
    (t,) = parse_plan('1. a("$' + "9" * 5000 + '")')
    assert t.deps == frozenset()
    (t,) = parse_plan('{"tasks": [{"id": 1, "tool": "a", "args": ["$' + "9" * 5000 + '"]}]}')
    assert t.deps == frozenset()


# -- the JSON form ----------------------------------------------------------------------


def test_json_form_means_the_same():
    text = JSON_PLAN
    parser = PlanParser()
    tasks = parser.feed(text) + parser.close()
    assert names(tasks) == [(1, "search"), (2, "compare")]
    assert tasks[0].args == ("x",)
    assert tasks[1].kwargs == {"a": "$1", "b": "of ${1}"}
    assert tasks[1].deps == {1}
    assert parser.joined


def test_json_args_and_kwargs_together():
    (t,) = parse_plan('[{"id": 1, "tool": "f", "args": [1, "$"], "kwargs": {"k": null}}]')
    assert t.args == (1, "$")
    assert t.kwargs == {"k": None}


def test_fenced_json():
    text = "```json\n" + JSON_PLAN + "\n```\n"
    assert names(parse_plan(text)) == [(1, "search"), (2, "compare")]
    assert names(parse_plan("  ```\n" + JSON_PLAN + "\n```")) == [(1, "search"), (2, "compare")]


def test_streaming_json_emits_each_object_as_it_closes():
    parser = PlanParser()
    emitted_at: dict[int, int] = {}
    for i, c in enumerate(JSON_PLAN):
        for task in parser.feed(c):
            emitted_at[task.id] = i
    first = JSON_PLAN.index('["x"]}') + len('["x"]}') - 1
    second = JSON_PLAN.index('"of ${1}"}}') + len('"of ${1}"}}') - 1
    assert emitted_at == {1: first, 2: second}
    assert parser.done and parser.joined


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"tasks": [{"id": 1, "tool": "a"', "not closed"),
        ('{"tasks": [{"id": 1, "tool": "a"}', "not closed"),
        ('{"tasks": [{"tool": "a"}]}', 'integer "id"'),
        ('{"tasks": [{"id": true, "tool": "a"}]}', 'integer "id"'),
        ('{"tasks": [{"id": 1}]}', '"tool"'),
        ('{"tasks": [{"id": 1, "tool": "a", "args": 5}]}', '"args"'),
        ('{"tasks": [{"id": 1, "tool": "a", "args": [], "kwargs": [1]}]}', '"kwargs"'),
        ('{"tasks": [{"id": 1, "tool": "a", "args": [1,]}]}', "invalid JSON"),
        ('{"tasks": [{"id": 1, "tool": "a"}, {"id": 1, "tool": "b"}]}', "used twice"),
    ],
)
def test_json_errors(text, message):
    with pytest.raises(PlanError, match=message):
        parse_plan(text)


# -- streaming ----------------------------------------------------------------------------


def test_task_is_emitted_as_soon_as_its_line_is_complete():
    parser = PlanParser()
    assert parser.feed("Thought: first") == []
    assert parser.feed(" the heights\n1. search(") == []
    assert parser.feed('"Eiffel"') == []
    (t1,) = parser.feed(")\n")
    assert (t1.id, t1.args) == (1, ("Eiffel",))
    (t2,) = parser.feed('2. search("Liberty")\n')
    assert t2.id == 2
    (t3,) = parser.feed("3. compare($1, $2)\n4. jo")
    assert t3.deps == {1, 2}
    assert not parser.done
    assert parser.feed("in()\n") == []
    assert parser.done


@pytest.mark.parametrize("plan", PLANS)
def test_split_at_every_index(plan):
    whole = outcome([plan])
    for i in range(len(plan) + 1):
        assert outcome([plan[:i], plan[i:]]) == whole, i
    assert outcome(list(plan)) == whole


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PLANS), st.lists(st.integers(min_value=0, max_value=400), max_size=30))
def test_random_splits(plan, cuts):
    points = sorted({c % (len(plan) + 1) for c in cuts})
    chunks = [plan[a:b] for a, b in zip([0, *points], [*points, len(plan)], strict=True)]
    assert outcome(chunks) == outcome([plan])


# -- property: arbitrary text is data, never code ----------------------------------------

FRAGMENTS = [
    "1.",
    "2.",
    "3.",
    " ",
    "\n",
    "search",
    "join",
    "(",
    ")",
    '"',
    "'",
    "$1",
    "${2}",
    "$",
    "[",
    "]",
    "{",
    "}",
    ",",
    "=",
    "x",
    "Thought:",
    "<END_OF_PLAN>",
    "###",
    "```",
    "json",
    ":",
    '"tasks"',
    '"id"',
    '"tool"',
    '"args"',
    "1",
    "-",
    "\\",
    '"""',
    "None",
    "9" * 30,
    '{"tasks": [',
    '{"id": 1, "tool": "a", "args": ["$1"]}',
    "\r",
    "__import__('os').system('true')",
    "open('x')",
    "lambda: 0",
    "**",
    "*",
]
plan_like = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=40).map(
    "".join
)
any_text = st.one_of(st.text(max_size=200), plan_like)

_watching = threading.local()
_seen: list[str] = []
_DANGEROUS = (
    "exec",
    "open",
    "os.system",
    "subprocess.Popen",
    "os.exec",
    "os.posix_spawn",
    "import",
    "socket.connect",
    "os.remove",
    "shutil",
)


def _audit(event: str, args: tuple[object, ...]) -> None:
    if getattr(_watching, "on", False) and event.startswith(_DANGEROUS):
        _seen.append(event)


sys.addaudithook(_audit)


def parse_watched(text: str, cuts: list[int] = ()) -> object:
    """Parse whole and split at `cuts`, recording any code execution, import or I/O."""
    _watching.on = True
    try:
        whole = outcome([text])
        points = sorted({c % (len(text) + 1) for c in cuts})
        chunks = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
        split = outcome(chunks)
    finally:
        _watching.on = False
    assert split == whole
    return whole


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_text, st.lists(st.integers(min_value=0, max_value=300), max_size=8))
def test_arbitrary_text_only_ever_raises_plan_error(text, cuts):
    _seen.clear()
    result = parse_watched(text, cuts)  # anything but PlanError propagates and fails
    assert _seen == []
    if result[0] == "ok":
        for task in result[1]:
            assert isinstance(task, Task)
            assert isinstance(task.id, int)
            assert all(d < sys.maxsize and d in {t.id for t in result[1]} for d in task.deps)


def test_code_in_a_plan_is_never_run(tmp_path: Path):
    marker = tmp_path / "pwned"
    code_call = f"__import__('os').system('touch {marker}')"
    text = (
        f"1. shell({code_call})\n"
        f"2. read(open('{marker}', 'w'))\n"
        f"3. f([open('{marker}', 'w')], {code_call})\n"
        f'4. g(*[1], **{{"a": exec("open({str(marker)!r}, \'w\')")}})\n'
        f"5. h(lambda: {code_call})\n"
        f'{{"id": 6, "tool": "{code_call}"}}\n'
    )
    _seen.clear()
    result = parse_watched(text, [7, 30, 31, 80])
    assert _seen == []
    assert not marker.exists()
    assert result[0] == "ok"
    tasks = result[1]
    assert names(tasks) == [(1, "shell"), (2, "read"), (3, "f"), (4, "g"), (5, "h")]
    assert tasks[0].args == (code_call,)  # just a string
    assert tasks[1].args == (f"open('{marker}', 'w')",)
    for task in tasks:
        for value in (*task.args, *task.kwargs.values()):
            assert isinstance(value, str)
    # Keyword arguments that are code: a plan error, and still nothing run.
    result = parse_watched(f"1. f(x={code_call}, y=[open('{marker}', 'w')])\n", [9, 20])
    assert _seen == [] and not marker.exists()
    assert result[0] == "error" and "invalid arguments" in str(result[1])


literals = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text().filter(lambda s: "$" not in s and "<END_OF_PLAN>" not in s),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=5).filter(lambda s: "$" not in s), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(literals, max_size=4),
    st.dictionaries(
        st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True).filter(
            lambda s: not keyword.iskeyword(s)
        ),
        literals,
        max_size=3,
    ),
)
def test_literals_round_trip(args, kwargs):
    call = ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())])
    text = f"1. tool({call})\n2. join()\n"
    (t,) = parse_plan(text)
    if not args and not kwargs:
        assert (t.args, t.kwargs) == ((), {})
        return
    assert t.args == tuple(as_json(args))
    assert t.kwargs == as_json(kwargs)


def as_json(value):
    """A literal as JSON keeps it: tuples are lists."""
    if isinstance(value, (list, tuple)):
        return [as_json(v) for v in value]
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    return value


# -- references -----------------------------------------------------------------------


def test_whole_ref():
    assert whole_ref("$3") == 3
    assert whole_ref("${12}") == 12
    assert whole_ref(" $3 ") == 3
    assert whole_ref("$3 apples") is None
    assert whole_ref(3) is None


def test_references_finds_nested():
    found = sorted(references({"a": ["$1", ("x ${2} y",)], "b": "$3 and $4"}))
    assert found == [(1, True), (2, False), (3, False), (4, False)]


def test_resolve():
    results = {1: [1, 2], 2: "two", 3: {"k": 1.5}}
    value = {"a": "$1", "b": ["${2}", ("$3",)], "c": "got $1, ${2}, $3, $9", "d": 7}
    assert resolve(value, results) == {
        "a": [1, 2],
        "b": ["two", ({"k": 1.5},)],
        "c": 'got [1, 2], two, {"k": 1.5}, $9',
        "d": 7,
    }
    assert resolve("$9", results) == "$9"
    assert math.isclose(resolve("$1", {1: 0.5}), 0.5)


# -- issue 14: a line that calls a tool is a task or an error, never skipped ---------------

TOOLS = {"search", "compare"}


@pytest.mark.parametrize(
    "line",
    [
        '2) search("b")',
        '- 2. search("b")',
        '* 2. search("b")',
        '**2. search("b")**',
        '2. **search("b")**',
        '`2. search("b")`',
        '> 2. search("b")',
        '2: search("b")',
        '[2] search("b")',
        '(2) search("b")',
        '  2 . search ("b")  ',
        '2. search("b");',
    ],
)
def test_numbered_task_lines_with_markdown_around_them_are_tasks(line):
    tasks = parse_plan(f'1. search("a")\n{line}\n3. compare($1, $2)\n', tools=TOOLS)
    assert [(t.id, t.tool, t.args, t.line) for t in tasks] == [
        (1, "search", ("a",), 1),
        (2, "search", ("b",), 2),
        (3, "compare", ("$1", "$2"), 3),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('2. search "b"', "task 2: search is not called: write 2. search(...)"),
        ("2. search", "task 2: search is not called"),
        ("**2. search**", "task 2: search is not called"),
        ("2. search: the Statue of Liberty", "task 2: search is not called"),
        ('search("b")', "search(...) has no task id"),
        ('- search("b")', "search(...) has no task id"),
        ('2. search("b") 3. search("c")', 'text after the call: 3. search("c")'),
        ('2. search("b"), compare("c")', "text after the call"),
        ('2. search("b") then compare them', "text after the call"),
        ('2. search("b"]', "']' closes the call's parenthesis"),
        ('2. join "now"', "task 2: join is not called"),
    ],
)
def test_a_line_calling_a_known_tool_that_is_no_task_is_an_error_naming_it(line, message):
    text = f'1. search("a")\n{line}\n3. compare($1, $1)\n'
    for chunks in ([text], list(text)):  # streamed a character at a time, the same
        result = outcome(chunks, tools=TOOLS)
        assert result[0] == "error", result
        assert message in result[1]
        assert result[2] == 2
        assert result[1].startswith("line 2: ") and "\n" not in result[1]


def test_text_after_a_multi_line_call_names_the_line_it_is_on():
    with pytest.raises(PlanError, match="text after the call: extra") as info:
        parse_plan('1. search(\n  "a",\n) extra\n', tools=TOOLS)
    assert info.value.line == 3


@pytest.mark.parametrize(
    "line",
    [
        "Thought: search both heights, then compare them",
        'Thought: I will call search("x") first',
        "1. First, search both heights.",
        "search the web for both heights",
        "Search(",  # not the tool's name: it is case-sensitive
        "2 searches are needed",
        "# 2. search the heights",
    ],
)
def test_prose_that_mentions_a_tool_stays_text(line):
    tasks = parse_plan(f'{line}\n1. search("a")\n', tools=TOOLS)
    assert [(t.id, t.tool) for t in tasks] == [(1, "search")]


def test_without_tool_names_only_call_shaped_lines_are_tasks():
    text = '1. search("a")\n2. search "b"\nsearch("c")\n- 3) compare($1, $1)\n'
    assert [(t.id, t.tool) for t in parse_plan(text)] == [(1, "search"), (3, "compare")]
    with pytest.raises(PlanError, match="line 2: task 2: search is not called"):
        parse_plan(text, tools=TOOLS)


@pytest.mark.parametrize("end", ["join()", "- 4. join()", "**4. join()**", "4) join", "join"])
def test_join_in_any_of_those_shapes_ends_the_plan(end):
    parser = PlanParser(tools=TOOLS)
    tasks = parser.feed(f'1. search("a")\n{end}\n5. search("ignored")\n') + parser.close()
    assert [t.id for t in tasks] == [1]
    assert parser.joined


# -- issue 14: JSON plans: only tasks[*] are tasks; the rest is checked ---------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '{"meta": {"x": {"id": 7, "tool": "search", "args": ["y"]}}, "tasks": []}',
            "unknown key 'meta': a JSON plan has only \"tasks\"",
        ),
        (
            '{"tasks": [{"id": 1, "tool": "search", "args": ["x"]}],\n'
            ' "meta": {"x": {"id": 7, "tool": "search", "args": ["y"]}}}',
            "unknown key 'meta'",
        ),
        (
            '{"tasks": [1, {"id": 1, "tool": "search"}]}',
            "tasks[0] must be a task object, not a number",
        ),
        (
            '{"tasks": [{"id": 1, "tool": "search"}, "x"]}',
            "tasks[1] must be a task object, not a string",
        ),
        (
            '{"tasks": [{"id": 1, "tool": "search"}, null]}',
            "tasks[1] must be a task object, not null",
        ),
        ('{"tasks": [{"id": 1, "tool": "search"}, [{"id": 2}]]}', "not an array"),
        ('{"tasks": [{"id": 1, "tool": "search"},]}', "tasks[1] must be a task object"),
        ('{"tasks": [{"id": 1, "tool": "s"} {"id": 2, "tool": "s"}]}', 'expected "," or "]"'),
        ('{"tasks": {"id": 1, "tool": "search"}}', '"tasks" must be an array, not an object'),
        ('{"tasks": [], "tasks": []}', '"tasks" is given twice'),
        ("{}", 'a JSON plan needs a "tasks" array'),
        (
            '{"tasks": [{"id": 1, "tool": "search", "args": {"q": "x"}, "kwargs": "zzz"}]}',
            'tasks[0]: "kwargs" must be an object',
        ),
        (
            '{"tasks": [{"id": 1, "tool": "search", "args": {"q": "x"}, "kwargs": {"q": "y"}}]}',
            """argument 'q' is in "args" and "kwargs\"""",
        ),
        ('{"tasks": [{"id": 1, "tool": "search", "kwarg": {}}]}', "tasks[0]: unknown key 'kwarg'"),
        ('{"tasks": [{"id": 1, "id": 2, "tool": "search"}]}', "key 'id' is repeated"),
        ('{"tasks": [{"id": 1, "tool": "s", "args": {"a": 1, "a": 2}}]}', "key 'a' is repeated"),
        ('{"tasks": [{"id": 1, "tool": "search", "args": [NaN]}]}', "NaN is not a JSON number"),
        ('{"tasks": [{"id": 1, "tool": "search", "args": [1e999]}]}', "inf is not a finite number"),
        ('{"tasks": [{"id": 1, "tool": "search", "args": ["\\udcff"]}]}', "lone surrogate"),
        ('{"tasks": [{"id": -1, "tool": "search"}]}', 'integer "id"'),
        ('{"tasks": [{"id": 1, "tool": "two words"}]}', '"tool" name'),
    ],
)
def test_json_plans_name_what_is_malformed_and_where(text, message):
    for chunks in ([text], list(text)):
        result = outcome(chunks)
        assert result[0] == "error", result
        assert message in result[1], result[1]
        assert "\n" not in result[1]
        assert result[2] is not None


def test_a_json_plan_nested_ten_thousand_deep_is_an_error_not_a_recursion_error():
    deep = "[" * 10_000 + "]" * 10_000
    for text in (
        '{"tasks": [{"id": 1, "tool": "f", "args": [' + deep + "]}]}",
        '{"tasks": [{"id": 1, "tool": "f", "args": {"x": ' + deep + "}}]}",
        '{"tasks": [' + deep + "]}",
        "[" + deep + "]",
    ):
        result = outcome([text])
        assert result[0] == "error" or result == ("ok", [], False), result[:2]
    with pytest.raises(PlanError, match=f"tasks\\[0\\]: nested deeper than {MAX_NESTING} levels"):
        parse_plan('{"tasks": [{"id": 1, "tool": "f", "args": [' + deep + "]}]}")


def test_json_tasks_are_still_dispatched_as_their_objects_close():
    text = '{"tasks": [{"id": 1, "tool": "a", "args": ["x"]}, {"id": 2, "tool": "b"}]}'
    parser = PlanParser()
    first_close = text.index("]}") + 2
    assert [t.id for t in parser.feed(text[:first_close])] == [1]
    assert [t.id for t in parser.feed(text[first_close:])] == [2]
    assert parser.done


@pytest.mark.parametrize(
    "head",
    ["[Thought] both heights first", "{note: look both up}", "[1 of 2] steps", "{ 'a': 1 }"],
)
def test_a_text_plan_starting_with_a_bracket_is_text(head):
    for chunks in ([f'{head}\n1. search("x")\n'], list(f'{head}\n1. search("x")\n')):
        result = outcome(chunks, tools=TOOLS)
        assert result[0] == "ok", result
        assert names(result[1]) == [(1, "search")]


# -- issue 14: what a plan may hold is what a run can record ---------------------------------


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("...", "argument 1: ... is not a plan literal"),
        ("x=...", "argument 'x': ... is not a plan literal"),
        ("{1, 2}", "{1, 2} (set) is not a plan literal"),
        ("set()", "(set) is not a plan literal"),
        ('b"x"', "(bytes) is not a plan literal"),
        ("1j", "(complex) is not a plan literal"),
        ("[1e999]", "inf is not a finite number"),
        ("-1e999", "-inf is not a finite number"),
        ('"\\udcff"', "a string holds a lone surrogate: \\udcff"),
        ('"ok", k="\\ud800 x"', "argument 'k': a string holds a lone surrogate"),
        ("{1: 2}", "a dict key must be a string, not 1 (int)"),
        ("{(1, 2): 2}", "a dict key must be a string"),
        ("0x" + "f" * 14000, "an integer of more than 4000 digits"),
        ("[" * 480 + "]" * 480, f"arguments nested deeper than {MAX_NESTING} levels"),
        ("[" * 490 + "]" * 490, f"arguments nested deeper than {MAX_NESTING} levels"),
        ("[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1), "nested deeper"),
    ],
)
def test_literals_a_run_could_not_record_are_plan_errors(argument, message):
    with pytest.raises(PlanError, match="line 2: task 2: ") as info:
        parse_plan(f'1. f("ok")\n2. f({argument})\n')
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_raw_lone_surrogate_in_the_text_is_a_plan_error():
    with pytest.raises(PlanError, match="lone surrogate"):
        parse_plan('1. f("a\udcffb")\n')


def test_nesting_up_to_the_bound_is_carried_whole():
    deep = "[" * MAX_NESTING + "1" + "]" * MAX_NESTING
    (t,) = parse_plan(f"1. f({deep})\n")
    (j,) = parse_plan('{"tasks": [{"id": 1, "tool": "f", "args": [' + deep + "]}]}")
    value = t.args[0]
    assert value == j.args[0]
    for _ in range(MAX_NESTING):
        assert isinstance(value, list)
        (value,) = value
    assert value == 1


# -- issue 14: an inner $N is resolved against the task's own inputs only --------------------


def test_resolve_substitutes_the_tasks_inputs_only():
    results = {1: "one", 3: "three"}
    assert resolve("$1 later $3", results, {1}) == "one later $3"
    assert resolve(["$3", {"k": "${3}!"}, "$1"], results, frozenset({1})) == [
        "$3",
        {"k": "${3}!"},
        "one",
    ]
    assert resolve("$1 later $3", results) == "one later three"  # no inputs given: all


def test_an_inner_reference_to_a_later_task_is_no_dependency():
    tasks = parse_plan('1. a()\n2. echo(w="$1 later $3")\n3. a()\n')
    assert tasks[1].deps == {1}


# -- issue 14: a task over many lines is read in linear time ---------------------------------


def test_a_task_over_many_lines_is_scanned_once(monkeypatch: pytest.MonkeyPatch):
    scanned = 0
    feed = _CallScan.feed

    def counting(self: _CallScan, text: str, pos: int = 0) -> int | None:
        nonlocal scanned
        scanned += len(text) - pos
        return feed(self, text, pos)

    monkeypatch.setattr(_CallScan, "feed", counting)
    for lines in (100, 3000):
        text = "1. search(\n" + '  "a", """b\n c""",\n' * lines + ")\n"
        for chunks in ([text], [text[i : i + 7] for i in range(0, len(text), 7)]):
            scanned = 0
            result = outcome(chunks)
            assert result[0] == "ok"
            (task,) = result[1]
            assert task.args == ("a", "b\n c") * lines
            assert scanned <= len(text)  # each character once, however many lines


def test_a_long_whitespace_prelude_is_not_sniffed_again_at_every_chunk(
    monkeypatch: pytest.MonkeyPatch,
):
    import plait.agent.parse as plan_module

    calls = 0
    sniff = plan_module._sniff

    def counting(head: str) -> tuple[str, int]:
        nonlocal calls
        calls += 1
        return sniff(head)

    monkeypatch.setattr(plan_module, "_sniff", counting)
    parser = PlanParser()
    for _ in range(5000):
        assert parser.feed("\n") == []
    tasks = parser.feed('1. a("x")\n') + parser.close()
    assert [(t.id, t.line) for t in tasks] == [(1, 5001)]
    assert calls == 1


@pytest.mark.parametrize(
    "args",
    [
        '"a", 1, -2, True, False, None',
        '[$1, ${1}, [], [[1, "b"]]], "x $1 y"',
        '"$1", "", "é ü", "(,)", "a\'b"',
        "$1,",  # a trailing comma: Python's, not JSON's
        '"a" "b"',  # implicit concatenation
        "1 2",
        "[1,]",
        "007",
        "12345678901234567890",
        '"tab\there"',
    ],
)
def test_a_simple_line_reads_as_the_general_reader_does(args):
    """`N. tool(args)` of plain literals takes a fast way; a decorated line (`- N.`) the
    general one: both must give the same task, or the same error."""

    def read(prefix: str) -> object:
        try:
            return parse_plan(f"1. a()\n{prefix}2. f({args})\n")[1]
        except PlanError as e:
            return str(e)

    assert read("") == read("- ")
