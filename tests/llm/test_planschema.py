"""The plan schema: references, consecutive ids, and llama.cpp's grammar converter accepts it."""

from __future__ import annotations

import json
import re

import pytest
from llamaserver import EXAMPLE_TOOLS

from plait.agent.parse import parse_plan
from plait.agent.schema import REF_PATTERN, plan_schema
from plait.core.tools import Tools
from plait.runs.loading import load_tools

llama_grammar = pytest.importorskip("llama_cpp.llama_grammar", reason="llama_cpp not importable")


def tools() -> Tools:
    return load_tools(EXAMPLE_TOOLS)


def test_reference_pattern() -> None:
    for ok in ("$1", "${12}", "$0"):
        assert re.fullmatch(REF_PATTERN.strip("^$"), ok) or re.match(REF_PATTERN, ok)
    for bad in ("$", "${1", "1", "$a", "x$1"):
        assert not re.match(REF_PATTERN, bad)


def test_every_argument_accepts_a_reference_and_ids_count_from_next_id() -> None:
    s = plan_schema(tools(), 7, max_tasks=3)
    defs = s["$defs"]
    for prop in defs["args-calculate"]["properties"].values():
        assert {"$ref": "#/$defs/ref"} in prop["anyOf"]
    assert defs["task-0"]["anyOf"][0]["properties"]["id"] == {"const": 7}
    assert defs["join-3"]["properties"]["id"] == {"const": 10}
    assert len(s["properties"]["tasks"]["anyOf"]) == 3


def test_llama_cpp_converter_accepts_it() -> None:
    from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

    gbnf = json_schema_to_gbnf(json.dumps(plan_schema(tools(), 1)))
    assert "root ::=" in gbnf
    assert "\\$" not in gbnf  # llama.cpp's GBNF parser has no such escape
    LlamaGrammar.from_string(gbnf, verbose=False)  # llama.cpp itself parses it


def test_schema_is_small() -> None:
    assert len(json.dumps(plan_schema(tools(), 1))) < 20_000


@pytest.mark.real_llm
async def test_smollm2_under_the_schema_writes_a_valid_plan() -> None:
    from plait.agent.prompts import planner_messages
    from plait.llm.base import Request
    from plait.llm.local import LocalLLM

    registry = tools()
    llm = LocalLLM()
    for next_id in (1, 4):
        request = Request(
            planner_messages(
                "How tall is the Eiffel Tower?", registry, examples=registry.examples,
                next_id=next_id, json_form=True,
            ),
            json_schema=plan_schema(registry, next_id),
        )  # fmt: skip
        text = "".join([d.text async for d in llm.stream(request)])
        tasks = parse_plan(text, known=set(range(1, next_id)))
        assert tasks, text
        assert [t.id for t in tasks] == list(range(next_id, next_id + len(tasks)))
        for t in tasks:
            registry.prepare(t)  # registered tool, arguments that fit
