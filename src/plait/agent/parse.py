"""The streaming plan parser: planner text, in either plan form, to `Task` records.

A plan is data. This module turns planner text into `Task` records and never evaluates
anything: arguments go through `ast.parse` and `ast.literal_eval` only, so a plan can name
no variable, call nothing and import nothing. It does no I/O and knows tools only by name,
when told them, so that a line calling one is never skipped; checking a task against a
tool's signature is `plait.core.tools`' job.

Text form (LLMCompiler's)::

    Thought: free text, ignored
    1. search("Eiffel Tower height")
    2. compare(a=$1, b="height of ${2}")
    3. join()<END_OF_PLAN>

A task is `N. tool(arguments)`, on one line or continued while its parenthesis is open;
`N)` or `N:` may stand for `N.`, and Markdown bullets and emphasis around it are ignored
(`- 1. search("x")`, `**1. search("x")**`). Only whitespace or emphasis may follow the call.
A line that starts like a call of a tool the parser was told of, but is no task
(`2. search "b"`, `2. search`, an unnumbered `search("b")`), is an error naming the line.

JSON form, same meaning: ``{"tasks": [{"id": 1, "tool": "search", "args": ["x"]}, ...]}``,
or the bare array. Only the objects in "tasks" are tasks: another key, an entry that is not
a task object, or a field of the wrong kind is an error naming the entry.

Arguments are the values JSON can keep: str, int, float, bool, None, list, tuple (carried
as a list, as JSON has none) and dict with string keys, at most `MAX_NESTING` deep. Anything
else (`...`, a set, bytes, 1e999, a lone surrogate) is an error naming the line, so every
accepted plan can be recorded, and read back as it was written.

References: a string that is exactly ``$N`` or ``${N}`` (a bare ``$N`` in the text form is
read as that string) stands for task N's result value; ``$N`` inside a longer string stands
for the result's text. Whole references must point at a task emitted earlier; a ``$N``
inside a longer string that names no earlier task is literal text ("costs $5"), and stays
so: `resolve` substitutes a task's own inputs only, never whatever else has finished.
"""

from __future__ import annotations

import ast
import json
import keyword
import math
import re
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from pydantic_core import from_json

from ..core.task import JOIN, Task, dependencies, shown
from ..errors import PlanError

END_OF_PLAN = "<END_OF_PLAN>"
# How deep lists and dicts may nest in one argument: far past any real plan, and well within
# what the JSON encoders and decoders a run is recorded with accept (about 250 levels).
MAX_NESTING = 100
_MAX_INT = 10**4000  # JSON decoders refuse integers of more than about 4300 digits
MAX_TASK_ID = 10**18  # ids have at most 18 digits: a plan's id is below this

# What may stand before a task: whitespace, Markdown bullets, quotes, emphasis, code marks.
_DECOR = r"[\s*_`>+•-]*"
# A task's id: `N.`, or `N)`, `N:`, `[N]`, `(N)`.
_NUMBER = r"[\[(]?(\d+)(?:\s*[.):]|\])"
# An id, emphasis, a name and, for a call, its opening parenthesis.
_HEAD = re.compile(rf"{_DECOR}{_NUMBER}[\s*`]*([A-Za-z_][\w.]*)\s*(\(?)")
_UNNUMBERED_CALL = re.compile(r"[\s*`>+•-]*([A-Za-z_][\w.]*)\s*\(")
_JOIN_LINE = re.compile(rf"{_DECOR}(?:{_NUMBER}[\s*`]*)?join\s*(?:\(\s*\))?[\s*_`.,;]*")
_AFTER_CALL = re.compile(r"[\s*_`.,;]*")  # what may follow a task's closing parenthesis
_TOOL_NAME = re.compile(r"[A-Za-z_][\w.]*")
_FENCE = re.compile(r"\s*```[\w-]*\s*")
_SURROGATE = re.compile("[\ud800-\udfff]")

