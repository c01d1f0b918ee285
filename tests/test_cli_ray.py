"""`--backend ray` on the CLI, each command a real `plait` process joining the test cluster
through RAY_ADDRESS: the output contract is the local backend's, a run interrupted on one
backend resumes on the other, and a batch runs its tools on the cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from plait import open_store

pytestmark = pytest.mark.ray

GATED_TOOLS = """
import os
from pathlib import Path

import plait

MARKS = Path(__file__).with_name("marks")


@plait.tool
def step(n: int) -> int:
    # One mark per execution, named by the process that ran it.
    MARKS.mkdir(exist_ok=True)
    (MARKS / f"{n}-{os.getpid()}").touch()
    return n * 10


@plait.tool
def gate(after: int) -> int:
    MARKS.mkdir(exist_ok=True)
    (MARKS / "gate-started").touch()
    while not (MARKS / "open").exists():
        import time

        time.sleep(0.01)
    return after + 1
"""


def plait(*argv: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plait.cli", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


def comparable(result: dict[str, Any]) -> dict[str, Any]:
    """A --json result without what differs between any two runs (ids, times)."""
    return {
        "status": result["status"],
        "answer": result["answer"],
        "error": result["error"],
        "tasks": [
            {k: t[k] for k in ("id", "tool", "args", "status", "result", "error")}
            for t in result["tasks"]
        ],
    }


def test_exec_output_is_the_same_on_both_backends(ray_cluster, example_plan, example_tools):
    runs = {}
    for backend in ("local", "ray"):
        out = plait("exec", example_plan, "--tools", example_tools, "--json", "--backend", backend)
        assert out.returncode == 0, out.stderr
        runs[backend] = comparable(json.loads(out.stdout))
    assert runs["ray"] == runs["local"]
    assert runs["ray"]["status"] == "done"


def test_a_run_interrupted_locally_resumes_on_ray_without_redoing_work(ray_cluster, tmp_path):
    tools = tmp_path / "gated.py"
    tools.write_text(GATED_TOOLS)
    plan = tmp_path / "p.plan"
    plan.write_text("1. step(1)\n2. step(2)\n3. gate($1)\n4. step($3)\n")
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    marks = tmp_path / "marks"
    first = subprocess.Popen(
        [sys.executable, "-m", "plait.cli", "exec", plan, "--tools", tools, "--store", store,
         "--run-id", "r", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (marks / "gate-started").exists():
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.02)
    time.sleep(0.3)  # steps 1 and 2 are done; let the store's writer commit them
    first.send_signal(signal.SIGINT)
    time.sleep(0.3)
    (marks / "open").touch()  # a local thread cannot be stopped: let the gate end
    assert first.wait(timeout=60) == 130
    ran_locally = {p.name for p in marks.iterdir() if p.name[0].isdigit()}
    assert {m.split("-")[0] for m in ran_locally} == {"1", "2"}

    second = subprocess.Popen(
        [sys.executable, "-m", "plait.cli", "resume", "r", "--tools", tools, "--store", store,
         "--json", "--backend", "ray"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    stdout, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr
    result = json.loads(stdout)
    assert [t["result"] for t in result["tasks"]] == [10, 20, 11, 110]
    again = {p.name for p in marks.iterdir() if p.name[0].isdigit()} - ran_locally
    # Only task 4, step(11), ran on resume (1 and 2 were recorded), and on a Ray worker.
    assert [m.split("-")[0] for m in again] == ["11"]
    assert int(next(iter(again)).split("-")[1]) not in (first.pid, second.pid)


def test_batch_runs_its_tools_on_the_cluster(ray_cluster, tmp_path):
    tools = tmp_path / "tools.py"
    tools.write_text(
        "import os\nimport plait\n\n"
        "@plait.tool\ndef pid(word: str) -> str:\n    return f'{word}:{os.getpid()}'\n"
    )
    items = [{"id": f"q{i}", "question": f"[q{i}] who runs {i}?"} for i in range(6)]
    replies = {
        f"[q{i}]": [f'1. pid("w{i}")\njoin()\n', f"Action: Finish(answer {i})"] for i in range(6)
    }
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(x) + "\n" for x in items))
    (tmp_path / "replies.json").write_text(json.dumps(replies))
    out = tmp_path / "out.jsonl"
    model = f"replay:{tmp_path / 'replies.json'}"
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    done = plait(
        "batch", inp, "--tools", tools, "--model", model, "--out", out, "--backend", "ray",
        "--store", store, "--run-id", "b",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted((x["id"], x["status"], x["answer"]) for x in lines) == [
        (f"q{i}", "done", f"answer {i}") for i in range(6)
    ]
    opened = open_store(store)
    try:
        results = [
            json.loads(r.data)["result"]
            for i in range(6)
            for r in opened.records(f"b:q{i}")
            if r.kind == "settle"
        ]
    finally:
        opened.close()
    assert len(results) == 6
    assert all(int(r.split(":")[1]) != os.getpid() for r in results)


def test_an_unreachable_cluster_is_one_line_and_exit_2(ray_cluster, example_plan, example_tools):
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9"}  # nothing listens on the discard port
    out = plait("exec", example_plan, "--tools", example_tools, "--backend", "ray", env=env)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("plait: cannot start or reach the Ray cluster"), out.stderr
    assert "Traceback" not in out.stderr


def test_an_unknown_backend_is_a_usage_error(example_plan, example_tools):
    out = plait("exec", example_plan, "--tools", example_tools, "--backend", "dask")
    assert out.returncode == 2
    assert "'dask' is not one of 'local', 'ray'" in out.stderr


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_what_tools_print_never_reaches_stdout(ray_cluster, tmp_path, backend):
    tools = tmp_path / "noisy.py"
    tools.write_text(
        "import plait\n\n@plait.tool\ndef noisy(n: int) -> int:\n"
        "    print('chatter', n, flush=True)\n    return n\n"
    )
    plan = tmp_path / "p.plan"
    plan.write_text("".join(f"{i}. noisy({i})\n" for i in range(1, 9)))
    out = plait("exec", plan, "--tools", tools, "--json", "--backend", backend)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)  # exactly one JSON value: no chatter in it
    assert [t["result"] for t in result["tasks"]] == list(range(1, 9))
    if backend == "local":  # threads print at once: their words may interleave
        assert out.stderr.count("chatter") == 8
