"""The CLI contracts (plait.cli): exit codes, --json, stderr, --debug, --trace, and
end-to-end `plait run` on the replay model."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from plait.cli.main import main

TASK_KEYS = {"id", "tool", "args", "status", "result", "error", "started", "finished"}

FAILING_TOOLS = """
import plait

@plait.tool
def ok(text: str) -> str:
    return text

@plait.tool
def broken(text: str) -> str:
    raise RuntimeError("the service is down")
"""


def plait_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return info.value.code, out, err


def one_json_object(out: str) -> dict:
    data = json.loads(out)  # fails on anything but exactly one JSON value
    assert isinstance(data, dict)
    return data


def assert_one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- plait exec ------------------------------------------------------------------------


def test_exec_json(capsys, example_plan, example_tools):
    code, out, _ = plait_main(capsys, "exec", example_plan, "--tools", example_tools, "--json")
    assert code == 0
    data = one_json_object(out)
    assert {"run_id", "status", "answer", "tasks", "usage"} <= set(data)
    assert isinstance(data["run_id"], str) and data["run_id"]
    assert data["status"] == "done"
    assert float(data["answer"]) == 237.0  # 330 m - 93 m, computed from the fact corpus
    assert [t["id"] for t in data["tasks"]] == [1, 2, 3, 4, 5]
    for task in data["tasks"]:
        assert set(task) >= TASK_KEYS
        assert task["status"] == "done" and task["error"] is None
        assert 0 <= task["started"] <= task["finished"]
    first = data["tasks"][0]
    assert first["tool"] == "search"
    assert first["args"] == {"query": "Eiffel Tower height"}
    assert "330 metres" in first["result"]
    assert data["tasks"][2]["args"] == {"text": "$1", "unit": "metres"}
    assert data["tasks"][4]["result"] == 237.0
    # the two searches are independent: the extractions wait only for their own input
    t = {task["id"]: task for task in data["tasks"]}
    assert t[3]["started"] >= t[1]["finished"] and t[5]["started"] >= t[4]["finished"]
    assert data["usage"]["prompt_tokens"] == 0 and data["usage"]["completion_tokens"] == 0


def test_exec_without_json_prints_the_answer(capsys, example_plan, example_tools):
    code, out, err = plait_main(capsys, "exec", example_plan, "--tools", example_tools)
    assert code == 0
    assert out == "237.0\n"
    assert "done: 5 tasks" in err


def test_exec_json_form_plan(capsys, tmp_path, example_tools):
    plan = write(
        tmp_path / "p.json",
        json.dumps(
            {
                "tasks": [
                    {"id": 1, "tool": "calculate", "args": ["6 * 7"]},
                    {"id": 2, "tool": "calculate", "args": {"expression": "$1 + 1"}},
                ]
            }
        ),
    )
    code, out, _ = plait_main(capsys, "exec", plan, "--tools", example_tools, "--json")
    assert code == 0
    data = one_json_object(out)
    assert [t["result"] for t in data["tasks"]] == [42, 43]
    assert float(data["answer"]) == 43


def test_failed_task_exits_1_and_skips_dependents(capsys, tmp_path):
    tools = write(tmp_path / "t.py", FAILING_TOOLS)
    plan = write(
        tmp_path / "p.plan",
        '1. ok("a")\n2. broken("b")\n3. ok("$2 again")\n4. ok("$1")\n5. ok("$3 and $4")\n',
    )
    code, out, _ = plait_main(capsys, "exec", plan, "--tools", tools, "--json")
    assert code == 1
    data = one_json_object(out)
    assert data["status"] == "failed"
    assert data["answer"] is None  # the last task never ran
    status = {t["id"]: t["status"] for t in data["tasks"]}
    assert status == {1: "done", 2: "failed", 3: "skipped", 4: "done", 5: "skipped"}
    broken = data["tasks"][1]
    assert broken["error"] == "RuntimeError: the service is down"
    assert broken["result"] is None
    skipped = data["tasks"][2]
    assert skipped["started"] is None and skipped["result"] is None
    assert "$2" in skipped["error"]


def test_failed_task_without_json(capsys, tmp_path):
    tools = write(tmp_path / "t.py", FAILING_TOOLS)
    plan = write(tmp_path / "p.plan", '1. broken("b")\n2. ok($1)\n')
    code, out, err = plait_main(capsys, "exec", plan, "--tools", tools)
    assert code == 1
    assert out == ""
    assert "task 1 (broken) failed: RuntimeError: the service is down" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("plan_text", "message"),
    [
        ('1. search("Eiffel"\n2. join()\n', "line 1: unclosed parenthesis"),
        ('1. search("a")\n2. nope($1)\n', "line 2: task 2: unknown tool 'nope'"),
        ("1. calculate()\n", "line 1: task 1 (calculate): missing argument 'expression'"),
        ("1. calculate(expression=12)\n", "argument 'expression'"),
        ("1. search($3)\n", "not an earlier task"),
        ("1. a()\n1. b()\n", "used twice"),
        ("Thought: nothing to do\n", "no tasks"),
        ("", "no tasks"),
    ],
)
def test_bad_plan_exits_2_with_one_line(capsys, tmp_path, example_tools, plan_text, message):
    plan = write(tmp_path / "bad.plan", plan_text)
    code, out, err = plait_main(capsys, "exec", plan, "--tools", example_tools, "--json")
    assert code == 2
    assert out == ""
    line = assert_one_line(err)
    assert line.startswith("plait: ")
    assert message in line
    assert str(plan) in line  # says where


def test_bad_plan_with_debug_shows_a_traceback(capsys, tmp_path, example_tools):
    plan = write(tmp_path / "bad.plan", '1. search("x"\n')
    code, _, err = plait_main(capsys, "exec", plan, "--tools", example_tools, "--debug")
    assert code == 2
    assert "Traceback" in err
    assert "unclosed parenthesis" in err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("files", "tools", "message"),
    [
        ({}, "{tmp}/missing.py", "tools file not found"),
        ({"syn.py": "def f(:\n"}, "{tmp}/syn.py", "syn.py:1: syntax error"),
        ({"none.py": "X = 1\n"}, "{tmp}/none.py", "no @plait.tool functions found"),
        ({}, "plait_no_such_tools_module", "tools module not found"),
    ],
)
def test_bad_tools_exit_2_with_one_line(capsys, tmp_path, example_plan, files, tools, message):
    for name, text in files.items():
        write(tmp_path / name, text)
    code, out, err = plait_main(
        capsys, "exec", example_plan, "--tools", tools.format(tmp=tmp_path), "--json"
    )
    assert code == 2
    assert out == ""
    assert message in assert_one_line(err)


def test_bad_tools_with_debug_shows_a_traceback(capsys, tmp_path, example_plan):
    code, _, err = plait_main(
        capsys, "exec", example_plan, "--tools", tmp_path / "missing.py", "--debug"
    )
    assert code == 2
    assert "Traceback" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["exec", "{plan}", "--tools", "{tools}", "--bogus"],
        ["exec", "{plan}"],  # --tools is required
        ["exec", "--tools", "{tools}"],  # PLAN is required
        ["frobnicate"],
        ["run", "q", "--tools", "{tools}", "--max-replans", "-1"],
        ["run", "q", "--tools", "{tools}", "--max-replans", "many"],
        ["run", "q", "--tools", "{tools}", "--model", "bogus:thing"],
        ["run", "q", "--tools", "{tools}", "--model", "replay:{tmp}/none.json"],
        ["exec", "{tmp}/no.plan", "--tools", "{tools}"],
    ],
)
def test_bad_flags_exit_2_with_one_line(capsys, tmp_path, example_plan, example_tools, argv):
    args = [a.format(plan=example_plan, tools=example_tools, tmp=tmp_path) for a in argv]
    code, out, err = plait_main(capsys, *args)
    assert code == 2
    assert out == ""
    assert assert_one_line(err).startswith("plait")


def test_trace_file_for_exec(capsys, tmp_path, example_plan, example_tools):
    trace = tmp_path / "trace.json"
    code, out, _ = plait_main(
        capsys, "exec", example_plan, "--tools", example_tools, "--json", "--trace", trace
    )
    assert code == 0
    one_json_object(out)  # the trace does not go to stdout
    data = json.loads(trace.read_text())
    slices = [e for e in data["traceEvents"] if e["ph"] == "X"]
    assert sorted(e["name"] for e in slices) == [
        "1. search",
        "2. search",
        "3. extract_number",
        "4. extract_number",
        "5. calculate",
    ]
    for e in slices:
        assert {"ts", "dur", "pid", "tid"} <= set(e)
        assert e["dur"] >= 0
    # overlapping tasks sit on different lanes
    for a in slices:
        for b in slices:
            if a is not b and a["tid"] == b["tid"]:
                assert a["ts"] + a["dur"] <= b["ts"] or b["ts"] + b["dur"] <= a["ts"]


def test_subprocess_exec_from_stdin(tmp_path, example_tools):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "plait.cli",
            "exec",
            "-",
            "--tools",
            str(example_tools),
            "--json",
        ],
        input='1. calculate("2 ** 10")\n2. join()\n',
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    data = one_json_object(proc.stdout)
    assert data["tasks"][0]["result"] == 1024


def test_subprocess_bad_plan_has_no_traceback(tmp_path, example_tools):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}
    plan = write(tmp_path / "bad.plan", "1. calculate(\n")
    proc = subprocess.run(
        [sys.executable, "-m", "plait.cli", "exec", str(plan), "--tools", str(example_tools)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "unclosed parenthesis" in assert_one_line(proc.stderr)


# -- plait run on the replay model ------------------------------------------------------

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
FINISH = "Thought: 330 - 93 = 237.\nAction: Finish(The Eiffel Tower is 237 metres taller.)"
QUESTION = "How much taller is the Eiffel Tower than the Statue of Liberty?"


def tokens(text: str) -> int:
    return math.ceil(len(text) / 4)  # the replay model streams ~4-character tokens


def run_json(capsys, model: str, tools: Path, *extra: str) -> tuple[int, dict, str]:
    code, out, err = plait_main(
        capsys, "run", QUESTION, "--tools", tools, "--model", model, "--json", *extra
    )
    return code, one_json_object(out), err


def test_run_answers(capsys, replies, example_tools):
    code, data, _ = run_json(capsys, replies(PLAN, FINISH), example_tools)
    assert code == 0
    assert data["status"] == "done"
    assert data["answer"] == "The Eiffel Tower is 237 metres taller."
    assert [(t["id"], t["tool"], t["status"]) for t in data["tasks"]] == [
        (1, "search", "done"),
        (2, "search", "done"),
        (3, "extract_number", "done"),
        (4, "extract_number", "done"),
        (5, "calculate", "done"),
    ]
    assert data["tasks"][4]["result"] == 237.0
    usage = data["usage"]
    calls = usage["calls"]
    assert [c["role"] for c in calls] == ["planner", "joiner"]
    joiner = calls[1]
    assert joiner["completion_tokens"] == tokens(FINISH)
    assert joiner["prompt_tokens"] > 0
    assert usage["prompt_tokens"] == sum(c["prompt_tokens"] for c in calls)
    assert usage["completion_tokens"] == sum(c["completion_tokens"] for c in calls)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_run_usage_of_a_plan_without_join(capsys, replies, example_tools):
    plan = PLAN.replace("6. join()\n", "")  # the stream ends at <END_OF_PLAN>
    code, data, _ = run_json(capsys, replies(plan, FINISH), example_tools)
    assert code == 0
    planner, joiner = data["usage"]["calls"]
    assert planner["completion_tokens"] == tokens(plan.replace("<END_OF_PLAN>", ""))
    assert planner["prompt_tokens"] > 0
    assert joiner["completion_tokens"] == tokens(FINISH)
    assert data["usage"]["completion_tokens"] == (
        planner["completion_tokens"] + joiner["completion_tokens"]
    )


def test_run_usage_of_a_planner_call_ending_in_join(capsys, replies, example_tools):
    _, data, _ = run_json(capsys, replies(PLAN, FINISH), example_tools)
    planner = data["usage"]["calls"][0]
    assert planner["completion_tokens"] > 0
    assert planner["prompt_tokens"] > 0


def test_run_without_json(capsys, replies, example_tools):
    code, out, err = plait_main(
        capsys, "run", QUESTION, "--tools", example_tools, "--model", replies(PLAN, FINISH)
    )
    assert code == 0
    assert out == "The Eiffel Tower is 237 metres taller.\n"
    assert "Traceback" not in err


REPLAN = "Thought: I only have one height.\nAction: Replan(need the Statue of Liberty height)"


def test_run_replans(capsys, replies, example_tools):
    first = '1. search("Eiffel Tower height")\n2. join()\n<END_OF_PLAN>'
    second = (
        '2. search("Statue of Liberty height")\n'
        '3. extract_number($1, unit="metres")\n'
        '4. extract_number($2, unit="metres")\n'
        '5. calculate("$3 - $4")\n'
        "6. join()\n<END_OF_PLAN>"
    )
    code, data, _ = run_json(
        capsys, replies(first, REPLAN, second, "Action: Finish(237 metres)"), example_tools
    )
    assert code == 0
    assert data["answer"] == "237 metres"
    assert data["replans"] == 1
    assert [t["id"] for t in data["tasks"]] == [1, 2, 3, 4, 5]
    assert data["tasks"][2]["result"] == 330.0  # $1 from the first round
    assert data["tasks"][4]["result"] == 237.0
    assert [c["role"] for c in data["usage"]["calls"]] == ["planner", "joiner", "planner", "joiner"]


def test_run_fixes_an_invalid_plan(capsys, replies, example_tools):
    broken = '1. search("Eiffel Tower height"\n2. join()\n<END_OF_PLAN>'
    code, data, _ = run_json(capsys, replies(broken, PLAN, FINISH), example_tools)
    assert code == 0
    assert data["answer"] == "The Eiffel Tower is 237 metres taller."
    assert len(data["tasks"]) == 5


def test_run_max_replans_0_ends_without_an_answer(capsys, replies, example_tools):
    broken = '1. search("Eiffel Tower height"\n2. join()\n<END_OF_PLAN>'
    code, data, _ = run_json(
        capsys, replies(broken, PLAN, FINISH), example_tools, "--max-replans", "0"
    )
    assert code == 1
    assert data["status"] == "failed"
    assert data["answer"] is None
    assert "unclosed parenthesis" in data["error"]
    assert data["tasks"] == []


def test_run_replan_past_the_limit_exits_1(capsys, replies, example_tools):
    first = '1. search("Eiffel Tower height")\n2. join()\n<END_OF_PLAN>'
    code, data, _ = run_json(capsys, replies(first, REPLAN), example_tools, "--max-replans", "0")
    assert code == 1
    assert data["status"] == "failed"
    assert data["answer"] is None
    assert data["tasks"][0]["status"] == "done"


def test_run_out_of_replies_exits_1(capsys, replies, example_tools):
    code, data, _ = run_json(capsys, replies(PLAN), example_tools)
    assert code == 1
    assert data["answer"] is None
    assert "no reply left" in data["error"]


def test_run_trace_has_a_slice_per_task_and_llm_call(capsys, tmp_path, replies, example_tools):
    trace = tmp_path / "run.trace.json"
    code, data, _ = run_json(capsys, replies(PLAN, FINISH), example_tools, "--trace", str(trace))
    assert code == 0
    events = json.loads(trace.read_text())["traceEvents"]
    slices = [e for e in events if e["ph"] == "X"]
    assert sorted(e["name"] for e in slices if e["cat"] == "task") == [
        f"{t['id']}. {t['tool']}" for t in data["tasks"]
    ]
    llm = [e for e in slices if e["cat"] == "llm"]
    assert [e["name"].split()[0] for e in llm] == ["planner", "joiner"]
    assert len(llm) == len(data["usage"]["calls"])


def test_plait_script_bad_flag(tmp_path):
    script = Path(sys.executable).with_name("plait")
    if not script.exists():
        pytest.skip("the plait console script is not installed next to this Python")
    proc = subprocess.run(
        [str(script), "run", "q", "--tools", "x.py", "--no-such-flag"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "--no-such-flag" in assert_one_line(proc.stderr)


def test_plait_script_version():
    script = Path(sys.executable).with_name("plait")
    if not script.exists():
        pytest.skip("the plait console script is not installed next to this Python")
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "0.1.0" in proc.stdout


# -- strict JSON ---------------------------------------------------------------------------

NON_FINITE_TOOLS = """
import plait