# The common task line, read without the general machinery: `N. tool(args)` whose arguments
# are only double-quoted strings without escapes, bare references, integers, True, False,
# None and lists of them. Those are JSON once references are quoted and the constants
# spelled JSON's way, so a strict JSON decoder reads them, or rejects what Python would too
# (a trailing comma, a missing one): then the line goes the general way.
_SIMPLE_TOKEN = (
    r'"[^"\\\x00-\x1f]*"|\$(?:\{\d{1,18}\}|\d{1,18})(?!\d)|-?(?:0|[1-9]\d{0,17})(?!\d)'
    r"|True|False|None|[\[\],]"
)
_SIMPLE_LINE = re.compile(
    rf"[ \t]*(\d{{1,18}})\.[ \t]*([A-Za-z_]\w*)\(((?:[ \t]*(?:{_SIMPLE_TOKEN}))*)[ \t]*\)\s*"
)
_SIMPLE_REWRITE = re.compile(r'"[^"]*"|\$\{?(\d+)\}?|True|False|None')
_JSON_CONSTANTS = {"True": "true", "False": "false", "None": "null"}


# A quote opening a string literal, or a bracket; and the rest of each kind of string
# literal after its opening quote, through its closing one.
_QUOTE_OR_BRACKET = re.compile(r"\"\"\"|'''|[\"'()\[\]{}]")
_STRING_REST = {
    '"': re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.S),
    "'": re.compile(r"[^'\\]*(?:\\.[^'\\]*)*'", re.S),
    '"""': re.compile(r'[^"\\]*(?:(?:\\.|"(?!""))[^"\\]*)*"""', re.S),
    "'''": re.compile(r"[^'\\]*(?:(?:\\.|'(?!''))[^'\\]*)*'''", re.S),
}


class _CallScan:
    """Finds the `)` closing a call's `(`, a line at a time, skipping string literals.

    It keeps where it stopped (the bracket depth, a string still open), so a call spread
    over many lines is read once, not again from its start at every line.
    """

    __slots__ = ("depth", "quote")

    def __init__(self) -> None:
        self.depth = 0
        self.quote = ""  # the quote of a string literal still open at the end of a line

    def feed(self, text: str, pos: int = 0) -> int | None:
        """Index of the closing `)` in `text`, or None while the call is still open.

        Raises ValueError for a bracket that closes the call other than `)`, or arguments
        nested deeper than MAX_NESTING.
        """
        n = len(text)
        while pos < n:
            if self.quote:
                m = _STRING_REST[self.quote].match(text, pos)
                if m is None:
                    return None  # the string goes on past this line
                pos, self.quote = m.end(), ""
                continue
            m = _QUOTE_OR_BRACKET.search(text, pos)
            if m is None:
                return None
            c, pos = m.group(), m.end()
            if c[0] in "\"'":
                self.quote = c
            elif c in "([{":
                self.depth += 1
                if self.depth > MAX_NESTING + 1:  # the call's own parenthesis is one
                    raise ValueError(f"arguments nested deeper than {MAX_NESTING} levels")
            else:
                self.depth -= 1
                if self.depth == 0:
                    if c == ")":
                        return m.start()
                    raise ValueError(f"{c!r} closes the call's parenthesis")
        return None


_STRING = (
    r'"""(?:[^"\\]|\\.|"(?!""))*"""'
    r"|'''(?:[^'\\]|\\.|'(?!''))*'''"
    r'|"(?:[^"\\]|\\.)*"'
    r"|'(?:[^'\\]|\\.)*'"
)
_STRING_OR_REF = re.compile(rf"({_STRING})|(\$\{{\d+\}}|\$\d+)", re.S)


def _quote_bare_refs(text: str) -> str:
    """Turn bare $N / ${N} outside string literals into the strings "$N" / "${N}"."""
    if "$" not in text:
        return text
    return _STRING_OR_REF.sub(lambda m: m.group(1) or f'"{m.group(2)}"', text)


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    | (?P<ref>\$\{\d+\}|\$\d+)
    | (?P<num>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?(?![\w.]))
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
    But arguments that start like keyword arguments (`name=` at the start of an argument)
    and are not valid ones (`x="a", x="b"`) are a PlanError saying why: read as one string,
    they would silently become a different call.
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
                raise ValueError(f"keyword argument repeated: {kw.arg}")  # as Python says
            kwargs[kw.arg] = ast.literal_eval(kw.value)
        return args, kwargs
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError, AssertionError) as e:
        if _KEYWORD_START.search(_top_level(raw)):
            why = e.msg if isinstance(e, SyntaxError) and e.msg else str(e)
            if not why.startswith("keyword argument") or len(why) > 80:
                why = f"invalid arguments: {shown(raw, 40)}"
            raise PlanError(why) from None
        return (raw,), {}


