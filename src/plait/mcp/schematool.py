"""A tool whose contract is a JSON Schema, not a Python signature: what an MCP server offers.

`Tool` reads its parameters from a function's signature and checks arguments with pydantic.
A `SchemaTool` is given the JSON Schema of its arguments object and an async callable taking
that object: the planner sees the schema as given (`schema()`, and `signature()` built from
its properties), and arguments are checked against it with `jsonschema`, literals when a task
is added (a plan that can never fit is rejected before anything runs), every argument once
references are resolved, before the call.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError

from ..core.task import Task, mentions_reference
from ..core.tools import Tool
from ..errors import PlanError, ToolError

__all__ = ["SchemaTool"]

Call = Callable[[dict[str, Any]], Awaitable[Any]]


class SchemaTool(Tool):
    """A tool called with one arguments object checked against `schema`."""

    def __init__(
        self,
        call: Call,
        schema: Mapping[str, Any],
        *,
        name: str,
        description: str = "",
        pure: bool = False,
        max_concurrency: int | None = None,
        timeout: float | None = None,
        retries: int = 0,
        retry_backoff: float = 0.1,
        source: str = "",
        note: str = "",
    ) -> None:
        # Not Tool.__init__: there is no signature to read. The same attributes, set here.
        if max_concurrency is not None and max_concurrency < 1:
            raise ToolError(f"tool {name}: max_concurrency must be at least 1")
        self.fn = call
        self.name = name
        self.description = description
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.retries = retries
        self.retry_backoff = retry_backoff
        self.pure = pure
        self.resources: dict[str, Any] = {}
        self.stateful = False
        self.is_async = True
        self.source = source  # where it comes from, as `plait tools` shows it
        self.note = note  # e.g. why it was renamed
        self._input_schema = dict(schema) or {"type": "object"}
        try:
            cls = jsonschema.validators.validator_for(self._input_schema)
            cls.check_schema(self._input_schema)
        except jsonschema.SchemaError as e:
            raise ToolError(f"tool {name}: invalid input schema: {e.message}") from None
        self._validator = cls(self._input_schema)
        # Literals are checked without `required`: the others may come from references.
        self._partial = cls({k: v for k, v in self._input_schema.items() if k != "required"})
        props = self._input_schema.get("properties")
        self._properties: dict[str, Any] = dict(props) if isinstance(props, Mapping) else {}
        self._required = [r for r in self._input_schema.get("required", []) if isinstance(r, str)]
        # An argument the schema does not name is refused unless the schema says others are
        # welcome: servers built on the SDKs leave `additionalProperties` out, and ignore a
        # misspelled one, which would answer as if it had not been given.
        extra = self._input_schema.get("additionalProperties")
        self._open = extra is True or isinstance(extra, Mapping)
        patterns = self._input_schema.get("patternProperties")
        self._patterns = (
            [p for p in patterns if isinstance(p, str)] if isinstance(patterns, Mapping) else []
        )

    def options(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "pure": self.pure,
            "max_concurrency": self.max_concurrency,
            "timeout": self.timeout,
            "retries": self.retries,
            "retry_backoff": self.retry_backoff,
            "source": self.source,
            "note": self.note,
        }

    def renamed(self, name: str) -> SchemaTool:
        if name == self.name:
            return self
        return SchemaTool(self.fn, self._input_schema, **{**self.options(), "name": name})

    def __reduce__(self) -> tuple[Any, ...]:
        raise ToolError(f"tool {self.name} ({self.source}) runs in this process only")

    def invoke(self, arguments: dict[str, Any]) -> Any:
        return self.fn(arguments)

    def __repr__(self) -> str:
        return f"<SchemaTool {self.signature()}>"

    def schema(self) -> dict[str, Any]:
        return copy.deepcopy(self._input_schema)

    def signature(self) -> str:
        """`name(a: string, b: integer = 3)`: required parameters first, as the schema lists."""
        parts = []
        order = self._required + [p for p in self._properties if p not in self._required]
        for pname in order:
            prop = self._properties.get(pname)
            kind = _type_name(prop, self._input_schema) if isinstance(prop, Mapping) else ""
            part = f"{pname}: {kind}" if kind else pname
            if pname not in self._required and isinstance(prop, Mapping) and "default" in prop:
                part += f" = {prop['default']!r}"
            parts.append(part)
        return f"{self.name}({', '.join(parts)})"

    def bind(self, task: Task) -> dict[str, Any]:
        """Arguments named (positional ones in the schema's order); literals checked."""
        where = f"task {task.id} ({self.name})"
        order = self._required + [p for p in self._properties if p not in self._required]
        if len(task.args) > len(order):
            raise PlanError(
                f"{where}: takes {len(order)} positional arguments, {len(task.args)} given",
                line=task.line,
            )
        bound = dict(zip(order, task.args, strict=False))
        for key, value in task.kwargs.items():
            if key in bound:
                raise PlanError(f"{where}: argument {key!r} given twice", line=task.line)
            if key not in self._properties and not self._open and not self._matches(key):
                raise PlanError(f"{where}: unknown argument {key!r}", line=task.line)
            bound[key] = value
        for pname in self._required:
            if pname not in bound:
                raise PlanError(f"{where}: missing argument {pname!r}", line=task.line)
        literal = {k: v for k, v in bound.items() if not task.deps or not mentions_reference(v)}
        error = _first_error(self._partial, literal)
        if error is not None:
            raise PlanError(f"{where}: {error}", line=task.line)
        return bound

    def _matches(self, key: str) -> bool:
        """Whether a `patternProperties` pattern of the schema admits argument `key`."""
        for pattern in self._patterns:
            try:
                if re.search(pattern, key):
                    return True
            except re.error:
                continue
        return False

    def validate(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(arguments)
        error = _first_error(self._validator, out)
        if error is not None:
            raise ValueError(f"invalid arguments for {self.name}: {error}")
        return out


def _first_error(validator: Any, instance: dict[str, Any]) -> str | None:
    """The first schema violation in words, `argument 'x': ...`, or None."""
    best: ValidationError | None = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    if best is None:
        return None
    path = list(best.absolute_path)
    if path:
        rest = "".join(f"[{p!r}]" for p in path[1:])
        return f"argument {path[0]!r}{rest}: {best.message}"
    return best.message


def _type_name(prop: Mapping[str, Any], root: Mapping[str, Any], depth: int = 0) -> str:
    """A short type for the signature line: `string`, `array[integer]`, `'a' | 'b'`."""
    ref = prop.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/") and depth < 8:
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, Mapping) else None
        return _type_name(target, root, depth + 1) if isinstance(target, Mapping) else ""
    kind = prop.get("type")
    if isinstance(kind, list):
        return " | ".join(str(k) for k in kind)
    if isinstance(kind, str):
        if kind == "array" and isinstance(prop.get("items"), Mapping):
            inner = _type_name(prop["items"], root, depth + 1)
            return f"array[{inner}]" if inner else "array"
        return kind
    if "enum" in prop:
        return " | ".join(repr(v) for v in prop["enum"])
    for key in ("anyOf", "oneOf"):
        if isinstance(prop.get(key), list):
            return " | ".join(
                _type_name(p, root, depth + 1) or "any" for p in prop[key] if isinstance(p, Mapping)
            )
    return ""
