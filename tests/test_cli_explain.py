"""A newcomer can see why (issue 13, item 3): `plait run -v` shows the plan as it streams
and the joiner's reply, the live view shows the joiner's reply, `plait show` shows both
replies with the tasks, and a run without an answer ends with the reason in words."""

from __future__ import annotations

from plait.cli.live import LiveView
from plait.cli.terminal import terminal_text
from plait.core import events as ev
from test_cli import FINISH, PLAN, QUESTION, REPLAN, plait_main
from test_cli_store import db

FIRST = '1. search("Eiffel Tower height")\n2. join()\n<END_OF_PLAN>'


def run(capsys, model: str, tools, *extra: str) -> tuple[int, str, str]:
    return plait_main(capsys, "run", QUESTION, "--tools", tools, "--model", model, *extra)


def test_run_verbose_prints_the_plan_and_the_joiners_reply_line_by_line(
    capsys, replies, example_tools
):
    code, out, err = run(capsys, replies(PLAN, FINISH), example_tools, "-v")
    assert code == 0
    assert out == "The Eiffel Tower is 237 metres taller.\n"  # stdout is still the answer only
    lines = err.splitlines()
    plan = [line.split("│", 1)[1].strip() for line in lines if line.strip().startswith("planner │")]
    assert plan[:6] == [
        "Thought: Both heights can be looked up at once.",
        '1. search("Eiffel Tower height")',
        '2. search("Statue of Liberty height")',
        '3. extract_number($1, unit="metres")',
        '4. extract_number($2, unit="metres")',
        '5. calculate("$3 - $4")',
    ]
    joiner = [
        line.split("│", 1)[1].strip() for line in lines if line.strip().startswith("joiner │")
    ]
    assert joiner == FINISH.splitlines()
    # in the order they were written: the plan, then the joiner's reply
    first_plan = next(i for i, line in enumerate(lines) if "planner │" in line)
    first_join = next(i for i, line in enumerate(lines) if "joiner │" in line)
    assert first_plan < first_join


def test_run_without_verbose_still_shows_the_joiners_reply(capsys, replies, example_tools):
    code, _, err = run(capsys, replies(PLAN, FINISH), example_tools)
    assert code == 0
    (line,) = [x for x in err.splitlines() if x.startswith("● joiner")]
    assert line.endswith(": " + " ".join(FINISH.split()))
    assert "planner │" not in err  # the plan line by line is -v's


def test_a_run_without_an_answer_ends_with_the_reason(capsys, replies, example_tools):
    code, out, err = run(capsys, replies(FIRST, REPLAN), example_tools, "--max-replans", "0")
    assert code == 1
    assert out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ")
    assert "need the Statue of Liberty height" in last  # the joiner's own words
    assert "Traceback" not in err
    # and the reply it came from was on screen
    assert any(x.startswith("● joiner") and "Replan(need the Statue" in x for x in err.splitlines())


def test_show_prints_the_planners_and_joiners_replies(capsys, tmp_path, replies, example_tools):
    store = db(tmp_path)
    model = replies(FIRST, REPLAN, PLAN.replace("1. search", "7. search"), FINISH)
    code, _, _ = run(capsys, model, example_tools, "--store", store, "--run-id", "W", "--json")
    code, out, _ = plait_main(capsys, "show", "W", "--store", store)
    assert code == 0
    section = out.split("\nreplies\n", 1)[1].split("\ntimeline", 1)[0]
    assert section.splitlines() == [
        "  planner (call 1)",
        '    │ 1. search("Eiffel Tower height")',
        "    │ 2. join()",
        "  joiner (call 2)",
        *[f"    │ {x}" for x in REPLAN.splitlines()],
        "  planner (call 3)",
        *[
            f"    │ {x}"
            for x in PLAN.replace("1. search", "7. search").splitlines()
            if x != "<END_OF_PLAN>"
        ],
        "  joiner (call 4)",
        *[f"    │ {x}" for x in FINISH.splitlines()],
    ]
    assert out.index("\ntasks\n") < out.index("\nreplies\n") < out.index("\ntimeline")


def test_live_view_shows_the_line_being_written_and_forgets_a_lost_reply():
    view = LiveView(verbose=False)
    try:
        view(ev.LLMStarted(0.0, 1, "planner", "m"))
        view(ev.LLMToken(0.1, 1, '1. search("Eif'))
        assert '… planner writing (1 tokens) 1. search("Eif' in view._render().plain
        view(ev.LLMToken(0.2, 1, 'fel")\n2. sea'))
        assert view._render().plain.endswith("2. sea")
        view(ev.LLMRetrying(0.3, 1, 1, "connection lost", 0.0))  # what streamed is not the reply
        assert view._render().plain.rstrip().endswith("(2 tokens)")
        view(ev.LLMFinished(0.4, 1, text="1. x()\n"))
        assert view._render().plain == ""
    finally:
        view.stop()


# -- what tools and models say cannot act on the terminal ------------------------------------

HOSTILE = "ok\x1b]0;pwned\x07\x1b[2J\x9b31m\rgone\tend"


def test_terminal_text_shows_every_control_character_as_its_escape():
    assert terminal_text(HOSTILE) == "ok\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\x0dgone end"
    assert terminal_text("a\nb") == "a b"
    assert terminal_text("a\nb\x00", newlines=True) == "a\nb\\x00"
    assert terminal_text("Eiffel — 330 m ✓") == "Eiffel — 330 m ✓"


def test_live_view_prints_no_escape_a_tool_or_model_wrote(capsys):
    view = LiveView(verbose=True)
    try:
        view(ev.TaskStarted(0.0, 1, "echo\x1b[2J"))
        assert "\x1b" not in view._render().plain
        view(ev.TaskFinished(0.1, 1, "done", result=HOSTILE))
        view(ev.TaskStarted(0.1, 2, "echo"))
        view(ev.TaskFinished(0.2, 2, "failed", error=HOSTILE))
        view(ev.LLMStarted(0.2, 3, "joiner", "m"))
        view(ev.LLMToken(0.3, 3, HOSTILE))
        assert "\x1b" not in view._render().plain
        view(ev.LLMFinished(0.4, 3, text=HOSTILE + "\n" + HOSTILE))
        view(ev.PlanInvalid(0.5, HOSTILE))
    finally:
        view.stop()
    err = capsys.readouterr().err
    assert "ok\\x1b]0;pwned\\x07\\x1b[2J" in err  # shown, not acted on
    assert not set(err) & {"\x1b", "\x07", "\x9b", "\r"}


def test_show_prints_no_escape_a_tool_or_model_wrote(capsys, tmp_path):
    tools = tmp_path / "tools.py"
    tools.write_text(
        f"import plait\n\n@plait.tool\ndef echo(w: str) -> str:\n    return {HOSTILE!r}\n"
    )
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    plan = tmp_path / "plan.txt"
    plan.write_text('1. echo("a")\n2. echo("b\\x1b[2J")\n')
    code, _, _ = plait_main(capsys, "exec", plan, "--tools", tools, "--store", url, "--run-id", "E")
    assert code == 0
    code, out, _ = plait_main(capsys, "show", "E", "--store", url)
    assert code == 0
    assert "answer: ok\\x1b]0;pwned\\x07\\x1b[2J" in out  # shown, not acted on
    assert "ok\\u001b]0;pwned" in out  # a task's result is shown as JSON
    assert not set(out) & {"\x1b", "\x07", "\x9b", "\r"}