# `name=` (not `==`) starting an argument: arguments meant as keyword arguments.
_KEYWORD_START = re.compile(r"(?:^|,)\s*[A-Za-z_]\w*\s*=(?!=)")


def _top_level(raw: str) -> str:
    """`raw` with every string literal and bracketed part cut out: what separates the
    arguments. An unclosed string or bracket cuts out the rest."""
    out: list[str] = []
    pos, depth, n = 0, 0, len(raw)
    while pos < n:
        m = _QUOTE_OR_BRACKET.search(raw, pos)
        if m is None:
            if depth == 0:
                out.append(raw[pos:])
            break
        if depth == 0:
            out.append(raw[pos : m.start()])
        c, pos = m.group(), m.end()
        if c[0] in "\"'":
            rest = _STRING_REST[c].match(raw, pos)
            if rest is None:
                break
            pos = rest.end()
            if depth == 0:
                out.append('""')
        elif c in "([{":
            depth += 1
        elif depth > 0:
            depth -= 1
            if depth == 0:
                out.append("()")
    return "".join(out)


# -- what an argument may hold -----------------------------------------------------------

_LITERAL_KINDS = "str, int, float, bool, None, list, tuple or dict"


def carried(value: Any, where: str, line: int | None = None, depth: int = 0) -> Any:
    """`value` as a plan carries it: JSON's values, a tuple as a list. PlanError otherwise.

    What passes is recorded and read back unchanged, so a resumed run sees the arguments
    the first session saw: no `...`, set, bytes or complex, no infinite float, no lone
    surrogate, no integer JSON cannot read back, dict keys strings, nesting bounded.
    """
    kind = type(value)
    if kind is str:
        if not value.isascii() and _SURROGATE.search(value):
            raise PlanError(f"{where}: a string holds a lone surrogate: {shown(value)}", line=line)
        return value
    if kind is int:
        if not -_MAX_INT < value < _MAX_INT:
            raise PlanError(f"{where}: an integer of more than 4000 digits", line=line)
        return value
    if kind is bool or value is None:
        return value
    if kind is float:
        if not math.isfinite(value):
            raise PlanError(f"{where}: {value!r} is not a finite number", line=line)
        return value
    if kind is list or kind is tuple or kind is dict:
        if depth >= MAX_NESTING:
            raise PlanError(f"{where}: nested deeper than {MAX_NESTING} levels", line=line)
        if kind is not dict:
            return [carried(v, where, line, depth + 1) for v in value]
        out: dict[str, Any] = {}
        for k, v in value.items():
            if type(k) is not str:
                raise PlanError(
                    f"{where}: a dict key must be a string, not {_named(k)}",
                    line=line,
                )
            out[carried(k, where, line)] = carried(v, where, line, depth + 1)
        return out
    raise PlanError(f"{where}: {_named(value)} is not a plan literal ({_LITERAL_KINDS})", line=line)


def _named(value: Any) -> str:
    if value is Ellipsis:
        return "..."
    return f"{shown(repr(value), 40)} ({type(value).__name__})"


@dataclass(slots=True)
class _OpenCall:
    """A task whose parenthesis is still open: its lines so far and where its scan stopped."""

    id_text: str
    name: str
    line: int
    lines: list[str]
    start: int  # where its "(" is in lines[0]
    scan: _CallScan = field(default_factory=_CallScan)


