"""`plait run` and `plait batch` with --plan-cache, --draft-model, --samples/--agree/--judge."""

from __future__ import annotations

import json
from pathlib import Path

from test_cli import assert_one_line, one_json_object, plait_main

PLAN = (
    "Thought: look both up.\n"
    '1. search("Eiffel Tower")\n'
    '2. search("Statue of Liberty")\n'
    "3. which_larger($1, $2)\n"
    "4. join()\n<END_OF_PLAN>"
)
Q1 = "Which is taller, the Eiffel Tower or the Statue of Liberty?"
Q2 = "Which is taller, the Burj Khalifa or the Tokyo Skytree?"
Q3 = "Which is taller, the CN Tower or the Leaning Tower of Pisa?"


def replay(tmp_path: Path, name: str, replies: object) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(replies))
    return f"replay:{path}"


def test_run_with_plan_cache_skips_the_planner_the_second_time(capsys, tmp_path, example_tools):
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    first = replay(tmp_path, "a.json", [PLAN, "Action: Finish(Eiffel Tower)"])
    code, out, _ = plait_main(
        capsys, "run", Q1, "--tools", example_tools, "--model", first, "--store", store,
        "--plan-cache", "--json",
    )  # fmt: skip
    assert code == 0
    assert one_json_object(out)["plan_cache"]["hit"] is False
    only_joiner = replay(tmp_path, "b.json", ["Action: Finish(Burj Khalifa)"])
    code, out, err = plait_main(
        capsys, "run", Q2, "--tools", example_tools, "--model", only_joiner, "--store", store,
        "--plan-cache", "--json",
    )  # fmt: skip
    assert code == 0, err
    data = one_json_object(out)
    assert data["answer"] == "Burj Khalifa"
    assert data["plan_cache"]["hit"] is True
    assert data["savings"]["planner_calls_skipped"] == 1
    assert [t["args"] for t in data["tasks"][:2]] == [
        {"query": "Burj Khalifa"},
        {"query": "Tokyo Skytree"},
    ]


def test_run_without_plan_cache_does_not_use_the_templates(capsys, tmp_path, example_tools):
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    first = replay(tmp_path, "a.json", [PLAN, "Action: Finish(Eiffel Tower)"])
    plait_main(
        capsys, "run", Q1, "--tools", example_tools, "--model", first, "--store", store,
        "--plan-cache",
    )  # fmt: skip
    again = replay(tmp_path, "b.json", [PLAN, "Action: Finish(Eiffel Tower)"])
    code, out, _ = plait_main(
        capsys, "run", Q2, "--tools", example_tools, "--model", again, "--store", store, "--json"
    )
    assert code == 0
    assert "plan_cache" not in one_json_object(out)


def test_batch_with_plan_cache_plans_each_shape_once(capsys, tmp_path, example_tools):
    items = tmp_path / "in.jsonl"
    items.write_text(
        "\n".join(json.dumps({"id": i, "question": q}) for i, q in enumerate([Q1, Q2, Q3])) + "\n"
    )
    # Keyed by question: only the first has a plan; the others would fail if planned.
    model = replay(
        tmp_path,
        "r.json",
        {
            Q1: [PLAN, "Action: Finish(Eiffel Tower)"],
            Q2: ["Action: Finish(Burj Khalifa)"],
            Q3: ["Action: Finish(CN Tower)"],
        },
    )
    out = tmp_path / "out.jsonl"
    code, _, err = plait_main(
        capsys, "batch", items, "--tools", example_tools, "--model", model, "--out", out,
        "--concurrency", "1", "--plan-cache",
    )  # fmt: skip
    assert code == 0, err
    answers = {d["id"]: d["answer"] for d in map(json.loads, out.read_text().splitlines())}
    assert answers == {0: "Eiffel Tower", 1: "Burj Khalifa", 2: "CN Tower"}


def test_run_with_samples_lists_each_attempt(capsys, tmp_path, example_tools):
    either = '1. search("Eiffel Tower")\n2. join()\nAction: Finish(330 metres)'
    model = replay(tmp_path, "s.json", [either] * 6)
    code, out, err = plait_main(
        capsys, "run", "How tall is the Eiffel Tower?", "--tools", example_tools,
        "--model", model, "--samples", "3", "--agree", "2", "--json",
    )  # fmt: skip
    assert code == 0, err
    data = one_json_object(out)
    assert data["answer"] == "330 metres"
    assert len(data["attempts"]) == 3
    assert {"index", "answer", "cut_short", "tokens", "run_id"} <= set(data["attempts"][0])
    assert data["savings"]["decided_by"] == "agreement"


