"""Chrome trace-event JSON (plait.runs.trace), built from a run's events."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import plait
from plait.core import events as ev
from plait.core.task import Task
from plait.llm.replay import ReplayLLM
from plait.runs.trace import TraceRecorder


def feed(rec: TraceRecorder, *events: ev.Event) -> None:
    for e in events:
        rec(e)


def slices(rec: TraceRecorder) -> list[dict]:
    return [e for e in rec.to_dict()["traceEvents"] if e["ph"] == "X"]


def test_task_and_llm_slices():
    rec = TraceRecorder()
    feed(
        rec,
        ev.RunStarted(0.0, "abc"),
        ev.LLMStarted(0.0, 1, "planner", "replay"),
        ev.TaskAdded(0.1, Task(1, "search")),
        ev.TaskStarted(0.1, 1, "search"),
        ev.TaskStarted(0.2, 2, "search"),
        ev.LLMFinished(0.3, 1, ev.Usage(100, 20)),
        ev.TaskFinished(0.5, 1, "done", "r"),
        ev.TaskStarted(0.6, 3, "calc"),  # reuses the lane task 1 freed
        ev.TaskFinished(0.7, 2, "failed", None, "boom"),
        ev.TaskFinished(0.8, 4, "skipped", None, "input $2 failed"),
        ev.TaskFinished(0.9, 3, "done", 1),
    )
    by_name = {e["name"]: e for e in slices(rec)}
    assert set(by_name) == {"planner (replay)", "1. search", "2. search", "3. calc"}
    llm = by_name["planner (replay)"]
    assert (llm["cat"], llm["ts"], llm["dur"]) == ("llm", 0.0, 300000.0)
    assert llm["args"] == {"prompt_tokens": 100, "completion_tokens": 20}
    one, two, three = by_name["1. search"], by_name["2. search"], by_name["3. calc"]
    assert (one["ts"], one["dur"]) == (100000.0, 400000.0)
    assert one["args"] == {"status": "done"}
    assert two["args"] == {"status": "failed", "error": "boom"}
    assert one["tid"] != two["tid"]  # they overlap
    assert three["tid"] == one["tid"]  # lanes are reused
    assert llm["tid"] not in {one["tid"], two["tid"]}
    instants = [e for e in rec.to_dict()["traceEvents"] if e["ph"] == "i"]
    assert [e["name"] for e in instants] == ["4 skipped"]
    meta = [e for e in rec.to_dict()["traceEvents"] if e["ph"] == "M"]
    assert {"name": "process_name", "ph": "M", "pid": 1, "args": {"name": "plait run abc"}} in meta
    lanes = {e["tid"] for e in meta if e["name"] == "thread_name"}
    assert {one["tid"], two["tid"], llm["tid"]} <= lanes


def test_write_is_valid_json(tmp_path: Path):
    rec = TraceRecorder()
    feed(
        rec,
        ev.RunStarted(0.0, "r"),
        ev.TaskStarted(0.0, 1, "t"),
        ev.TaskFinished(0.001, 1, "done", None),
    )
    path = tmp_path / "t.json"
    rec.write(path)
    data = json.loads(path.read_text())
    assert data["displayTimeUnit"] == "ms"
    assert [e["name"] for e in data["traceEvents"] if e["ph"] == "X"] == ["1. t"]


def test_a_whole_run_has_one_slice_per_task_and_llm_call(example_tools: Path):
    tools = plait.load_tools(str(example_tools))
    plan = (
        '1. search("Eiffel Tower height")\n2. search("Statue of Liberty height")\n'
        '3. calculate("1 + 1")\n4. join()\n'
    )
    replan = "Action: Replan(again)"
    more = '5. calculate("$3 * 2")\n6. join()\n'
    finish = "Action: Finish(4)"
    rec = TraceRecorder()
    result = asyncio.run(
        plait.arun("q", tools=tools, model=ReplayLLM([plan, replan, more, finish]), on_event=rec)
    )
    assert result.answer == "4"
    xs = slices(rec)
    assert sorted(e["name"] for e in xs if e["cat"] == "task") == [
        "1. search",
        "2. search",
        "3. calculate",
        "5. calculate",
    ]
    assert [e["name"].split()[0] for e in xs if e["cat"] == "llm"] == [
        "planner",
        "joiner",
        "planner",
        "joiner",
    ]
    assert [e["name"] for e in rec.events if e["ph"] == "i"] == ["replan 1"]
    for e in xs:
        assert e["ts"] >= 0 and e["dur"] >= 0