class PlanParser:
    """Incremental plan parser: feed it text as it streams, get each task once its line is done.

    `feed` and `close` return the tasks completed by that text. After the plan's end (`join()`,
    `<END_OF_PLAN>`, a `###` line, or the JSON array's close) `done` is True and further text
    is ignored, so a caller may stop the stream early. Errors raise PlanError naming the line;
    tasks returned before the error stay valid.

    `tools`, the names of the tools a plan may call, makes a line that starts like a call of
    one of them but is no task an error (`2. search "b"`); without it such lines are text.
    """

    def __init__(self, known: Iterable[int] = (), tools: Container[str] | None = None) -> None:
        self.known: set[int] = set(known)  # ids that references may point at
        self.tools = tools
        self.done = False
        self.joined = False  # the plan ended with join()
        self._form = ""  # "", "text" or "json"
        self._head: list[str] = []  # the text before the form is known
        self._parts: list[str] = []  # the text of the line not yet complete
        self._tail = ""  # the last characters fed, for an END_OF_PLAN split across chunks
        self._line = 0  # lines consumed so far (text form)
        self._call: _OpenCall | None = None  # a task whose parenthesis is still open
        self._json: _JsonTasks | None = None

    # public -----------------------------------------------------------------------------

    def feed(self, chunk: str) -> list[Task]:
        if self.done or not chunk:
            return []
        if not self._form:
            self._head.append(chunk)
            if chunk.isspace():
                return []  # whitespace cannot tell the form (nor make sniffing quadratic)
            head = "".join(self._head)
            form, start = _sniff(head)
            if not form:
                self._head = [head]
                return []  # nothing yet, or too little to tell the form
            self._form = form
            chunk, self._head = head, []
            if form == "json":
                self._json = _JsonTasks(line=1 + chunk.count("\n", 0, start))  # after a fence
                chunk = chunk[start:]
        if self._json is not None:
            return self._json_feed(chunk)
        return self._text(chunk)

    def close(self) -> list[Task]:
        """End of text: flush the last line and check nothing was left open."""
        tasks: list[Task] = []
        if not self._form and self._head:  # too little to tell: read as text
            self._form, self._parts, self._head = "text", self._head, []
        if self._json is not None:
            if not self.done:
                self._json.close()
        elif not self.done:
            last = "".join(self._parts)
            self._parts = []
            if last:
                self._text_line(last, tasks)
            if self._call is not None and not self.done:
                self._unclosed()
        self.done = True
        return tasks

    # text form ---------------------------------------------------------------------------

    def _text(self, chunk: str) -> list[Task]:
        """Complete lines of `chunk` (with what came before) as tasks; linear in the text."""
        self._parts.append(chunk)
        seen = self._tail + chunk
        self._tail = seen[-len(END_OF_PLAN) :]
        if "\n" not in chunk and END_OF_PLAN not in seen:
            return []
        lines = "".join(self._parts).split("\n")
        last = lines.pop()
        self._parts = [last] if last else []
        tasks: list[Task] = []
        for line in lines:
            self._text_line(line, tasks)
            if self.done:
                self._parts = []
                return tasks
        if END_OF_PLAN in last:
            self._parts = []
            self._text_line(last, tasks)
        return tasks

    def _text_line(self, line: str, out: list[Task]) -> None:
        self._line += 1
        end = line.find(END_OF_PLAN)
        if end >= 0:
            line = line[:end]
        if self._call is not None:
            self._continue(line, out)
        elif line.lstrip().startswith("###"):
            self.done = True
            return
        else:
            self._start(line, out)
        if end >= 0 and not self.done:
            if self._call is not None:
                self._unclosed()
            self.done = True

    def _start(self, line: str, out: list[Task]) -> None:
        """A line outside any task: a task's first line, the plan's end, an error, or text."""
        m = _SIMPLE_LINE.fullmatch(line)
        if m is not None and m.group(2) != JOIN and self._simple(m, out):
            return
        if _JOIN_LINE.fullmatch(line):
            self.done = self.joined = True
            return
        m = _HEAD.match(line)
        if m is not None:
            id_text, name, paren = m.groups()
            if paren:
                self._call = _OpenCall(id_text, name, self._line, [line], m.end() - 1)
                self._advance(line, m.end() - 1, out)
            elif self._calls_tool(name):
                n = shown(id_text, 20)
                raise PlanError(
                    f"task {n}: {name} is not called: write {n}. {name}(...)", line=self._line
                )
            return
        m = _UNNUMBERED_CALL.match(line)
        if m is not None and self._calls_tool(m.group(1)):
            name = m.group(1)
            raise PlanError(
                f"{name}(...) has no task id: write N. {name}(...), N the next id",
                line=self._line,
            )

    def _simple(self, m: re.Match[str], out: list[Task]) -> bool:
        """The task of a line `_SIMPLE_LINE` matched, if its arguments decode as JSON (the
        same values `ast` would give) and hold no surrogate; else False, and nothing done."""
        text = m.group(3)
        if text.count("[") > MAX_NESTING or (not text.isascii() and _SURROGATE.search(text)):
            return False  # the general way names the line and the fault
        refs: list[int] = []
        inner = False  # a quoted string holds a "$": its references need the general walk

        def json_token(t: re.Match[str]) -> str:
            nonlocal inner
            token = t.group()
            if token[0] == '"':
                inner = inner or "$" in token
                return token
            if token[0] == "$":
                refs.append(int(t.group(1)))
                return f'"{token}"'
            return _JSON_CONSTANTS[token]

        try:
            args = from_json(f"[{_SIMPLE_REWRITE.sub(json_token, text)}]")
        except ValueError:
            return False
        task_id, line = int(m.group(1)), self._line
        self._new_id(task_id, line)  # first, as the general way checks it
        if inner:
            deps = dependencies(task_id, args, self.known, line)
        else:
            for n in refs:
                if n not in self.known or n == task_id:
                    raise PlanError(
                        f"task {task_id} references ${n}, which is not an earlier task", line=line
                    )
            deps = frozenset(refs)
        out.append(self._task(task_id, m.group(2), tuple(args), {}, line, deps))
        return True

    def _calls_tool(self, name: str) -> bool:
        return name == JOIN or (self.tools is not None and name in self.tools)

    def _continue(self, line: str, out: list[Task]) -> None:
        """The next line of a task whose parenthesis is open."""
        call = self._call
        assert call is not None
        if len(call.scan.quote) < 3:  # not inside a triple-quoted string
            m = _HEAD.match(line)
            if (m is not None and m.group(3)) or line.lstrip().startswith(("Thought", "###")):
                self._unclosed()
        call.lines.append(line)
        self._advance(line, 0, out)

    def _advance(self, line: str, pos: int, out: list[Task]) -> None:
        """Scan the open task's new line from `pos`; finish the task if it closes there."""
        call = self._call
        assert call is not None
        try:
            close = call.scan.feed(line, pos)
        except ValueError as e:
            self._call = None
            raise PlanError(f"task {shown(call.id_text, 20)}: {e}", line=self._line) from None
        if close is None:
            return  # the parenthesis is still open: wait for the next line
        self._call = None
        if len(call.id_text) > 18:
            raise PlanError(f"task id {call.id_text[:20]}... is too large", line=call.line)
        task_id = int(call.id_text)
        if call.name == JOIN:
            self.done = self.joined = True
            return
        rest = line[close + 1 :]
        if not _AFTER_CALL.fullmatch(rest):
            raise PlanError(
                f"task {task_id}: text after the call: {shown(rest, 40)} (one task per line)",
                line=self._line,
            )
        text = call.lines[0] if len(call.lines) == 1 else "\n".join(call.lines)
        end = len(text) - len(line) + close
        try:
            args, kwargs = parse_arguments(text[call.start + 1 : end])
        except PlanError as e:
            raise PlanError(f"task {task_id}: {e.message}", line=call.line) from None
        out.append(self._task(task_id, call.name, args, kwargs, call.line))

    def _unclosed(self) -> None:
        call = self._call
        assert call is not None
        self._call = None
        raise PlanError(f"unclosed parenthesis in task: {shown(call.lines[0])}", line=call.line)

    # both forms ------------------------------------------------------------------------

    def _task(
        self,
        task_id: int,
        name: str,
        args: Iterable[Any],
        kwargs: Mapping[str, Any],
        line: int,
        deps: frozenset[int] | None = None,
    ) -> Task:
        """The task, once its id is new; `deps` given means its arguments are known to be
        plan literals already (the simple line's), so they need no walk."""
        self._new_id(task_id, line)
        if deps is not None:
            self.known.add(task_id)
            return Task(task_id, name, tuple(args), dict(kwargs), deps, line)
        where = f"task {task_id}"
        carried_args = tuple(
            carried(v, f"{where}: argument {i}", line) for i, v in enumerate(args, 1)
        )
        carried_kwargs = {
            carried(k, where, line): carried(v, f"{where}: argument {k!r}", line)
            for k, v in kwargs.items()
        }
        values = (*carried_args, *carried_kwargs.values())
        deps = dependencies(task_id, values, self.known, line)
        self.known.add(task_id)
        return Task(task_id, name, carried_args, carried_kwargs, deps, line)

    def _new_id(self, task_id: int, line: int) -> None:
        if task_id in self.known:
            raise PlanError(f"task id {task_id} is used twice", line=line)

    # JSON form -------------------------------------------------------------------------

    def _json_feed(self, chunk: str) -> list[Task]:
        assert self._json is not None
        tasks: list[Task] = []

        def take(text: str, line: int, index: int) -> bool:
            where = f"tasks[{index}]"
            task = self._json_task(_decode(text, where, line), where, line)
            if task is None:  # join: the plan ends here
                self.joined = True
                return True
            tasks.append(task)
            return False

        self._json.feed(chunk, take)
        self.done = self._json.finished
        return tasks

    def _json_task(self, obj: dict[str, Any], where: str, line: int) -> Task | None:
        unknown = sorted(set(obj) - {"id", "tool", "args", "kwargs"})
        if unknown:
            raise PlanError(
                f'{where}: unknown key {shown(repr(unknown[0]), 40)} (a task has "id", "tool",'
                ' "args" and "kwargs")',
                line=line,
            )
        name = obj.get("tool")
        if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
            raise PlanError(f'{where}: a JSON task needs a "tool" name', line=line)
        if name == JOIN:
            return None
        task_id = obj.get("id")
        if type(task_id) is not int or not 0 <= task_id < MAX_TASK_ID:
            raise PlanError(
                f'{where}: JSON task "{name}" needs an integer "id" (0 to 18 digits)', line=line
            )
        args: Any = obj.get("args", [])
        kwargs: Any = obj.get("kwargs", {})
        if not isinstance(kwargs, dict):
            raise PlanError(f'{where}: "kwargs" must be an object', line=line)
        if isinstance(args, dict):
            both = sorted(args.keys() & kwargs.keys())
            if both:
                raise PlanError(
                    f'{where}: argument {shown(repr(both[0]), 40)} is in "args" and "kwargs"',
                    line=line,
                )
            kwargs = {**args, **kwargs}
            args = []
        elif not isinstance(args, list):
            raise PlanError(f'{where}: "args" must be a list or an object', line=line)
        return self._task(task_id, name, args, kwargs, line)


