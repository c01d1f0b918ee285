"""Plans: the Task record and the streaming parser for both plan forms.

A plan is data. This module turns planner text into `Task` records and never evaluates
anything: arguments go through `ast.parse` and `ast.literal_eval` only, so a plan can name
no variable, call nothing and import nothing. It knows no tools and does no I/O; checking a
task against a tool's signature is `tools.py`'s job.

Text form (LLMCompiler's)::

    Thought: free text, ignored
    1. search("Eiffel Tower height")
    2. compare(a=$1, b="height of ${2}")
    3. join()<END_OF_PLAN>

JSON form, same meaning: ``{"tasks": [{"id": 1, "tool": "search", "args": ["x"]}, ...]}``.

References: a string that is exactly ``$N`` or ``${N}`` (a bare ``$N`` in the text form is
read as that string) stands for task N's result value; ``$N`` inside a longer string stands
for the result's text. Whole references must point at a task emitted earlier; a ``$N``
inside a longer string that names no earlier task is left as literal text ("costs $5").
"""

from __future__ import annotations

import ast
import json
import keyword
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .backends.base import Remote
from .errors import PlanError

END_OF_PLAN = "<END_OF_PLAN>"
JOIN = "join"

# Ids have at most 18 digits: a longer run of digits is no task's id, just text (and
# int() of thousands of digits raises ValueError).
_REF = re.compile(r"\$\{(\d{1,18})\}|\$(\d{1,18})(?!\d)")
_WHOLE_REF = re.compile(r"\s*\$(?:\{(\d{1,18})\}|(\d{1,18}))\s*")
_TASK_START = re.compile(r"\s*(\d+)\s*\.\s*([A-Za-z_][\w.]*)\s*\(")
_BARE_JOIN = re.compile(r"\s*(\d+)\s*\.\s*join\s*$")
_FENCE = re.compile(r"\s*```[\w-]*\s*")


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
        m = _WHOLE_REF.fullmatch(value)
        if m:
            return int(m.group(1) or m.group(2))
    return None


def references(value: Any) -> list[tuple[int, bool]]:
    """(task id, is_whole) for every reference in a nested argument value."""
    found: list[tuple[int, bool]] = []
    _collect(value, found)
    return found


def _collect(value: Any, found: list[tuple[int, bool]]) -> None:
    if type(value) is str:  # the hot path: most values are strings or numbers
        if "$" in value:
            m = _WHOLE_REF.fullmatch(value)
            if m:
                found.append((int(m.group(1) or m.group(2)), True))
            else:
                found.extend((int(m.group(1) or m.group(2)), False) for m in _REF.finditer(value))
    elif isinstance(value, (list, tuple, set, frozenset)):
        for v in value:
            _collect(v, found)
    elif isinstance(value, dict):
        for v in value.values():
            _collect(v, found)
    elif isinstance(value, str):  # a str subclass
        _collect(str(value), found)


def mentions_reference(value: Any) -> bool:
    """Whether a value may hold a reference (a "$" in any of its strings): a cheap test."""
    if type(value) is str:
        return "$" in value
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(mentions_reference(v) for v in value)
    if isinstance(value, dict):
        return any(mentions_reference(v) for v in value.values())
    return isinstance(value, str) and "$" in value


def dependencies(
    task_id: int,
    values: Iterable[Any],
    known: Mapping[int, Any] | set[int],
    line: int | None = None,
) -> frozenset[int]:
    """The earlier tasks that `values` reference; a whole reference to any other is an error."""
    deps: set[int] = set()
    for value in values:
        for n, whole in references(value):
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
        return str(value)


def resolve(value: Any, results: Mapping[int, Any]) -> Any:
    """Replace references in `value` with results: whole refs by value, inner refs by text."""
    if isinstance(value, str):
        if "$" not in value:
            return value
        n = whole_ref(value)
        if n is not None and n in results:
            return results[n]

        def sub(m: re.Match[str]) -> str:
            k = int(m.group(1) or m.group(2))
            if k not in results:
                return m.group(0)
            if isinstance(results[k], Remote):  # its text would be its description, not it
                raise ValueError(
                    f"${k} is kept on the cluster ({results[k]!r}): pass it whole, not inside text"
                )
            return result_text(results[k])

        return _REF.sub(sub, value)
    if isinstance(value, list):
        return [resolve(v, results) for v in value]
    if isinstance(value, tuple):
        return tuple(resolve(v, results) for v in value)
    if isinstance(value, dict):
        return {k: resolve(v, results) for k, v in value.items()}
    return value


