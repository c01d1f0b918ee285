"""Tasks: one tool call of a plan, its `$N` references, and how results fill them.

A `Task` is data: a tool's name and its arguments, which may hold references to earlier
tasks' results. A string that is exactly ``$N`` or ``${N}`` stands for task N's result
value; ``$N`` inside a longer string stands for the result's text. Whole references must
point at a task added earlier; a ``$N`` inside a longer string that names no earlier task is
literal text ("costs $5"), and stays so: `resolve` substitutes a task's own inputs only,
never whatever else has finished. How plans are written and read is the agent's business
(`plait.agent.parse`); this module never parses plan text.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic_core import to_json

from ..errors import PlanError
from .remote import Remote

JOIN = "join"  # the name that ends a plan; no tool may take it

# Ids have at most 18 digits: a longer run of digits is no task's id, just text (and
# int() of thousands of digits raises ValueError).
_REF = re.compile(r"\$\{(\d{1,18})\}|\$(\d{1,18})(?!\d)")
_INERT = {int, float, bool, type(None)}  # values no reference can be in
_WHOLE_REF = re.compile(r"\s*\$(?:\{(\d{1,18})\}|(\d{1,18}))\s*")


@dataclass(slots=True)
class Task:
    """One tool call in a plan. `args` are positional, `kwargs` keyword; both may hold refs."""

    id: int
    tool: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    deps: frozenset[int] = frozenset()
    line: int | None = None

    def arguments(self) -> Any:
        """The arguments as one JSON-friendly value: a dict when all are named."""
        if not self.args:
            return self.kwargs
        if not self.kwargs:
            return list(self.args)
        return {"args": list(self.args), "kwargs": dict(self.kwargs)}


# -- references -------------------------------------------------------------------------


def whole_ref(value: Any) -> int | None:
    """Task id if `value` is exactly a reference string like "$3" or "${3}"."""
    if isinstance(value, str) and "$" in value:
        digits = value[1:]  # the common form, "$12", without the regex
        if value[0] == "$" and digits.isascii() and digits.isdigit() and len(digits) <= 18:
            return int(digits)
        if m := _WHOLE_REF.fullmatch(value):
            return int(m.group(1) or m.group(2))
    return None


def references(value: Any) -> list[tuple[int, bool]]:
    """(task id, is_whole) for every reference in a nested argument value."""
    found: list[tuple[int, bool]] = []
    for text in _strings(value):
        if (n := whole_ref(text)) is not None:
            found.append((n, True))
        elif "$" in text:
            found.extend((int(m.group(1) or m.group(2)), False) for m in _REF.finditer(text))
    return found


def mentions_reference(value: Any) -> bool:
    """Whether a value may hold a reference (a "$" in any of its strings): a cheap test."""
    return any("$" in text for text in _strings(value))


def _strings(value: Any) -> Iterator[str]:
    """Every string in a nested value (a str subclass as a plain str)."""
    if isinstance(value, str):
        yield str(value)
    elif isinstance(value, dict | list | tuple | set | frozenset):
        for v in value.values() if isinstance(value, dict) else value:
            yield from _strings(v)


def dependencies(
    task_id: int,
    values: Iterable[Any],
    known: Mapping[int, Any] | set[int],
    line: int | None = None,
) -> frozenset[int]:
    """The earlier tasks that `values` reference; a whole reference to any other is an error."""
    deps: set[int] = set()
    for n, whole in references(list(values)):
        if n in known and n != task_id:
            deps.add(n)
        elif whole:
            raise PlanError(
                f"task {task_id} references ${n}, which is not an earlier task", line=line
            )
    return frozenset(deps)


def result_text(value: Any) -> str:
    """How a result reads when substituted inside a string."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        with contextlib.suppress(ValueError):  # an int of 4,300+ digits has no str()
            return str(value)
        return to_json(value, fallback=repr).decode()


def resolve(value: Any, results: Mapping[int, Any], inputs: Container[int] | None = None) -> Any:
    """Replace references in `value` with results: whole refs by value, inner refs by text.

    With `inputs` (a task's dependencies) only those ids are substituted: any other `$N`
    stays as written whatever else has finished, so a task's arguments never depend on
    which of its siblings happened to finish first (nor on whether the run was resumed).
    """
    kind = type(value)
    if kind is str or isinstance(value, str):
        if "$" not in value:
            return value
        if (n := whole_ref(value)) is not None and n in results and (inputs is None or n in inputs):
            return results[n]

        def sub(m: re.Match[str]) -> str:
            k = int(m.group(1) or m.group(2))
            if k not in results or (inputs is not None and k not in inputs):
                return m.group(0)
            if isinstance(results[k], Remote):  # its text would be its description, not it
                raise ValueError(
                    f"${k} is kept on the cluster ({results[k]!r}): pass it whole, not inside text"
                )
            return result_text(results[k])

        return _REF.sub(sub, value)
    if kind is dict or (kind is not list and isinstance(value, dict)):
        return {
            k: v if type(v) in _INERT else resolve(v, results, inputs) for k, v in value.items()
        }
    if kind is list or isinstance(value, list):
        return [v if type(v) in _INERT else resolve(v, results, inputs) for v in value]
    if isinstance(value, tuple):
        return tuple(resolve(v, results, inputs) for v in value)
    return value


def shown(text: str, limit: int = 60) -> str:
    """Plan text as an error message shows it: trimmed, cut to `limit`, printable."""
    text = text.strip()
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