def _sniff(head: str) -> tuple[str, int]:
    """The form of a plan starting with `head` ("json", "text", or "" until it can tell)
    and where the JSON starts (after a Markdown fence).

    JSON only when it looks like a plan: an object whose first key is a string, or an
    array of objects. Text that merely starts with "[" or "{" is text.
    """
    fence = _FENCE.match(head)
    start = fence.end() if fence else 0
    rest = head[start:].lstrip()
    if not rest or (not fence and "```".startswith(rest)):
        return "", 0
    if rest[0] not in "{[":
        return "text", 0
    after = rest[1:].lstrip()
    if not after:
        return "", 0
    opens = '"}' if rest[0] == "{" else "{]"
    return ("json", start) if after[0] in opens else ("text", 0)


class _Refused(ValueError):
    """JSON that `json` reads but a plan may not hold."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"key {shown(repr(key), 40)} is repeated")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _decode(text: str, where: str, line: int) -> dict[str, Any]:
    """One task object's JSON text, decoded; PlanError naming it if it is not valid."""
    try:
        obj = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except _Refused as e:
        raise PlanError(f"{where}: {e}", line=line) from None
    except (ValueError, RecursionError) as e:
        raise PlanError(f"{where}: invalid JSON: {shown(str(e), 120)}", line=line) from None
    if not isinstance(obj, dict):
        raise PlanError(f"{where}: a JSON task must be an object", line=line)
    return obj