# -- text form ---------------------------------------------------------------------------


# A string literal (any quote style; escapes skipped), a lone quote that opens a string never
# closed, or a bracket. Scanning by these tokens keeps the parser in C for the long stretches.
_STRING = (
    r'"""(?:[^"\\]|\\.|"(?!""))*"""'
    r"|'''(?:[^'\\]|\\.|'(?!''))*'''"
    r'|"(?:[^"\\]|\\.)*"'
    r"|'(?:[^'\\]|\\.)*'"
)
_BRACKETS = re.compile(rf"{_STRING}|[\"']|[()\[\]{{}}]", re.S)
_STRING_OR_REF = re.compile(rf"({_STRING})|(\$\{{\d+\}}|\$\d+)", re.S)


def _scan_call(text: str, start: int) -> int | None:
    """Index of the ')' closing the '(' at `start`, skipping string literals; None if open."""
    depth = 0
    for m in _BRACKETS.finditer(text, start):
        c = m.group(0)
        if len(c) > 1:
            continue  # a whole string literal
        if c in "\"'":
            return None  # a string that never closes
        if c in "([{":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return m.start() if c == ")" else None
    return None


def _quote_bare_refs(text: str) -> str:
    """Turn bare $N / ${N} outside string literals into the strings "$N" / "${N}"."""
    if "$" not in text:
        return text
    return _STRING_OR_REF.sub(lambda m: m.group(1) or f'"{m.group(2)}"', text)


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    | (?P<ref>\$\{\d+\}|\$\d+)
    | (?P<num>-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.]))
    | (?P<name>[A-Za-z_]\w*)
    | (?P<op>[\[\](){},:=])
    )""",
    re.X,
)
_CONSTANTS = {"True": True, "False": False, "None": None}


class _NotSimple(Exception):
    """The fast literal reader met something it leaves to `ast`."""


def _fast_arguments(raw: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Read call arguments made of plain literals and refs without `ast`: the common case.

    Gives exactly what the `ast` path gives, or raises _NotSimple for anything else
    (triple quotes, string prefixes, implicit concatenation, sets, expressions, names).
    """
    if '"""' in raw or "'''" in raw:
        raise _NotSimple
    tokens: list[tuple[str, str]] = []
    pos, n = 0, len(raw)
    while pos < n:
        m = _TOKEN.match(raw, pos)
        if m is None or m.end() == pos:
            if raw[pos:].isspace():
                break
            raise _NotSimple
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    tokens.append(("end", ""))
    i = 0

    def value() -> Any:
        nonlocal i
        kind, text = tokens[i]
        i += 1
        if kind == "str":
            if tokens[i][0] == "str":
                raise _NotSimple  # implicit concatenation
            return text[1:-1] if "\\" not in text else ast.literal_eval(text)
        if kind == "ref":
            return text
        if kind == "num":
            return float(text) if any(c in text for c in ".eE") else int(text)
        if kind == "name" and text in _CONSTANTS:
            return _CONSTANTS[text]
        if kind == "op" and text in "[(":
            close = "]" if text == "[" else ")"
            items, trailing = sequence(close)
            if close == "]":
                return items
            return items[0] if len(items) == 1 and not trailing else tuple(items)
        if kind == "op" and text == "{":
            out: dict[Any, Any] = {}
            while tokens[i] != ("op", "}"):
                key = value()
                if tokens[i] != ("op", ":"):
                    raise _NotSimple  # a set, or worse
                i += 1
                out[key] = value()
                if tokens[i] == ("op", ","):
                    i += 1
                elif tokens[i] != ("op", "}"):
                    raise _NotSimple
            i += 1
            return out
        raise _NotSimple

    def sequence(close: str) -> tuple[list[Any], bool]:
        nonlocal i
        items: list[Any] = []
        trailing = False
        while tokens[i] != ("op", close):
            items.append(value())
            trailing = False
            if tokens[i] == ("op", ","):
                i += 1
                trailing = True
            elif tokens[i] != ("op", close):
                raise _NotSimple
        i += 1
        return items, trailing

    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    while tokens[i][0] != "end":
        if tokens[i][0] == "name" and tokens[i + 1] == ("op", "="):
            key = tokens[i][1]
            if key in kwargs or keyword.iskeyword(key):
                raise _NotSimple
            i += 2
            kwargs[key] = value()
        elif kwargs:
            raise _NotSimple  # positional after keyword
        else:
            args.append(value())
        if tokens[i] == ("op", ","):
            i += 1
        elif tokens[i][0] != "end":
            raise _NotSimple
    return tuple(args), kwargs


