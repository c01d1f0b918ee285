"""MCP servers as plait tools, against real servers: `mcp-server-time` from PyPI (stdio), the
fault-injecting server the tests run (stdio, and streamable HTTP on 127.0.0.1), and a
hand-written server that answers with malformed results."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from tests.hostile.plaitproc import plait as plait_cli
from tests.hostile.plaitproc import spawn
from tests.mcp.mcpsupport import PYTOOLS, RAW, config, faults, start_http, time_spec, wait_for

import plait
from plait.errors import PlanError, ToolError
from plait.mcp.client import load_config, servers

pytest.importorskip("mcp")


def counted(fault_dir: Path, name: str) -> int:
    path = fault_dir / f"{name}.count"
    return int(path.read_text()) if path.exists() else 0


def test_time_server_tools_show_its_schema_and_purity(tmp_path: Path) -> None:
    tools = plait.load_tools(config(tmp_path / "c.json", time=time_spec()))
    assert {"get_current_time", "convert_time"} <= set(tools)
    t = tools["get_current_time"]
    assert t.schema()["required"] == ["timezone"]
    assert t.schema()["properties"]["timezone"]["type"] == "string"
    assert t.signature() == "get_current_time(timezone: string)"
    assert "time" in t.description.lower()
    assert t.pure  # annotated readOnlyHint and idempotentHint


def test_time_server_plan_runs_and_results_are_structured(tmp_path: Path) -> None:
    cfg = config(tmp_path / "c.json", time=time_spec())
    plan = tmp_path / "p.plan"
    plan.write_text(
        '1. convert_time("UTC", "12:00", "Asia/Tokyo")\n'
        '2. get_current_time(timezone="Europe/Paris")\n3. join()\n'
    )
    code, out, err = plait_cli("exec", plan, "--tools", cfg, "--store", "memory://", "--json")
    assert code == 0, err
    tasks = json.loads(out)["tasks"]
    assert tasks[0]["result"]["target"]["datetime"].startswith("20")
    assert tasks[0]["result"]["target"]["datetime"].endswith("T21:00:00+09:00")
    assert tasks[1]["result"]["timezone"] == "Europe/Paris"


def test_arguments_are_checked_against_input_schema_before_anything_runs(
    tmp_path: Path,
) -> None:
    tools = plait.load_tools(config(tmp_path / "c.json", faults=faults(tmp_path)))
    for plan, why in [
        ('1. add("two", 3)\n2. join()', "argument 'a'"),
        ("1. add(b=3)\n2. join()", "missing argument 'a'"),
        ("1. add(1, 2, 3)\n2. join()", "positional"),
    ]:
        with pytest.raises(PlanError, match=why):
            plait.execute(plan, tools=tools)
    assert counted(tmp_path, "add") == 0
    # a value from a reference is checked once resolved, before the call
    result = plait.execute('1. echo("x")\n2. add($1, 1)\n3. join()', tools=tools)
    assert result.tasks[1].status == "failed"
    assert "invalid arguments for add" in (result.tasks[1].error or "")
    assert counted(tmp_path, "add") == 0


def test_plain_results_unwrapped_and_mixed_with_python_tools(tmp_path: Path) -> None:
    cfg = config(tmp_path / "c.json", faults=faults(tmp_path))
    plan = tmp_path / "p.plan"
    plan.write_text("1. add(2, 3)\n2. double($1)\n3. join()\n")
    code, out, err = plait_cli(
        "exec", plan, "--tools", cfg, "--tools", PYTOOLS, "--store", "memory://", "--json"
    )
    assert code == 0, err
    assert [t["result"] for t in json.loads(out)["tasks"]] == [5, 10]


def test_python_tools_argument_mixes_tools_paths_and_configs(tmp_path: Path) -> None:
    @plait.tool
    def neg(x: int) -> int:
        return -x

    cfg = config(tmp_path / "c.json", faults=faults(tmp_path))
    result = plait.execute(
        "1. add(2, 3)\n2. double($1)\n3. neg($2)\n4. join()", tools=[neg, str(PYTOOLS), cfg]
    )
    assert result.ok and result.tasks[2].result == -10


def test_server_crash_mid_call_is_restarted_and_the_call_retried(tmp_path: Path) -> None:
    cfg = config(tmp_path / "c.json", faults=faults(tmp_path))
    tools = plait.load_tools(cfg)
    server = servers().get("faults", load_config(cfg)["faults"], cfg)
    before = server.starts
    result = plait.execute('1. crash_once("k")\n2. echo("after")\n3. join()', tools=tools)
    assert result.ok, result.error
    assert result.tasks[0].result == "survived k"
    assert (tmp_path / "crashed-k").exists()  # it did crash once
    assert server.starts == before + 1  # and was started again


def test_one_session_per_server_shared_by_runs(tmp_path: Path) -> None:
    cfg = config(tmp_path / "c.json", faults=faults(tmp_path))
    server = servers().get("faults", load_config(cfg)["faults"], cfg)
    for i in range(3):
        assert plait.execute(f"1. add({i}, 1)\n2. join()", tools=cfg).ok
    assert server.starts == 1
    assert counted(tmp_path, "add") == 3


def test_per_server_max_concurrency(tmp_path: Path) -> None:
    plan = "1. hold(3)\n2. hold(3)\n3. hold(3)\n4. join()"
    free = config(tmp_path / "free.json", free=faults(tmp_path))
    limited = config(tmp_path / "lim.json", limited=faults(tmp_path, max_concurrency=2))
    # without a limit the three calls meet on the server; with max_concurrency 2, never
    assert max(t.result for t in plait.execute(plan, tools=free).tasks) == 3
    assert max(t.result for t in plait.execute(plan, tools=limited).tasks) == 2


def test_is_error_fails_the_task_with_the_servers_text(tmp_path: Path) -> None:
    cfg = config(tmp_path / "c.json", faults=faults(tmp_path))
    result = plait.execute('1. fail("the disk is full")\n2. join()', tools=cfg)
    assert result.status == "failed"
    assert "the disk is full" in (result.tasks[0].error or "")


def test_malformed_result_fails_the_task_not_the_run(tmp_path: Path) -> None:
    import sys

    cfg = config(
        tmp_path / "c.json",
        raw={"command": sys.executable, "args": [str(RAW)]},
        faults=faults(tmp_path),
    )
    result = plait.execute('1. broken()\n2. echo("still here")\n3. join()', tools=cfg)
    assert result.tasks[0].status == "failed"
    assert "bad result" in (result.tasks[0].error or "")
    assert result.tasks[1].result == "still here"


def test_server_that_cannot_start_is_one_line_exit_2(tmp_path: Path) -> None:
    cfg = config(tmp_path / "c.json", gone={"command": str(tmp_path / "no-such-server")})
    plan = tmp_path / "p.plan"
    plan.write_text("1. x()\n2. join()\n")
    code, _, err = plait_cli("exec", plan, "--tools", cfg, "--store", "memory://")
    assert code == 2
    assert err.count("\n") == 1 and "MCP server 'gone'" in err and "cannot start" in err
    with pytest.raises(ToolError, match="not an MCP config"):
        plait.load_tools(config(tmp_path / "x.json") and str(_json(tmp_path / "y.json", {})))


def _json(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value))
    return path


def test_clashing_names_are_prefixed_and_said_so(tmp_path: Path) -> None:
    cfg = config(tmp_path / "c.json", one=faults(tmp_path), two=faults(tmp_path))
    code, out, err = plait_cli("tools", "--tools", cfg, "--json")
    assert code == 0, err
    listed = {t["name"]: t for t in json.loads(out)}
    assert "echo" not in listed
    assert listed["one_echo"]["source"] == "mcp:one"
    assert "renamed from echo" in listed["two_echo"]["note"]


def test_plait_tools_json_lists_python_and_mcp_tools(tmp_path: Path) -> None:
    cfg = config(tmp_path / "c.json", time=time_spec())
    code, out, err = plait_cli("tools", "--tools", cfg, "--tools", PYTOOLS, "--json")
    assert code == 0, err
    listed = {t["name"]: t for t in json.loads(out)}
    assert listed["get_current_time"]["pure"] is True
    assert listed["get_current_time"]["source"] == "mcp:time"
    assert listed["get_current_time"]["parameters"]["required"] == ["timezone"]
    assert listed["double"]["pure"] is False
    assert listed["double"]["source"] == f"python:{PYTOOLS}"
    assert listed["double"]["signature"] == "double(x: int)"
    code, out, err = plait_cli("tools", "--tools", cfg)
    assert code == 0 and "get_current_time(timezone: string)  [pure]  (mcp:time)" in out


def test_plait_tools_prints_no_escape_a_tool_wrote(tmp_path: Path) -> None:
    tools = tmp_path / "loud.py"
    tools.write_text(
        "import plait\n\n"
        "@plait.tool\n"
        "def paint(x: int) -> int:\n"
        '    """\x1b[31mred\x1b]0;title\x07 text"""\n'
        "    return x\n"
    )
    code, out, err = plait_cli("tools", "--tools", tools)
    assert code == 0, err
    assert "\x1b" not in out and "\x07" not in out
    assert "red" in out and "paint(x: int)" in out


def test_streamable_http_server_by_url(tmp_path: Path) -> None:
    proc, url = start_http(tmp_path)
    try:
        cfg = config(tmp_path / "c.json", web={"url": url, "headers": {"X-Token": "t"}})
        result = plait.execute("1. add(2, 40)\n2. echo('done')\n3. join()", tools=cfg)
        assert result.ok, result.error
        assert [t.result for t in result.tasks] == [42, "done"]
    finally:
        proc.kill()
        proc.wait()


def test_http_server_restarted_gets_a_new_session_and_the_call_retried(tmp_path: Path) -> None:
    proc, url = start_http(tmp_path)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    cfg = config(tmp_path / "c.json", web={"url": url})
    try:
        assert plait.execute("1. add(1, 1)\n2. join()", tools=cfg).tasks[0].result == 2
        proc.kill()
        proc.wait()
        proc, _ = start_http(tmp_path, port)  # knows nothing of plait's session
        result = plait.execute("1. add(1, 2)\n2. join()", tools=cfg)
        assert result.tasks[0].result == 3, result.tasks[0].error
        assert servers().get("web", load_config(cfg)["web"], cfg).starts == 2
    finally:
        proc.kill()
        proc.wait()


def test_durable_run_interrupted_then_resumed_with_mcp_tools(tmp_path: Path) -> None:
    cfg = config(tmp_path / "c.json", faults=faults(tmp_path))
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    plan = tmp_path / "p.plan"
    # block_once waits for add through "$1", so add has settled before the interrupt lands.
    plan.write_text('1. add(1, 2)\n2. block_once("r$1")\n3. join()\n')
    tools = ("--tools", cfg, "--tools", PYTOOLS)
    proc = spawn("exec", plan, *tools, "--store", store, "--run-id", "r1", "--json")
    wait_for(tmp_path / "started-r3", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert f"plait resume r1 --tools {cfg} --tools {PYTOOLS} --store" in err  # every --tools
    code, out, err = plait_cli("resume", "r1", *tools, "--store", store, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert [t["result"] for t in result["tasks"]] == [3, "unblocked r3"]
    assert counted(tmp_path, "add") == 1  # settled before the interrupt: not called again


async def test_pure_mcp_tool_runs_once_across_a_batch_impure_every_time(tmp_path: Path) -> None:
    from plait.batch import abatch

    cfg = config(tmp_path / "c.json", faults=faults(tmp_path))
    items, replies = [], {}
    for i in range(6):
        items.append({"id": f"q{i}", "question": f"[q{i}] same?"})
        replies[f"[q{i}]"] = ['1. echo("shared")\n2. add(1, 2)\njoin()\n', "Action: Finish(yes)"]
    path = _json(tmp_path / "replies.json", replies)
    results = [r async for r in abatch(items, tools=cfg, model=f"replay:{path}", concurrency=3)]
    assert sorted(r.status for r in results) == ["done"] * 6
    assert counted(tmp_path, "echo") == 1  # readOnlyHint + idempotentHint: pure, shared
    assert counted(tmp_path, "add") == 6  # not annotated: never merged


def test_slow_call_times_out_and_the_session_goes_on(tmp_path: Path) -> None:
    cfg = config(tmp_path / "c.json", faults=faults(tmp_path, timeout=1))
    result = plait.execute('1. wait_forever("slow")\n2. add(1, 1)\n3. join()', tools=cfg)
    assert result.tasks[0].status == "failed"
    assert result.tasks[0].error == "timed out after 1s"
    assert result.tasks[1].result == 2
    assert plait.execute("1. add(2, 2)\n2. join()", tools=cfg).tasks[0].result == 4
    with pytest.raises(ToolError, match="'timeout' must be"):
        plait.load_tools(config(tmp_path / "bad.json", faults=faults(tmp_path, timeout=0)))


async def _nothing(arguments: dict) -> dict:
    return arguments


def test_schema_tool_checks_what_the_schema_says() -> None:
    from plait.agent.prompts import tool_lines
    from plait.mcp.schematool import SchemaTool

    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "when": {"$ref": "#/$defs/when"},
            "units": {"enum": ["metric", "imperial"], "default": "metric"},
        },
        "required": ["city"],
        "additionalProperties": False,
        "$defs": {"when": {"type": "array", "items": {"type": "integer"}}},
    }
    t = SchemaTool(_nothing, schema, name="weather", description="The weather.")
    assert t.signature() == (
        "weather(city: string, when: array[integer], units: 'metric' | 'imperial' = 'metric')"
    )
    tools = plait.Tools([t])
    for plan, why in [
        ("1. weather(city=3)\n2. join()", "argument 'city': 3 is not of type 'string'"),
        ('1. weather("Oslo", country="NO")\n2. join()', "unknown argument 'country'"),
        ('1. weather("Oslo", when=[1, "x"])\n2. join()', "argument 'when'\\[1\\]"),
        ('1. weather("Oslo", units="kelvin")\n2. join()', "argument 'units'"),
    ]:
        with pytest.raises(PlanError, match=why):
            plait.execute(plan, tools=tools)
    result = plait.execute('1. weather("Oslo", [1, 2])\n2. join()', tools=tools)
    assert result.tasks[0].result == {"city": "Oslo", "when": [1, 2]}
    assert "weather(city: string" in tool_lines(tools)
    assert "The weather." in tool_lines(tools)


def test_names_a_plan_cannot_call_are_renamed_and_called_by_their_own(tmp_path: Path) -> None:
    import sys

    from tests.mcp.mcpsupport import ODD

    cfg = config(tmp_path / "c.json", odd={"command": sys.executable, "args": [str(ODD)]})
    code, out, err = plait_cli("tools", "--tools", cfg, "--json")
    assert code == 0, err
    listed = {t["name"]: t for t in json.loads(out)}
    assert set(listed) == {"x_y", "odd__vil", "my_tool", "odd_join", "odd_1st", "fine"}
    assert "renamed from 'x-y'" in listed["x_y"]["note"]
    assert err.count("\n") == 1 and "'odd'" in err and "no name" in err
    plan = tmp_path / "p.plan"
    plan.write_text("1. x_y(v=1)\n2. odd_join(2)\n3. odd__vil(3)\n4. my_tool(4)\n5. join()\n")
    code, out, err = plait_cli("exec", plan, "--tools", cfg, "--store", "memory://", "--json")
    assert code == 0, err
    assert [t["result"] for t in json.loads(out)["tasks"]] == [
        "called x-y 1",
        "called join 2",
        "called évil 3",
        "called my tool 4",
    ]


def test_an_argument_the_schema_does_not_name_is_refused(tmp_path: Path) -> None:
    cfg = config(tmp_path / "c.json", faults=faults(tmp_path))
    plan = tmp_path / "p.json"
    plan.write_text('{"tasks":[{"id":1,"tool":"add","args":{"a":1,"bb":2}}]}')
    code, _, err = plait_cli("exec", plan, "--tools", cfg, "--store", "memory://")
    assert code == 2 and "unknown argument 'bb'" in err
    assert counted(tmp_path, "add") == 0
    from plait.mcp.schematool import SchemaTool

    for extra in (True, {"type": "integer"}):
        schema = {"type": "object", "properties": {"a": {}}, "additionalProperties": extra}
        t = SchemaTool(_nothing, schema, name="open")
        assert plait.execute("1. open(a=1, b=2)\n2. join()", tools=[t]).tasks[0].result == {
            "a": 1,
            "b": 2,
        }


def test_invalid_tools_list_is_one_line_naming_the_server_exit_2(tmp_path: Path) -> None:
    import sys

    cfg = config(
        tmp_path / "c.json", raw={"command": sys.executable, "args": [str(RAW), "--bad-list"]}
    )
    code, out, err = plait_cli("tools", "--tools", cfg)
    assert code == 2, err
    assert err.count("\n") == 1 and "MCP server 'raw'" in err and "cannot list" in err
    assert "internal error" not in err and out == ""