# States of _JsonTasks outside a task object.
_ROOT, _KEY_OR_END, _KEY, _COLON, _TASKS, _ITEM_OR_END, _ITEM, _AFTER_ITEM, _AFTER_TASKS = range(9)
_IN_KEY, _IN_TASK = 9, 10
_EXPECTED = {
    _KEY_OR_END: 'a key or "}"',
    _KEY: "a key",
    _COLON: '":"',
    _AFTER_ITEM: '"," or "]"',
    _AFTER_TASKS: '"," or "}"',
}
_JSON_SPACE = re.compile(r"[ \t\r\n]*")
_JSON_STRUCT = re.compile(r'[{}\[\]"]')
_JSON_STRING_REST = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*')


class _JsonTasks:
    """Reads a streaming JSON plan just far enough to hand out each task object as it closes.

    The plan is `{"tasks": [task, ...]}` or a bare `[task, ...]`; anything else outside the
    task objects (another key, an entry that is not an object, a missing comma) is an error
    naming where, at once. A task object's text is handed out whole, with its line and
    index, once its brace closes; its nesting is bounded here, so decoding it cannot
    recurse without limit. Every character is looked at once.
    """

    def __init__(self, line: int = 1) -> None:
        self.finished = False
        self._state = _ROOT
        self._bare = False  # the plan is a bare array of tasks
        self._has_tasks = False
        self._index = 0  # the next task object's index in the array
        self._line = line
        self._carry = ""  # a backslash ending a chunk inside a string: it escapes what follows
        self._text: list[str] = []  # the task object (or root key) being read
        self._text_line = 0
        self._depth = 0  # inside the task object
        self._in_string = False
        self.rest = ""  # the text fed after the plan's end, in the chunk that ended it
        self.rest_line = 0  # the line that text starts on

    def feed(self, chunk: str, take: Callable[[str, int, int], bool]) -> None:
        """Read `chunk`; hand each task object that closes in it to `take` (its text, line
        and index), which returns True when the plan ends there (a join)."""
        text, self._carry = self._carry + chunk, ""
        pos, n = 0, len(text)
        while pos < n and not self.finished:
            if self._state == _IN_TASK:
                pos = self._read_task(text, pos, take)
            elif self._state == _IN_KEY:
                pos = self._read_key(text, pos)
            else:
                m = _JSON_SPACE.match(text, pos)
                assert m is not None  # it matches the empty string
                self._line += text.count("\n", pos, m.end())
                pos = m.end()
                if pos < n:
                    pos = self._step(text, pos)
        if self.finished:
            self.rest, self.rest_line = text[pos:], self._line

    def close(self) -> None:
        if self.finished:
            return
        if self._state == _IN_TASK:
            raise PlanError(
                f"JSON task object tasks[{self._index}] is not closed at the end of the text",
                line=self._text_line,
            )
        raise PlanError("JSON plan is not closed at the end of the text", line=self._line)

    # outside task objects: one structural character at a time ---------------------------

    def _step(self, text: str, pos: int) -> int:
        """Take the structural character at `pos`; return where reading goes on."""
        c, state = text[pos], self._state
        if state == _ROOT:  # the sniffer saw "{" or "["
            self._bare = c == "["
            self._state = _ITEM_OR_END if self._bare else _KEY_OR_END
        elif state in (_KEY_OR_END, _KEY) and c == '"':
            self._state, self._text, self._in_string = _IN_KEY, [], True
        elif state == _KEY_OR_END and c == "}":
            self._fail('a JSON plan needs a "tasks" array')
        elif state == _COLON and c == ":":
            self._state = _TASKS
        elif state == _TASKS:
            if c != "[":
                self._fail(f'"tasks" must be an array, not {_json_kind(c)}')
            self._state = _ITEM_OR_END
        elif state in (_ITEM_OR_END, _ITEM):
            if c == "]" and state == _ITEM_OR_END:
                self._end_tasks()
            elif c != "{":
                self._fail(f"tasks[{self._index}] must be a task object, not {_json_kind(c)}")
            else:  # a task object: read from its brace on
                self._state, self._text, self._text_line = _IN_TASK, [], self._line
                self._depth, self._in_string = 0, False
                return pos
        elif state == _AFTER_ITEM and c in ",]":
            if c == ",":
                self._state = _ITEM
            else:
                self._end_tasks()
        elif state == _AFTER_TASKS and c in ",}":
            if c == ",":
                self._state = _KEY
            else:
                self.finished = True
        else:
            self._fail(f"expected {_EXPECTED[state]}, not {shown(repr(c))}")
        return pos + 1

    def _end_tasks(self) -> None:
        if self._bare:
            self.finished = True
        else:
            self._state = _AFTER_TASKS

    def _fail(self, message: str) -> NoReturn:
        raise PlanError(f"invalid JSON plan: {message}", line=self._line)

    def _read_key(self, text: str, pos: int) -> int:
        """A key of the plan object: it must be "tasks", once."""
        end = self._string_end(text, pos)
        self._text.append(text[pos:end])
        if self._in_string:
            return len(text)
        raw = "".join(self._text)
        try:
            key = json.loads(f'"{raw}"')
        except ValueError:
            self._fail(f"invalid key {shown(raw, 40)}")
        if key != "tasks":
            self._fail(f'unknown key {shown(repr(key), 40)}: a JSON plan has only "tasks"')
        if self._has_tasks:
            self._fail('"tasks" is given twice')
        self._has_tasks = True
        self._state = _COLON
        return end + 1

    def _string_end(self, text: str, pos: int) -> int:
        """Where the string open at `pos` closes in `text` (its quote), else len(text) with
        the string still open (a final lone backslash kept for the next chunk)."""
        m = _JSON_STRING_REST.match(text, pos)
        assert m is not None  # it matches the empty string
        end = m.end()
        self._line += text.count("\n", pos, end)
        if end < len(text) and text[end] == '"':
            self._in_string = False
            return end
        if end < len(text):  # a backslash, last: it escapes the next chunk's first character
            self._carry = text[end:]
        return end

    # inside a task object: only brackets and strings matter here -------------------------

    def _read_task(self, text: str, pos: int, take: Callable[[str, int, int], bool]) -> int:
        start, n = pos, len(text)
        while pos < n:
            if self._in_string:
                end = self._string_end(text, pos)
                if self._in_string:
                    self._text.append(text[start:end])
                    return n
                pos = end + 1
                continue
            m = _JSON_STRUCT.search(text, pos)
            if m is None:
                self._line += text.count("\n", pos, n)
                pos = n
                break
            self._line += text.count("\n", pos, m.start())
            c, pos = m.group(), m.end()
            if c == '"':
                self._in_string = True
            elif c in "{[":
                self._depth += 1
                if self._depth > MAX_NESTING + 2:  # the task object and its "args" are two
                    raise PlanError(
                        f"tasks[{self._index}]: nested deeper than {MAX_NESTING} levels",
                        line=self._text_line,
                    )
            else:
                self._depth -= 1
                if self._depth == 0:
                    self._text.append(text[start:pos])
                    index, self._index = self._index, self._index + 1
                    self._state = _AFTER_ITEM
                    if take("".join(self._text), self._text_line, index):
                        self.finished = True
                    return pos
        self._text.append(text[start:pos])
        return pos