@plait.tool
def nan() -> float:
    return float("nan")

@plait.tool
def big() -> float:
    return float("1e999")

@plait.tool
def pair(a: float, b: float) -> list:
    return [a, -b, {"x": a}]
"""


def refuse_constant(constant: str) -> None:
    raise AssertionError(f"not strict JSON: {constant}")


def test_json_is_strict_json_non_finite_floats_are_null(capsys, tmp_path):
    tools = write(tmp_path / "tools.py", NON_FINITE_TOOLS)
    plan = write(tmp_path / "p.plan", "1. nan()\n2. big()\n3. pair($1, $2)\n")
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    argv = ("--tools", tools, "--store", store, "--run-id", "N", "--json")
    code, out, _ = plait_main(capsys, "exec", plan, *argv)
    assert code == 0
    data = json.loads(out, parse_constant=refuse_constant)
    assert [t["result"] for t in data["tasks"]] == [None, None, [None, None, {"x": None}]]
    code, out, _ = plait_main(capsys, "show", "N", "--store", store, "--json")
    assert code == 0
    shown = json.loads(out, parse_constant=refuse_constant)
    assert [t["result"] for t in shown["tasks"]] == [None, None, [None, None, {"x": None}]]
    code, out, _ = plait_main(capsys, "runs", "--store", store, "--json")
    json.loads(out, parse_constant=refuse_constant)
