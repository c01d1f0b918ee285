"""JSON Schema for plans, built from the registered tools, for backends that constrain output.

With it a grammar-constrained model (llama.cpp, OpenAI `response_format`) can only write
tasks that name a real tool with arguments of the right shape:

- every task names a registered tool, and its `args` object has exactly that tool's
  parameters (required ones required, no others unless the tool takes ``**kwargs``);
- every argument also accepts a reference string, ``"$N"`` or ``"${N}"`` (a task id), so a
  number argument can still take an earlier task's result;
- task ids are consecutive from `next_id` (position p has id ``next_id + p``), which a plain
  array schema cannot say; so the array is a choice of fixed-length tuples (``prefixItems``)
  of 2 to `max_tasks` entries whose last entry is ``join``. Each position is one ``$defs``
  rule, so the schema (and the grammar llama.cpp derives from it) stays small: O(tools ×
  max_tasks) rules, plus the tuples' references.

Only constructs that llama.cpp's json-schema-to-grammar converter understands are used
(``$ref`` to ``$defs``, ``anyOf``, ``const``, ``pattern``, ``prefixItems``, objects with
``additionalProperties: false``); tests check the converter accepts the result.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from .tools import Tools

REF_PATTERN = (
    r"^[$]([{][0-9]+[}]|[0-9]+)$"  # "$N" or "${N}"; char classes: the converter mis-escapes \$
)
MAX_TASKS = 8  # tasks per plan (not counting join); grammar cost grows with it on llama.cpp


def _rename_refs(node: Any, prefix: str) -> Any:
    """Rewrite `#/$defs/X` to `#/$defs/<prefix>X` throughout a schema fragment."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str) and v.startswith("#/$defs/"):
                out[k] = "#/$defs/" + prefix + v[len("#/$defs/") :]
            else:
                out[k] = _rename_refs(v, prefix)
        return out
    if isinstance(node, list):
        return [_rename_refs(v, prefix) for v in node]
    return node


def _strip(node: Any) -> Any:
    """Drop annotations that only cost grammar size or confuse the converter."""
    if isinstance(node, dict):
        return {
            k: _strip(v)
            for k, v in node.items()
            if k not in ("title", "description", "default", "examples")
        }
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def _args_schema(raw: dict[str, Any], prefix: str, defs: dict[str, Any]) -> dict[str, Any]:
    schema = _strip(copy.deepcopy(raw))
    for name, sub in (schema.pop("$defs", None) or {}).items():
        defs[prefix + name] = _rename_refs(sub, prefix)
    schema = _rename_refs(schema, prefix)
    props = schema.get("properties") or {}
    schema["properties"] = {
        name: {"anyOf": [prop, {"$ref": "#/$defs/ref"}]} for name, prop in props.items()
    }
    schema["type"] = "object"
    if schema.get("additionalProperties") is not False and not _has_var_keyword(raw):
        schema["additionalProperties"] = False
    return schema


def _has_var_keyword(raw: dict[str, Any]) -> bool:
    extra = raw.get("additionalProperties")
    return extra is True or isinstance(extra, dict)


def plan_schema(tools: Tools, next_id: int, max_tasks: int = MAX_TASKS) -> dict[str, Any]:
    """JSON Schema of a plan whose tasks can only name the given tools with fitting arguments,
    numbered `next_id`, `next_id + 1`, … and ending with a `join` task."""
    defs: dict[str, Any] = {"ref": {"type": "string", "pattern": REF_PATTERN}}
    for t in tools.values():
        defs[f"args-{t.name}"] = _args_schema(t.schema(), f"{t.name}-", defs)

    def task(position: int, name: str, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {
                "id": {"const": next_id + position},
                "tool": {"const": name},
                "args": args,
            },
            "required": ["id", "tool", "args"],
            "additionalProperties": False,
        }

    empty = {"type": "object", "properties": {}, "additionalProperties": False}
    for p in range(max_tasks + 1):
        variants = [task(p, t.name, {"$ref": f"#/$defs/args-{t.name}"}) for t in tools.values()]
        defs[f"task-{p}"] = {"anyOf": variants} if len(variants) > 1 else variants[0]
        defs[f"join-{p}"] = task(p, "join", empty)
    plans = [
        {
            "type": "array",
            "items": False,
            "prefixItems": [
                *({"$ref": f"#/$defs/task-{p}"} for p in range(n)),
                {"$ref": f"#/$defs/join-{n}"},
            ],
        }
        for n in range(1, max_tasks + 1)
    ]
    if not tools:
        plans = [{"type": "array", "prefixItems": [{"$ref": "#/$defs/join-0"}]}]
    return {
        "type": "object",
        "properties": {"tasks": {"anyOf": plans}},
        "required": ["tasks"],
        "additionalProperties": False,
        "$defs": defs,
    }


def schema_size(schema: dict[str, Any]) -> int:
    """Characters of the schema as JSON (what a request carries)."""
    return len(json.dumps(schema, separators=(",", ":")))
