"""JSON Schema for plans, built from the registered tools, for backends that constrain output.

With it a grammar-constrained model (llama.cpp, OpenAI `response_format`) can only write
tasks that name a real tool with arguments of the right shape.
"""

from __future__ import annotations

from .tools import Tools


def plan_schema(tools: Tools, next_id: int) -> dict[str, object]:
    """JSON Schema of a plan whose tasks can only name the given tools with fitting arguments."""
    variants: list[dict[str, object]] = []
    for t in tools.values():
        args = t.schema()
        args.pop("$defs", None)
        variants.append(
            {
                "type": "object",
                "properties": {
                    "id": {"type": "integer", "minimum": next_id},
                    "tool": {"const": t.name},
                    "args": args,
                },
                "required": ["id", "tool", "args"],
                "additionalProperties": False,
            }
        )
    variants.append(
        {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "tool": {"const": "join"},
                "args": {"type": "object", "maxProperties": 0},
            },
            "required": ["id", "tool"],
            "additionalProperties": False,
        }
    )
    return {
        "type": "object",
        "properties": {"tasks": {"type": "array", "items": {"anyOf": variants}, "minItems": 1}},
        "required": ["tasks"],
        "additionalProperties": False,
    }