def _json_kind(c: str) -> str:
    """What a JSON value starting with `c` is, for an error message."""
    kinds = {'"': "a string", "[": "an array", "{": "an object", "t": "true", "f": "false"}
    if c in kinds:
        return kinds[c]
    if c == "n":
        return "null"
    return "a number" if c in "-0123456789" else shown(repr(c))


def parse_plan(
    text: str, known: Iterable[int] = (), tools: Container[str] | None = None
) -> list[Task]:
    """Parse a whole plan at once (same rules as streaming), except that a JSON plan's text
    must end with it: anything after it but a closing code fence or `<END_OF_PLAN>` (a
    second plan, a task line) is a PlanError naming its line, not dropped."""
    parser = PlanParser(known, tools)
    tasks = [*parser.feed(text), *parser.close()]
    if parser._json is not None:
        _nothing_after(parser._json, parser.joined)
    return tasks


# What may follow a whole JSON plan: the closing brackets left after a join task, then a
# closing code fence and/or END_OF_PLAN.
_JOIN_CLOSE = {True: re.compile(r"\s*\]"), False: re.compile(r"\s*\]\s*\}")}
_PLAN_TAIL = re.compile(r"(?:\s*(?:```|" + re.escape(END_OF_PLAN) + r"))*\s*")


def _nothing_after(plan: _JsonTasks, joined: bool) -> None:
    rest, line = plan.rest, plan.rest_line
    if joined:
        m = _JOIN_CLOSE[plan._bare].match(rest)
        if m is not None:
            line += rest.count("\n", 0, m.end())
            rest = rest[m.end() :]
    m = _PLAN_TAIL.match(rest)
    assert m is not None  # it matches the empty string
    if m.end() < len(rest):
        at = m.end()
        line += rest.count("\n", 0, at)
        after = shown(rest[at:].split("\n", 1)[0], 40)
        raise PlanError(f"text after the end of the JSON plan: {after}", line=line)
