"""Hostile command-line input (issue 14): bytes that are not UTF-8, paths that cannot be
written, bad flags, tools files that exit or raise anything at import.

Each case asserts the exit code (2 for invalid input, found before anything runs), exactly
one line on stderr with no traceback, stdout left clean, and that nothing was lost or run:
a marker file a tool would write stays absent, a file that was there is still there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from plait.cli.main import Again, main

SRC = Path(__file__).resolve().parents[2] / "src"

# Tools that leave a mark when they run: "nothing ran" is checked, not assumed.
MARKING_TOOLS = """
import os
import plait

@plait.tool
def mark(text: str) -> str:
    with open(os.environ["PLAIT_TEST_MARK"], "a") as f:
        f.write(text + "\\n")
    return text
"""
PLAN = '1. mark("a")\n2. mark("b $1")\n'


def plait(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def plait_proc(*argv: str | bytes, stdin: bytes = b"", **env: str) -> tuple[int, str, str]:
    """The real process: argv as bytes, stdin as bytes, as a shell would pass them."""
    proc = subprocess.run(
        [sys.executable, "-m", "plait.cli", *argv],
        input=stdin,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(SRC), **env},
        timeout=120,
    )
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode(errors="replace")


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "internal error" not in err, err
    return lines[0]


@pytest.fixture
def marking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path]:
    """(tools file, plan file, marker file a tool call would create)."""
    marker = tmp_path / "ran.txt"
    monkeypatch.setenv("PLAIT_TEST_MARK", str(marker))
    tools = tmp_path / "marking.py"
    tools.write_text(MARKING_TOOLS)
    plan = tmp_path / "p.plan"
    plan.write_text(PLAN)
    return tools, plan, marker


# -- bytes that are not UTF-8 ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "byte", "offset"),
    [
        (b'1. mark("a\xff")\n', "0xff", 10),
        (b'1. mark("ok")\n2. mark("\xc3\x28")\n', "0xc3", 23),  # a cut two-byte sequence
        (b"\xed\xb3\xbf", "0xed", 0),  # a surrogate, encoded: not UTF-8 either
    ],
)
def test_a_plan_file_that_is_not_utf8_is_named_with_the_byte_offset(
    capsys, tmp_path, marking, data, byte, offset
):
    tools, _, marker = marking
    plan = tmp_path / "bad.plan"
    plan.write_bytes(data)
    code, out, err = plait(capsys, "exec", plan, "--tools", tools, "--json")
    assert (code, out) == (2, "")
    assert one_line(err) == f"plait: {plan}: not UTF-8: byte {byte} at offset {offset}"
    assert not marker.exists()


def test_stdin_that_is_not_utf8_is_named_with_the_byte_offset(marking):
    tools, _, marker = marking
    code, out, err = plait_proc(
        "exec", "-", "--tools", str(tools), "--json", stdin=b'1. mark("\x80")\n'
    )
    assert (code, out) == (2, "")
    assert one_line(err) == "plait: stdin: not UTF-8: byte 0x80 at offset 9"
    assert not marker.exists()


def test_a_plan_with_a_byte_order_mark_runs(capsys, tmp_path, marking):
    tools, _, marker = marking
    plan = tmp_path / "bom.plan"
    plan.write_bytes(b"\xef\xbb\xbf" + PLAN.encode())
    code, out, _ = plait(capsys, "exec", plan, "--tools", tools, "--json")
    assert code == 0
    assert json.loads(out)["answer"] == "b a"
    assert marker.read_text() == "a\nb a\n"


@pytest.mark.parametrize("where", ["question", "run-id"])
def test_argv_that_is_not_utf8_exits_2_before_anything_runs(tmp_path, marking, where):
    tools, _, marker = marking
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    question: bytes = b"How tall is \xff?" if where == "question" else b"q"
    run_id: list[str | bytes] = ["--run-id", b"r\xfe1"] if where == "run-id" else []
    code, out, err = plait_proc(
        "run", question, "--tools", str(tools), "--model", "replay:/nonexistent.json",
        "--store", store, *run_id,
    )  # fmt: skip
    assert (code, out) == (2, "")
    line = one_line(err)
    assert "not UTF-8: byte 0x" in line
    assert "QUESTION" in line if where == "question" else "--run-id" in line
    assert not (tmp_path / "runs.db").exists()  # no run was recorded either
    assert not marker.exists()


@pytest.mark.parametrize("run_id", ["", "a\nb", "tab\there"])
def test_a_run_id_that_is_not_printable_text_exits_2(capsys, marking, run_id):
    tools, plan, marker = marking
    code, out, err = plait(capsys, "exec", plan, "--tools", tools, "--run-id", run_id)
    assert (code, out) == (2, "")
    assert "--run-id" in one_line(err)
    assert not marker.exists()


def test_a_tools_file_that_is_not_utf8_exits_2(capsys, tmp_path, marking):
    _, plan, _ = marking
    tools = tmp_path / "latin1.py"
    tools.write_bytes(b"import plait\n# caf\xe9\n")
    code, out, err = plait(capsys, "exec", plan, "--tools", tools)
    assert (code, out) == (2, "")
    assert str(tools) in one_line(err) or "latin1.py" in one_line(err)


# -- output paths: checked before anything runs ------------------------------------------------


def output_cases(tmp_path: Path) -> dict[str, Path]:
    afile = tmp_path / "a-file"
    afile.write_text("keep me\n")
    return {
        "missing directory": tmp_path / "no" / "such" / "dir" / "out.json",
        "parent is a file": afile / "out.json",
        "is a directory": tmp_path,
    }


@pytest.mark.parametrize("case", ["missing directory", "parent is a file", "is a directory"])
def test_trace_to_a_path_that_cannot_be_written_exits_2_before_running(
    capsys, tmp_path, marking, case
):
    tools, plan, marker = marking
    path = output_cases(tmp_path)[case]
    code, out, err = plait(capsys, "exec", plan, "--tools", tools, "--trace", path, "--json")
    assert (code, out) == (2, "")
    line = one_line(err)
    assert line.startswith("plait exec: ") and "--trace" in line
    assert not marker.exists()  # no tool ran: the run's work is not lost at the end
    assert (tmp_path / "a-file").read_text() == "keep me\n"


@pytest.mark.parametrize("case", ["missing directory", "parent is a file", "is a directory"])
def test_batch_out_to_a_path_that_cannot_be_written_exits_2_before_running(
    capsys, tmp_path, marking, case
):
    tools, _, marker = marking
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": 1, "question": "q"}\n')
    path = output_cases(tmp_path)[case]
    code, out, err = plait(
        capsys, "batch", inp, "--tools", tools, "--model", "replay:/nonexistent", "--out", path
    )
    assert (code, out) == (2, "")
    assert "--out" in one_line(err)
    assert not marker.exists()


def test_show_trace_to_a_missing_directory_exits_2(capsys, tmp_path, marking):
    tools, plan, _ = marking
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    assert plait(capsys, "exec", plan, "--tools", tools, "--store", store, "--run-id", "S")[0] == 0
    code, out, err = plait(
        capsys, "show", "S", "--store", store, "--trace", tmp_path / "nope" / "t.json"
    )
    assert (code, out) == (2, "")
    assert "--trace" in one_line(err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_trace_into_a_read_only_directory_exits_2_before_running(capsys, tmp_path, marking):
    tools, plan, marker = marking
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        code, out, err = plait(capsys, "exec", plan, "--tools", tools, "--trace", locked / "t.json")
    finally:
        locked.chmod(0o700)
    assert (code, out) == (2, "")
    assert "cannot create a file in" in one_line(err)
    assert not marker.exists()


def test_a_trace_that_fails_at_the_end_loses_nothing_else(capsys, tmp_path, marking, monkeypatch):
    # Checked before the run, the path can still fail when written (a full disk, a race):
    # the result is printed all the same and the failure is one line, exit 1.
    from plait.runs.trace import TraceRecorder

    def full(self: TraceRecorder, path: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(TraceRecorder, "write", full)
    tools, plan, marker = marking
    trace = tmp_path / "t.json"
    code, out, err = plait(capsys, "exec", plan, "--tools", tools, "--trace", trace, "--json")
    assert code == 1
    assert json.loads(out)["status"] == "done"
    assert one_line(err) == f"plait: cannot write the trace to {trace}: No space left on device"
    assert marker.read_text() == "a\nb a\n"


# -- tools files that exit or raise at import -----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("import sys\nsys.exit(0)\n", "the module called sys.exit(0)"),
        ("import sys\nsys.exit(3)\n", "the module called sys.exit(3)"),
        ("raise SystemExit('bye')\n", "the module called sys.exit('bye')"),
        ("import os\nraise GeneratorExit\n", "import failed: GeneratorExit"),
        ("class Odd(BaseException):\n    pass\nraise Odd('odd')\n", "import failed: Odd: odd"),
        ("raise RuntimeError('line one\\nline two')\n", "RuntimeError: line one line two"),
        ("import asyncio\nraise asyncio.CancelledError()\n", "import failed: CancelledError"),
    ],
)
def test_a_tools_file_that_exits_or_raises_at_import_exits_2_naming_it(
    capsys, tmp_path, marking, body, message
):
    _, plan, marker = marking
    tools = tmp_path / "hostile_tools.py"
    tools.write_text(body)
    code, out, err = plait(capsys, "exec", plan, "--tools", tools, "--json")
    assert (code, out) == (2, "")
    line = one_line(err)
    assert line.startswith(f"plait: {tools}: ")
    assert message in line
    assert not marker.exists()


def test_sys_exit_0_in_a_tools_file_is_an_error_in_the_real_process(tmp_path, marking):
    _, plan, _ = marking
    tools = tmp_path / "exits.py"
    tools.write_text("import sys\nsys.exit(0)\n")
    replies = tmp_path / "replies.json"
    replies.write_text('["1. mark(\\"a\\")\\n", "Action: Finish(a)"]')
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": 1, "question": "q"}\n')
    batch = ["batch", str(inp), "--model", f"replay:{replies}", "--out", str(tmp_path / "o")]
    for command in (["exec", str(plan)], ["run", "q", "--model", f"replay:{replies}"], batch):
        code, out, err = plait_proc(*command, "--tools", str(tools))
        assert (code, out) == (2, "")
        assert "the module called sys.exit(0)" in one_line(err)


def test_a_tools_file_printing_at_import_leaves_json_stdout_clean(capsys, tmp_path, marking):
    _, plan, _ = marking
    tools = tmp_path / "noisy.py"
    tools.write_text("print('hello from import')\n" + MARKING_TOOLS)
    code, out, err = plait(capsys, "exec", plan, "--tools", tools, "--json")
    assert code == 0
    assert json.loads(out)["status"] == "done"
    assert "hello from import" in err


# -- bad flags -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["exec", "{plan}", "--tools", "{tools}", "--backend", "cloud"],
        ["batch", "{tmp}/in.jsonl", "--tools", "{tools}", "--out", "{tmp}/o", "--concurrency", "0"],
        ["runs", "--limit", "0"],
        ["runs", "rm"],  # which?
        ["runs", "prune"],  # older than what?
        ["runs", "frobnicate"],
        ["run", "q", "--tools", "{tools}", "--temperature", "nan"],
        ["run", "q", "--tools", "{tools}", "--max-tokens", "-5"],
        ["run", "q", "--tools", "{tools}", "--model", "gpt-4o-mini"],
        ["run", "q", "--tools", "{tools}", "--model", "ollama:"],
        ["exec", "{tmp}", "--tools", "{tools}"],  # a directory is no plan
        ["exec", "{plan}", "--tools", ""],
        ["exec", "{plan}", "--tools", "{tmp}/missing.py"],
        ["-Z"],
    ],
)
def test_bad_flags_exit_2_with_one_line_and_run_nothing(capsys, tmp_path, marking, argv):
    tools, plan, marker = marking
    (tmp_path / "in.jsonl").write_text('{"id": 1, "question": "q"}\n')
    args = [a.format(plan=plan, tools=tools, tmp=tmp_path) for a in argv]
    code, out, err = plait(capsys, *args)
    assert (code, out) == (2, "")
    assert one_line(err).startswith("plait")
    assert not marker.exists()


# -- nothing leaked ---------------------------------------------------------------------


def test_the_resume_hint_names_the_tools_given_and_no_password():
    again = Again("my tools/t.py", "postgresql://plait:s3cret@db.example/runs", "ray")
    hint = again.resume("r 1")
    assert hint == (
        "plait resume 'r 1' --tools 'my tools/t.py' "
        "--store 'postgresql://plait:***@db.example/runs' --backend ray"
    )
    assert "s3cret" not in hint
    assert "s3cret" not in again.show("r 1")
    # without --store, the default store (where the resume will look too) is not repeated
    assert Again("t.py", None, "local").resume("x") == "plait resume x --tools t.py"