def test_agree_above_samples_is_invalid_input(capsys, tmp_path, example_tools):
    model = replay(tmp_path, "s.json", [])
    code, out, err = plait_main(
        capsys, "run", "q", "--tools", example_tools, "--model", model, "--samples", "2",
        "--agree", "3",
    )  # fmt: skip
    assert code == 2
    assert out == ""
    assert "--agree" in assert_one_line(err)


def test_an_unknown_draft_model_is_invalid_input(capsys, tmp_path, example_tools):
    model = replay(tmp_path, "s.json", [])
    code, _, err = plait_main(
        capsys, "run", "q", "--tools", example_tools, "--model", model, "--draft-model", "nope"
    )
    assert code == 2
    assert "nope" in assert_one_line(err)


def test_run_with_samples_without_json_shows_one_run_and_the_answer(
    capsys, tmp_path, example_tools
):
    either = '1. search("Eiffel Tower")\n2. join()\nAction: Finish(330 metres)'
    model = replay(tmp_path, "s.json", [either] * 6)
    trace = tmp_path / "t.json"
    code, out, err = plait_main(
        capsys, "run", "How tall is the Eiffel Tower?", "--tools", example_tools,
        "--model", model, "--samples", "3", "--agree", "2", "--trace", trace,
    )  # fmt: skip
    # The trace is the chosen attempt's, written after the vote: whichever attempt was cut
    # short (even the one the live view follows, before its first task), it is written.
    assert code == 0, err
    assert out.strip() == "330 metres"
    events = json.loads(trace.read_text())
    names = [e.get("name") for e in (events["traceEvents"] if isinstance(events, dict) else events)]
    # one run's task and calls, not three runs' interleaved
    assert sum("search" in str(n) for n in names) == 1
    assert sum("planner" in str(n) for n in names) == 1
    # The live view followed one attempt; one line says how the vote went, the chosen one
    # starred: two of three agreed, the third was answered or cut short.
    (vote,) = [line for line in err.splitlines() if line.startswith("samples, by ")]
    fates = vote.removeprefix("samples, by agreement: ").split(", ")
    assert [f.lstrip("*").split()[0] for f in fates] == ["#1", "#2", "#3"], vote
    assert sum(f.startswith("*") for f in fates) == 1
    assert sum(f.endswith("330 metres") for f in fates) >= 2


def test_an_answer_its_plan_argues_against_is_given_with_a_doubt_line(
    capsys, tmp_path, example_tools
):
    """One attempt, no samples: the plan looks up two heights and the answer gives one.
    The answer stands (exit 0, on stdout), and stderr and --json say why it is doubted;
    `plait resume` of the finished run says it again. A whole answer gets no such line."""
    half = (
        '1. search("Eiffel Tower")\n2. search("Statue of Liberty")\n'
        "3. extract_number($1)\n4. extract_number($2)\n5. join()\n<END_OF_PLAN>"
    )
    q = "What is the combined height of the Eiffel Tower and the Statue of Liberty?"
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    model = replay(tmp_path, "h.json", [half, "Action: Finish(330 metres)"])
    argv = ("run", q, "--tools", example_tools, "--model", model, "--store", store)
    code, out, err = plait_main(capsys, *argv, "--run-id", "half")
    assert (code, out.strip()) == (0, "330 metres")
    assert "doubt: the answer leaves out 93, task 4's result" in err.splitlines()
    code, out, err = plait_main(capsys, *argv, "--run-id", "half2", "--json")
    assert one_json_object(out)["doubt"] == "the answer leaves out 93, task 4's result"
    code, out, err = plait_main(
        capsys, "resume", "half", "--tools", example_tools, "--store", store, "--json"
    )
    assert (code, one_json_object(out)["doubt"]) == (0, "the answer leaves out 93, task 4's result")

    whole = half.replace("5. join()", '5. calculate("$3 + $4")\n6. join()')
    model = replay(tmp_path, "w.json", [whole, "Action: Finish(423 metres)"])
    code, out, err = plait_main(
        capsys, "run", q, "--tools", example_tools, "--model", model, "--store", "memory://"
    )
    assert (code, out.strip()) == (0, "423 metres")
    assert "doubt" not in err