def parse_arguments(text: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Arguments of a call as Python literals; anything else is one string, as LLMCompiler does.

    `search(In Cold Blood)` gives ("In Cold Blood",): the tool's schema decides whether that fits.
    """
    raw = text.strip()
    if not raw:
        return (), {}
    try:
        return _fast_arguments(raw)
    except (_NotSimple, ValueError, TypeError, SyntaxError, RecursionError):
        pass
    try:
        node = ast.parse(f"_({_quote_bare_refs(raw)})", mode="eval").body
        assert isinstance(node, ast.Call)
        args = tuple(ast.literal_eval(a) for a in node.args)
        kwargs: dict[str, Any] = {}
        for kw in node.keywords:
            if kw.arg is None:
                raise ValueError("** is not a literal")
            if kw.arg in kwargs:
                raise ValueError(f"keyword argument {kw.arg} repeated")  # as Python says
            kwargs[kw.arg] = ast.literal_eval(kw.value)
        return args, kwargs
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError, AssertionError):
        return (raw,), {}


class PlanParser:
    """Incremental plan parser: feed it text as it streams, get each task once its line is done.

    `feed` and `close` return the tasks completed by that text. After the plan's end (`join()`,
    `<END_OF_PLAN>`, a `###` line, or the JSON array's close) `done` is True and further text
    is ignored, so a caller may stop the stream early. Errors raise PlanError naming the line;
    tasks returned before the error stay valid.
    """

    def __init__(self, known: Iterable[int] = ()) -> None:
        self.known: set[int] = set(known)  # ids that references may point at
        self.done = False
        self.joined = False  # the plan ended with join()
        self._form = ""  # "", "text" or "json"
        self._buf = ""
        self._line = 0  # lines consumed so far (text form)
        self._pending: list[str] = []  # lines of a task whose parenthesis is still open
        self._pending_line = 0
        self._json: _JsonTasks | None = None

    # public -----------------------------------------------------------------------------

    def feed(self, chunk: str) -> list[Task]:
        if self.done or not chunk:
            return []
        if not self._form:
            self._buf += chunk
            head = _FENCE.sub("", self._buf, count=1).lstrip()
            if not head or "```".startswith(head):
                return []  # nothing yet, or the start of a fence split across chunks
            self._form = "json" if head[0] in "{[" else "text"
            chunk, self._buf = self._buf, ""
            if self._form == "json":
                self._json = _JsonTasks()
        if self._json is not None:
            return self._json_tasks(self._json.feed(chunk))
        self._buf += chunk
        if "\n" not in self._buf and END_OF_PLAN not in self._buf:
            return []
        lines = self._buf.split("\n")
        self._buf = lines.pop()
        tasks: list[Task] = []
        for line in lines:
            self._text_line(line, tasks)
            if self.done:
                self._buf = ""
                return tasks
        if END_OF_PLAN in self._buf:
            self._text_line(self._buf, tasks)
            self._buf = ""
        return tasks

    def close(self) -> list[Task]:
        """End of text: flush the last line and check nothing was left open."""
        tasks: list[Task] = []
        if self._json is not None:
            if not self.done:
                tasks = self._json_tasks(self._json.close())
        elif not self.done:
            if self._buf:
                self._text_line(self._buf, tasks)
                self._buf = ""
            if self._pending:
                self._unclosed()
        self.done = True
        return tasks

    # text form ---------------------------------------------------------------------------

    def _text_line(self, line: str, out: list[Task]) -> None:
        self._line += 1
        end = line.find(END_OF_PLAN)
        if end >= 0:
            line = line[:end]
        if self._pending:
            if _TASK_START.match(line) or line.lstrip().startswith(("Thought", "###")):
                self._unclosed()
            self._pending.append(line)
            self._try_task("\n".join(self._pending), self._pending_line, out)
        elif line.lstrip().startswith("###"):
            self.done = True
            return
        elif _TASK_START.match(line):
            self._pending_line = self._line
            self._pending = [line]
            self._try_task(line, self._line, out)
        elif _BARE_JOIN.match(line):
            self.done = self.joined = True
            return
        if end >= 0 and not self.done:
            if self._pending:
                self._unclosed()
            self.done = True

    def _try_task(self, text: str, line: int, out: list[Task]) -> None:
        m = _TASK_START.match(text)
        assert m is not None
        close = _scan_call(text, m.end() - 1)
        if close is None:
            return  # parenthesis still open: wait for the next line
        self._pending = []
        if len(m.group(1)) > 18:
            raise PlanError(f"task id {m.group(1)[:20]}... is too large", line=line)
        task_id, name = int(m.group(1)), m.group(2)
        if name == JOIN:
            self.done = self.joined = True
            return
        args, kwargs = parse_arguments(text[m.end() : close])
        out.append(self._task(task_id, name, args, kwargs, line))

    def _unclosed(self) -> None:
        first = self._pending[0].strip()
        snippet = first if len(first) <= 60 else first[:57] + "..."
        self._pending = []
        raise PlanError(f"unclosed parenthesis in task: {snippet}", line=self._pending_line)

    # both forms ------------------------------------------------------------------------

    def _task(
        self, task_id: int, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], line: int
    ) -> Task:
        if task_id in self.known:
            raise PlanError(f"task id {task_id} is used twice", line=line)
        deps = dependencies(task_id, (*args, *kwargs.values()), self.known, line)
        self.known.add(task_id)
        return Task(task_id, name, args, kwargs, deps, line)

    def _json_tasks(self, objects: list[tuple[str, int]]) -> list[Task]:
        tasks: list[Task] = []
        for text, line in objects:
            try:
                obj = json.loads(text)
            except ValueError as e:
                raise PlanError(f"invalid JSON task: {e}", line=line) from None
            task = self._json_task(obj, line)
            if task is None:
                self.done = self.joined = True
                break
            tasks.append(task)
        if self._json is not None and self._json.finished:
            self.done = True
        return tasks

    def _json_task(self, obj: Any, line: int) -> Task | None:
        if not isinstance(obj, dict):
            raise PlanError("a JSON task must be an object", line=line)
        name = obj.get("tool")
        if not isinstance(name, str) or not name:
            raise PlanError('a JSON task needs a "tool" name', line=line)
        if name == JOIN:
            return None
        task_id = obj.get("id")
        if not isinstance(task_id, int) or isinstance(task_id, bool):
            raise PlanError(f'JSON task "{name}" needs an integer "id"', line=line)
        raw = obj.get("args", [])
        kwargs = obj.get("kwargs", {})
        if isinstance(raw, dict):
            args, kwargs = (), {**raw, **kwargs} if isinstance(kwargs, dict) else raw
        elif isinstance(raw, list):
            args = tuple(raw)
        else:
            raise PlanError(f'task {task_id}: "args" must be a list or an object', line=line)
        if not isinstance(kwargs, dict):
            raise PlanError(f'task {task_id}: "kwargs" must be an object', line=line)
        return self._task(task_id, name, args, kwargs, line)


class _JsonTasks:
    """Finds each complete task object in a streaming JSON plan without parsing the rest.

    Task objects are the objects directly inside the plan's array: `{"tasks": [ {..}, ..]}`
    or a bare `[ {..}, ..]`. Each is handed out, with its line, the moment its brace closes.
    """

    def __init__(self) -> None:
        self.finished = False
        self._text: list[str] = []
        self._obj: list[str] | None = None
        self._obj_line = 0
        self._line = 1
        self._depth = 0
        self._array_depth = 0  # depth at which task objects sit, once known
        self._in_string = False
        self._escape = False
        self._started = False

    def feed(self, chunk: str) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        for c in chunk:
            if self.finished:
                break
            if self._obj is not None:
                self._obj.append(c)
            if c == "\n":
                self._line += 1
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif c == "\\":
                    self._escape = True
                elif c == '"':
                    self._in_string = False
                continue
            if c == '"':
                self._in_string = True
            elif c in "{[":
                if not self._started:
                    self._started = True
                    self._array_depth = 1 if c == "[" else 2
                self._depth += 1
                if c == "{" and self._depth == self._array_depth + 1 and self._obj is None:
                    self._obj = [c]
                    self._obj_line = self._line
            elif c in "}]":
                self._depth -= 1
                if self._obj is not None and self._depth == self._array_depth:
                    out.append(("".join(self._obj), self._obj_line))
                    self._obj = None
                elif self._depth == 0:
                    self.finished = True
        return out

    def close(self) -> list[tuple[str, int]]:
        if not self.finished:
            what = "task object" if self._obj is not None else "plan"
            raise PlanError(f"JSON {what} is not closed at the end of the text", line=self._line)
        return []


def parse_plan(text: str, known: Iterable[int] = ()) -> list[Task]:
    """Parse a whole plan at once (same rules as streaming)."""
    parser = PlanParser(known)
    return [*parser.feed(text), *parser.close()]
