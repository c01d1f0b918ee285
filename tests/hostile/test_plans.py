"""Hostile plans, end to end: each is rejected with one line naming where, or runs exactly as
written; none is silently cut short, none ends a run with an internal error, and the same plan
gives the same results whichever task finishes first (issue 14, plan side)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

import plait
from plait.cli.main import main
from plait.core import events as ev
from plait.errors import PlanError
from plait.llm.replay import ReplayLLM
from plait.stores import open_store

TOOLS_FILE = """\
import plait

@plait.tool
def echo(w: object = None) -> object:
    return w

@plait.tool
def search(q: str) -> str:
    return q.upper()
"""


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return f"memory://hostile-plans-{uuid.uuid4().hex}"
    return f"sqlite:///{tmp_path / 'runs.db'}"


def counting_tools() -> tuple[list[plait.Tool], list[tuple[str, object]]]:
    calls: list[tuple[str, object]] = []

    @plait.tool
    def echo(w: object = None) -> object:
        calls.append(("echo", w))
        return w

    @plait.tool
    def search(q: str) -> str:
        calls.append(("search", q))
        return q.upper()

    return [echo, search], calls


def exec_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path, plan: str) -> tuple[int, str]:
    """`plait exec` of `plan`: the exit code and stderr."""
    (tmp_path / "tools.py").write_text(TOOLS_FILE)
    (tmp_path / "plan.txt").write_text(plan, encoding="utf-8", errors="surrogatepass")
    with pytest.raises(SystemExit) as info:
        main(["exec", str(tmp_path / "plan.txt"), "--tools", str(tmp_path / "tools.py")])
    _, err = capsys.readouterr()
    return int(info.value.code or 0), err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "internal error" not in err
    return lines[0]


# -- $N inside a longer string: the same text whatever finished first -------------------------


def ordered_tools(first: str) -> list[plait.Tool]:
    """`slow` (task 1) and `other` (task 3); `first` says which finishes first, by handshake:
    with "other", task 1 waits until task 3 has finished, so task 2 starts after both."""
    other_done = asyncio.Event()
    two_done = asyncio.Event()

    @plait.tool
    async def slow(w: str) -> str:
        if first == "other":
            await other_done.wait()
        return w

    @plait.tool
    async def echo(w: str) -> str:
        two_done.set()
        return w

    @plait.tool
    async def other(w: str) -> str:
        if first == "slow":
            await two_done.wait()
        other_done.set()
        return w

    return [slow, echo, other]


PLAN_WITH_A_LATER_REFERENCE = '1. slow("a")\n2. echo(w="$1 later $3")\n3. other("c")\n'


@pytest.mark.parametrize("first", ["slow", "other"])
async def test_an_inner_reference_to_a_task_that_is_no_input_stays_literal(first):
    result = await plait.aexecute(PLAN_WITH_A_LATER_REFERENCE, tools=ordered_tools(first))
    assert result.status == "done", result.error
    assert [t.result for t in result.tasks] == ["a", "a later $3", "c"]


async def test_an_inner_reference_reads_the_same_after_a_resume(store_url):
    run_id = f"later-{uuid.uuid4().hex[:8]}"
    first = await plait.aexecute(
        PLAN_WITH_A_LATER_REFERENCE, tools=ordered_tools("other"), store=store_url, run_id=run_id
    )
    # resumed: every task settles from the log, and the log says what the run said
    again = await plait.aresume(run_id, tools=ordered_tools("slow"), store=store_url)
    assert [t.result for t in again.tasks] == [t.result for t in first.tasks]
    assert first.task(2).result == "a later $3"


# -- a line that calls a tool is a task or an error: never skipped ----------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('2. search "b"', "line 2: task 2: search is not called"),
        ("2. search", "line 2: task 2: search is not called"),
        ('search("b")', "line 2: search(...) has no task id"),
        ('2. search("b") 3. search("c")', "line 2: task 2: text after the call"),
        ('2. search("b") and more', "line 2: task 2: text after the call"),
    ],
)
def test_exec_of_a_plan_with_a_line_that_is_no_task_runs_nothing(line, message):
    tools, calls = counting_tools()
    with pytest.raises(PlanError) as info:
        plait.execute(f'1. search("a")\n{line}\n', tools=tools)
    assert message in str(info.value)
    assert calls == []  # rejected before anything ran


@pytest.mark.parametrize(
    "line", ['2) search("b")', '- 2. search("b")', '**2. search("b")**', '[2] search("b")']
)
def test_exec_runs_a_task_line_with_markdown_around_it(line):
    tools, calls = counting_tools()
    result = plait.execute(f'1. search("a")\n{line}\n', tools=tools)
    assert result.status == "done"
    assert [(t.id, t.result) for t in result.tasks] == [(1, "A"), (2, "B")]
    assert sorted(calls) == [("search", "a"), ("search", "b")]


@pytest.mark.parametrize(
    "plan",
    [
        '1. search("a")\n2. search "b"\n3. join()\n<END_OF_PLAN>',
        '1. search("a") 2. search("b")\n3. join()\n<END_OF_PLAN>',
        '{"tasks": [{"id": 1, "tool": "search", "args": ["a"]}, 2]}',
        "1. echo(...)\n2. join()\n<END_OF_PLAN>",
        "1. echo(" + "[" * 490 + "]" * 490 + ")\n2. join()\n<END_OF_PLAN>",
    ],
)
async def test_in_run_a_plan_error_goes_back_to_the_planner(plan, store_url):
    tools, calls = counting_tools()
    fixed = '1. search("a")\n2. search("b")\n3. join()\n<END_OF_PLAN>'
    if plan.startswith("1. search"):
        fixed = '2. search("b")\n3. join()\n<END_OF_PLAN>'
    finish = "Thought: both found.\nAction: Finish(A and B)"
    llm = ReplayLLM([plan, fixed, finish])
    events: list[ev.Event] = []
    result = await plait.arun(
        "a and b?", tools=tools, model=llm, store=store_url, on_event=events.append
    )
    assert result.status == "done", result.error
    assert result.answer == "A and B"
    assert result.replans == 1
    (invalid,) = [e.error for e in events if isinstance(e, ev.PlanInvalid)]
    assert invalid.startswith("line ") and "\n" not in invalid
    assert invalid in llm.calls[1].messages[-1]["content"]  # the planner was told
    assert ("search", "b") in calls
    assert all(t.status == "done" for t in result.tasks)


# -- JSON plans: only tasks[*] are tasks ------------------------------------------------------


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        (
            '{"tasks": [{"id": 1, "tool": "search", "args": ["a"]}],'
            ' "meta": {"x": {"id": 7, "tool": "search", "args": ["b"]}}}',
            "unknown key 'meta'",
        ),
        ('{"tasks": [1, {"id": 2, "tool": "search", "args": ["b"]}]}', "tasks[0] must be a task"),
        ('{"tasks": [{"id": 1, "tool": "echo", "args": {"w": 1}, "kwargs": "zzz"}]}', '"kwargs"'),
        (
            '{"tasks": [{"id": 1, "tool": "echo", "args": [' + "[" * 10_000 + "]" * 10_000 + "]}]}",
            "nested deeper than 100 levels",
        ),
    ],
)
def test_exec_of_a_malformed_json_plan_runs_nothing(plan, message):
    tools, calls = counting_tools()
    with pytest.raises(PlanError, match="line 1: ") as info:
        plait.execute(plan, tools=tools)
    assert message in str(info.value)
    assert calls == []


JSON_TASK = '{"id": 1, "tool": "search", "args": ["a"]}'


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        (
            f'{{"tasks": [{JSON_TASK}]}}\n2. search("x")\n',
            'line 2: text after the end of the JSON plan: 2. search("x")',
        ),
        (f"[{JSON_TASK}]\n\n[{JSON_TASK}]", "line 3: text after the end of the JSON plan: [{"),
        (f'```json\n[{JSON_TASK}]\n```\nmore', "line 4: text after the end of the JSON plan: more"),
        (f'[{JSON_TASK}, {{"tool": "join"}}, {JSON_TASK}]', "line 1: text after the end"),
    ],
)  # fmt: skip
def test_exec_of_a_json_plan_with_text_after_it_runs_nothing(plan, message, capsys, tmp_path):
    tools, calls = counting_tools()
    with pytest.raises(PlanError) as info:
        plait.execute(plan, tools=tools)
    assert message in str(info.value)
    assert calls == []
    # The CLI says so in one line, exit 2, instead of running the first plan alone.
    code, err = exec_cli(capsys, tmp_path, plan)
    assert code == 2 and message in one_line(err)


@pytest.mark.parametrize(
    "tail", ["", "\n\n", "\n```\n", "\n```\n<END_OF_PLAN>\n", "<END_OF_PLAN>", ', {"tool": "join"}']
)
def test_a_json_plan_may_end_with_a_fence_or_end_of_plan(tail):
    tools, calls = counting_tools()
    head = "```json\n" if "```" in tail else ""
    plan = f"{head}[{JSON_TASK}{tail}]" if tail.startswith(",") else f"{head}[{JSON_TASK}]{tail}"
    result = plait.execute(plan, tools=tools)
    assert [(t.id, t.result) for t in result.tasks] == [(1, "A")]
    assert calls == [("search", "a")]


# -- literals a run could not record: plan errors, never internal errors ----------------------

HOSTILE_LITERALS = [
    "...",
    "[" * 480 + "]" * 480,
    "[" * 490 + "]" * 490,
    '"\\udcff"',
    '"\udcff"',
    "{1, 2}",
    "{1: 2}",
    'b"x"',
    "1e999",
    "0x" + "f" * 14000,
]


@pytest.mark.parametrize("literal", HOSTILE_LITERALS, ids=lambda s: s[:12])
def test_a_literal_that_cannot_be_recorded_is_a_plan_error(literal, store_url):
    tools, calls = counting_tools()
    with pytest.raises(PlanError, match="line 2: task 2: ") as info:
        plait.execute(f'1. echo("ok")\n2. echo(w={literal})\n', tools=tools, store=store_url)
    assert "\n" not in str(info.value)
    assert calls == []
    opened = open_store(store_url)
    try:
        assert opened.runs() == []  # a rejected plan makes no run
    finally:
        opened.close()


@pytest.mark.parametrize(
    "literal", HOSTILE_LITERALS[:4] + HOSTILE_LITERALS[5:], ids=lambda s: s[:12]
)
def test_exec_cli_rejects_such_a_literal_in_one_line_with_exit_2(literal, capsys, tmp_path):
    code, err = exec_cli(capsys, tmp_path, f'1. echo("ok")\n2. echo(w={literal})\n')
    assert code == 2
    assert "line 2: task 2: " in one_line(err)


def test_what_passes_the_check_is_recorded_and_read_back_as_written(store_url):
    value = (
        '["$", "\\u00e9\\U0001f600", -0.0, 1e308, {"k": (1, (2,))}, None, "\\x00", 9'
        + "9" * 3999
        + "]"
    )
    tools, _ = counting_tools()
    run_id = f"carried-{uuid.uuid4().hex[:8]}"
    first = plait.execute(f"1. echo(w={value})\n", tools=tools, store=store_url, run_id=run_id)
    assert first.status == "done", first.error
    assert first.task(1).result[:6] == ["$", "\u00e9\U0001f600", -0.0, 1e308, {"k": [1, [2]]}, None]
    again = plait.resume(run_id, tools=tools, store=store_url)  # read back from the store
    assert settled(again) == settled(first)


def settled(result: plait.RunResult) -> list[dict[str, object]]:
    """The tasks of a result without their timings."""
    keys = ("id", "tool", "args", "status", "result", "error")
    return [{k: t[k] for k in keys} for t in result.to_dict()["tasks"]]


# -- a text plan that starts with a bracket is text -------------------------------------------


@pytest.mark.parametrize("head", ["[Thought] look it up", "{first: search}", "[1/1] one task"])
def test_a_text_plan_starting_with_a_bracket_runs_as_text(head):
    tools, calls = counting_tools()
    result = plait.execute(f'{head}\n1. search("a")\n', tools=tools)
    assert result.status == "done"
    assert [(t.id, t.result) for t in result.tasks] == [(1, "A")]
    assert calls == [("search", "a")]


# -- model replies that cannot be encoded -------------------------------------------------------


async def test_a_reply_holding_a_lone_surrogate_is_recorded_and_resumed(store_url):
    # A server's JSON may carry a lone `\udcff` escape: the seam makes it U+FFFD, so the
    # reply can be recorded (it crashed the run log before) and replayed on resume.
    tools, calls = counting_tools()
    plan = '1. search("a\udcff")\n2. join()\n<END_OF_PLAN>'
    result = await plait.arun(
        "a?",
        tools=tools,
        model=ReplayLLM([plan, "Action: Finish(A\udcff)"]),
        store=store_url,
        run_id="surrogate",
    )
    assert result.status == "done", result.error
    assert result.answer == "A\ufffd"
    assert calls == [("search", "a\ufffd")]
    again = await plait.aresume("surrogate", tools=tools, store=store_url)
    assert (again.status, again.answer) == ("done", "A\ufffd")
    assert calls == [("search", "a\ufffd")]  # nothing ran again
