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

Grounded arguments. A tool parameter annotated `Span` (``query: Span``, an
``Annotated[str, ...]`` that marks its JSON Schema with ``"x-plait": "question-span"``) takes
a phrase of the question: a lookup names what the question names, never an entity the model
invented. Given the question, `plan_schema` limits such a parameter to the question's
phrases (`question_spans`) or a reference. `Formula` marks a parameter that takes arithmetic
over earlier results (``"$3 - $4"``); the candidate planner (choose.py) uses both marks.

Only constructs that llama.cpp's json-schema-to-grammar converter understands are used
(``$ref`` to ``$defs``, ``anyOf``, ``const``, ``pattern``, ``prefixItems``, objects with
``additionalProperties: false``); tests check the converter accepts the result.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from typing import Annotated, Any

import pydantic

from ..core.tools import Tools

MARK = "x-plait"  # the JSON Schema keyword that carries a parameter's grounding
Span = Annotated[str, pydantic.Field(json_schema_extra={MARK: "question-span"})]
Formula = Annotated[str, pydantic.Field(json_schema_extra={MARK: "formula"})]


# Words that hold a question together rather than name a thing in it: a phrase of the
# question that a lookup may take never contains one, nor starts or ends with an EDGE word
# ("Statue of Liberty" is a phrase, "the Statue" and "taller than" are not).
def _vocabulary(*lines: str) -> frozenset[str]:
    return frozenset(w for line in lines for w in line.split())


FUNCTION_WORDS = _vocabulary(
    "how much many what which who whom whose when where why is are was were be been do does",
    "did than times more less taller higher longer shorter larger smaller bigger farther",
    "further older newer tall high long far and or vs versus between combined total",
    "together sum difference ratio compared compare with from",
    "wrote write written built completed open opened founded published dedicated",
    # what is measured, not what is named
    "height length population distance size area age speed weight depth width number",
    "people live lives",
)
EDGE_WORDS = _vocabulary("the a an of in on at to for from by its their his her")
_WORD = re.compile(r"[\w][\w'.\-]*[\w]|[\w]")

REF_PATTERN = (
    r"^[$]([{][0-9]+[}]|[0-9]+)$"  # "$N" or "${N}"; char classes: the converter mis-escapes \$
)
MAX_TASKS = 8  # tasks per plan (not counting join); grammar cost grows with it on llama.cpp


def words(text: str) -> list[str]:
    """The words of a text, punctuation dropped (``"Tiffany's"`` and ``"42.195"`` kept whole)."""
    return _WORD.findall(text)


def offers_choice(question: str) -> bool:
    """Whether a question offers its answer's options ("Which is taller, A or B?"): its
    answer picks one, and the numbers it was picked by are its reasons, not its value."""
    return "or" in {w.lower() for w in words(question)}


def phrase_spans(
    text: str,
    max_words: int = 5,
    taken: Sequence[tuple[int, int]] = (),
    *,
    maximal: bool = False,
) -> list[tuple[int, int, str]]:
    """Phrases of `text`, as (first word, end word, phrase): 1 to `max_words` consecutive
    words, none a function word, not starting or ending with an edge word, overlapping no
    `taken` range; in order. `maximal`: only the longest such phrases, those no neighbouring
    word could extend ("Statue of Liberty", not "Statue" nor "Liberty"), unless that is
    longer than `max_words`."""
    ws = words(text)
    if maximal:
        every = phrase_spans(text, len(ws), taken)
        found: list[tuple[int, int, str]] = []
        for i, j, phrase in every:
            if any(a <= i and j <= b and (a, b) != (i, j) for a, b, _ in every):
                continue  # a neighbouring word extends it
            if j - i <= max_words:
                found.append((i, j, phrase))
            else:  # too long to be a name: its parts
                found += [
                    (a, b, p) for a, b, p in every if i <= a and b <= j and b - a <= max_words
                ]
        return sorted(found)
    out: list[tuple[int, int, str]] = []
    seen: set[str] = set()
    for i in range(len(ws)):
        for j in range(i + 1, min(len(ws), i + max_words) + 1):
            low = [w.lower() for w in ws[i:j]]
            if low[-1] in FUNCTION_WORDS:
                break
            if low[0] in EDGE_WORDS or low[-1] in EDGE_WORDS:
                continue
            if any(a < j and i < b for a, b in taken):
                continue
            phrase = " ".join(ws[i:j])
            if phrase not in seen:
                seen.add(phrase)
                out.append((i, j, phrase))
    return out


def phrases(text: str, max_words: int = 5) -> list[str]:
    """The phrases of `phrase_spans`, as text."""
    return [p for _, _, p in phrase_spans(text, max_words)]


def question_spans(question: str) -> list[str]:
    """The phrases of the question a `Span` parameter may take (maximal ones)."""
    return [p for _, _, p in phrase_spans(question, maximal=True)]


def mark(prop: dict[str, Any]) -> str | None:
    """A parameter schema's grounding mark: "question-span", "formula" or None."""
    value = prop.get(MARK)
    return value if isinstance(value, str) else None


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
            if k not in ("title", "description", "default", "examples", MARK)
        }
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def _args_schema(
    raw: dict[str, Any], prefix: str, defs: dict[str, Any], spans: list[str] | None
) -> dict[str, Any]:
    schema = copy.deepcopy(raw)
    if spans:
        for prop in (schema.get("properties") or {}).values():
            if mark(prop) == "question-span":
                prop["enum"] = spans
    schema = _strip(schema)
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


def plan_schema(
    tools: Tools, next_id: int, max_tasks: int = MAX_TASKS, *, question: str | None = None
) -> dict[str, Any]:
    """JSON Schema of a plan whose tasks can only name the given tools with fitting arguments,
    numbered `next_id`, `next_id + 1`, … and ending with a `join` task. Given the question,
    a `Span` parameter takes only a phrase of it (or a reference)."""
    defs: dict[str, Any] = {"ref": {"type": "string", "pattern": REF_PATTERN}}
    spans = question_spans(question) if question else None
    for t in tools.values():
        defs[f"args-{t.name}"] = _args_schema(t.schema(), f"{t.name}-", defs, spans)

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
