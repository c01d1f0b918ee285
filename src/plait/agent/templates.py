"""The plan cache: a question answered on its first plan teaches a template for its shape.

Agentic Plan Caching (Zhang et al. 2025), on plait's plans. After a run whose joiner finished
on the first plan, `learn` turns that plan into a `Template`:

- the string literals of the plan's arguments that are phrases of the question (a whole
  argument, or a run of the question's words inside one that names something: a capital
  letter or a digit) become **slots**; everything else, `$N` references included, stays;
- the question, tokenised (numbers, words, punctuation; case folded), with each slot's
  phrase replaced by its slot, is the template's **shape**.

`match` tokenises a new question and fits it to each live template's shape: fixed tokens
must be equal, a slot takes one to `MAX_SLOT_TOKENS` tokens (the same phrase wherever the
slot repeats). `Template.instantiate` then rebuilds the plan with each slot filled with the
new question's own text for it, and nothing else: the question is never evaluated, a slot
value is never parsed, and a phrase holding `$` (which could read as a reference) never
matches. The caller still has the joiner check the results; a `Replan` is a `miss`, and a
template that misses `max_misses` times is dropped.

Templates persist in the run store's call cache (`Store.get_calls`/`put_calls`) under the
scope `plan-template:<tool set fingerprint>`, so memory, SQLite and PostgreSQL keep them with
no schema of their own. That cache is append-only (a key keeps its first value), so the
templates are a log: template N at key `t:N` (a writer that loses a race for N takes N+1)
and its K-th recorded miss at `m:N:K`. Concurrent misses of one template may be recorded
once: a template then lives a little longer, never shorter. A store that fails is a cache
that forgets: runs go on planning.

This module owns the templates; it never calls a model or runs a task.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..core.task import Task
from ..core.tools import Tools
from ..errors import PlaitError
from .schema import EDGE_WORDS, FUNCTION_WORDS

MAX_SLOT_TOKENS = 8  # a slot of a new question spans at most this many tokens
MAX_QUESTION_TOKENS = 120  # a longer question is no template's, and matches none
MAX_SLOTS = 6  # a plan with more of the question's phrases in it teaches no template
MIN_FIXED_WORDS = 2  # a shape keeps at least this many words of its own ("how tall is")
MAX_MISSES = 2  # a template is dropped after this many replans
LOAD_CHUNK = 200  # templates read per query when a cache loads
VERSION = 1

# Numbers whole ("2,504.5"), then words, then any other visible character alone.
_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|\w+|[^\w\s]")


class CallStore(Protocol):
    """What the plan cache needs of a run store (stores/base.py's `Store` has it)."""

    def get_calls(self, scope: str, keys: Sequence[str]) -> dict[str, str]: ...

    def put_calls(self, scope: str, items: Sequence[tuple[str, str]]) -> None: ...


@dataclass(frozen=True, slots=True)
class Token:
    text: str  # case-folded
    start: int  # where it is in the text it came from
    end: int
    raw: str  # as written


def tokens(text: str) -> list[Token]:
    """`text` as the plan cache compares it: numbers, words, punctuation, case-folded."""
    return [
        Token(m.group().casefold(), m.start(), m.end(), m.group()) for m in _TOKEN.finditer(text)
    ]


# -- what a slot may hold -------------------------------------------------------------------
# A slot learned from a name ("Statue of Liberty") takes only a name, one learned from a
# number only a number, and one learned from other words only words, at most two more than
# it had: so "How tall is the {0}?" never swallows "Golden Gate in feet" as a name.
NAME, NUMBER, TEXT = "name", "number", "text"
GROUPED = "grouped"  # a number written with commas ("1,000", "2,5"): holds only such numbers
CONNECTORS = frozenset(
    ("of", "the", "de", "la", "le", "du", "des", "del", "da", "di", "von", "van", "y", "and")
) | frozenset("&'-.,")


def _numeric(t: Token) -> bool:
    return t.text[0].isdigit()


def _capital(t: Token) -> bool:
    return t.raw[0].isupper() or t.raw[0].isdigit()


def kind(words: Sequence[Token]) -> str:
    """What a phrase of a question is: a number, a name, or other words."""
    if len(words) == 1 and _numeric(words[0]):
        return GROUPED if "," in words[0].text else NUMBER
    if (
        words
        and _capital(words[0])
        and _capital(words[-1])
        and all(_capital(t) or t.text in CONNECTORS for t in words)
    ):
        return NAME
    return TEXT


# Words that turn a phrase around: a text slot learned from "metres" must not take "not
# metres" or "metres minus 5", which the plan it came from would read as metres.
TURNING = frozenset(
    (
        "not",
        "no",
        "nor",
        "never",
        "none",
        "without",
        "except",
        "excluding",
        "but",
        "minus",
        "plus",
        "times",
        "than",
        "less",
        "more",
        "fewer",
        "least",
        "most",
        "before",
        "after",
        "and",
        "or",
        "vs",
        "versus",
    )
)
# A number a slot may hold: plain ASCII decimals ("015", "200.0.1", "١٥" are no arithmetic)
_PLAIN = {
    NUMBER: re.compile(r"(?:0|[1-9][0-9]*)(?:\.[0-9]+)?"),
    GROUPED: re.compile(r"[1-9][0-9]{0,2}(?:,[0-9]{3})+(?:\.[0-9]+)?"),
}


def holds(slot_kind: str, length: int, words: Sequence[Token]) -> bool:
    """Whether a slot learned as `slot_kind` from `length` tokens may hold `words`."""
    if slot_kind == TEXT:
        return len(words) <= length + 2 and all(
            t.text[0].isalpha() and t.text not in TURNING for t in words
        )
    if slot_kind in _PLAIN:
        return len(words) == 1 and _PLAIN[slot_kind].fullmatch(words[0].text) is not None
    return kind(words) == slot_kind and _a_name(words)


def _a_name(words: Sequence[Token]) -> bool:
    """Whether capitalised words a name slot would take name one thing: not a function word
    ("And", "Than", "Height"), nor only edge words ("The Of"), nor two things joined ("Eiffel
    Tower and Big Ben": "and", "or", "vs" and the other turning words never inside a name),
    nor a list ("Eiffel Tower, Big Ben": a comma may part a name, as in "Paris, Texas", but
    a slot cannot tell it from two, so a name with one is left to the planner)."""
    if any(t.text in TURNING or t.text in ("&", ",") for t in words):
        return False
    if words[0].text in FUNCTION_WORDS or words[-1].text in FUNCTION_WORDS:
        return False
    return any(t.text not in EDGE_WORDS and t.text not in CONNECTORS for t in words)


def fingerprint(tools: Tools) -> str:
    """The tool set's identity: names and argument schemas (a changed signature is a new
    tool set, whose templates start empty)."""
    described = [[name, tools[name].schema()] for name in sorted(tools)]
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def scope(tools: Tools) -> str:
    """The call-cache scope that holds the templates for this tool set."""
    return f"plan-template:{fingerprint(tools)}"


# -- a template ---------------------------------------------------------------------------
# In a template's arguments a string with slots is {"$slot": [text or slot number, ...]}
# and every dict of the plan is {"$map": {...}}, so no argument the plan wrote can be taken
# for a slot.


@dataclass(slots=True)
class Template:
    """A plan with slots, and the question shape it answers."""

    shape: list[str | int]  # fixed tokens (case-folded) and slot numbers
    tasks: list[dict[str, Any]]  # {"id", "tool", "args", "kwargs", "deps"}, encoded
    slots: list[tuple[str, int]]  # each slot's kind and the tokens it was learned from
    question: str  # the question it was learned from (for people reading the store)
    number: int = -1  # its place in the store's log; -1 until kept
    hits: int = 0
    misses: int = 0

    def to_json(self) -> str:
        return json.dumps(
            {
                "v": VERSION,
                "shape": self.shape,
                "tasks": self.tasks,
                "slots": [list(k) for k in self.slots],
                "question": self.question,
            }
        )

    @classmethod
    def from_json(cls, text: str, number: int) -> Template | None:
        """The template stored as `text`, or None if it is not one this version reads."""
        try:
            data = json.loads(text)
            if data.get("v") != VERSION:
                return None
            shape = data["shape"]
            if not all(isinstance(s, (str, int)) for s in shape):
                return None
            slots = [(str(k), int(n)) for k, n in data["slots"]]
            numbers = {s for s in shape if isinstance(s, int)}
            if numbers != set(range(len(slots))) or any(isinstance(s, bool) for s in shape):
                return None  # every slot in the shape, and nothing else
            template = cls(shape, list(data["tasks"]), slots, str(data["question"]), number)
            return template if _well_formed(template) else None
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
            return None

    @property
    def fixed(self) -> int:
        """How many tokens of its own the shape has: the more, the more specific."""
        return sum(1 for s in self.shape if isinstance(s, str))

    def fit(self, question: str) -> list[str] | None:
        """The new question's text for each slot, if it has this shape; else None."""
        found = tokens(question)
        if len(found) > MAX_QUESTION_TOKENS:
            return None
        bound: dict[int, tuple[int, int]] = {}  # slot -> (first token, end token)
        if not _fit(self.shape, 0, found, 0, bound, self.slots):
            return None
        if len(bound) != len(self.slots):
            return None
        values = [
            question[found[a].start : found[b - 1].end]
            for a, b in (bound[i] for i in range(len(self.slots)))
        ]
        if any("$" in v for v in values):
            return None  # a slot's text could read as a reference: never fill it in
        return values

    def instantiate(self, values: Sequence[str]) -> list[Task]:
        """The plan with its slots filled with `values` (strings of the new question)."""
        if len(values) != len(self.slots):
            raise PlaitError(f"template needs {len(self.slots)} slot values, got {len(values)}")
        out = []
        for t in self.tasks:
            args = tuple(_fill(a, values) for a in t["args"])
            kwargs = {k: _fill(v, values) for k, v in _unmap(t["kwargs"]).items()}
            out.append(Task(int(t["id"]), str(t["tool"]), args, kwargs, frozenset(t["deps"])))
        return out


def _well_formed(template: Template) -> bool:
    """Whether a template read from a store is one `learn` could have made: a shape it
    could have learned (at most `MAX_SLOTS` slots, never two side by side), tasks numbered
    upwards, each depending only on earlier ones, no `join`, and every slot used (a plan
    that ignores the question's text would answer every question of the shape alike)."""
    shape, tasks = template.shape, template.tasks
    if len(template.slots) > MAX_SLOTS or len(shape) > MAX_QUESTION_TOKENS:
        return False  # matching such a shape could take forever
    if any(isinstance(a, int) and isinstance(b, int) for a, b in itertools.pairwise(shape)):
        return False  # nor are two slots side by side ever learned
    if not tasks or not all(isinstance(t, dict) for t in tasks):
        return False
    ids = [t["id"] for t in tasks]
    if not all(type(i) is int and i > 0 for i in ids) or ids != sorted(set(ids)):
        return False
    for t in tasks:
        deps = t["deps"]
        if not isinstance(deps, list) or not all(type(d) is int and d in ids for d in deps):
            return False
        if any(d >= t["id"] for d in deps) or not isinstance(t["tool"], str):
            return False
        if t["tool"] == "join" or not isinstance(t["args"], list):
            return False
        if not isinstance(t["kwargs"], dict) or not isinstance(t["kwargs"].get("$map"), dict):
            return False
    used = _slots_used(tasks)
    return used is not None and used == set(range(len(template.slots)))


def _slots_used(value: Any) -> set[int] | None:
    """The slot numbers an encoded argument (or plan) uses; None if a slot is not a number."""
    found: set[int] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, dict):
            if "$slot" in v:
                parts = v["$slot"]
                if not isinstance(parts, list):
                    return None
                for part in parts:
                    if type(part) is int:
                        found.add(part)
                    elif not isinstance(part, str):
                        return None
            else:
                stack.extend(v.values())
    return found


def _fit(
    shape: list[str | int],
    i: int,
    found: list[Token],
    j: int,
    bound: dict[int, tuple[int, int]],
    slots: list[tuple[str, int]],
) -> bool:
    """Backtracking match of shape[i:] against found[j:], binding slots to token ranges
    that hold what the slot may hold."""
    if i == len(shape):
        return j == len(found)
    item = shape[i]
    if isinstance(item, str):
        return (
            j < len(found)
            and found[j].text == item
            and _fit(shape, i + 1, found, j + 1, bound, slots)
        )
    if item in bound:  # a slot seen before: the same words again
        a, b = bound[item]
        n = b - a
        if [t.text for t in found[j : j + n]] != [t.text for t in found[a:b]]:
            return False
        return _fit(shape, i + 1, found, j + n, bound, slots)
    if item >= len(slots):
        return False
    slot_kind, length = slots[item]
    for n in range(1, MAX_SLOT_TOKENS + 1):
        if j + n > len(found):
            break
        if not holds(slot_kind, length, found[j : j + n]):
            continue
        bound[item] = (j, j + n)
        if _fit(shape, i + 1, found, j + n, bound, slots):
            return True
        del bound[item]
    return False


def _fill(value: Any, values: Sequence[str]) -> Any:
    if isinstance(value, list):
        return [_fill(v, values) for v in value]
    if isinstance(value, dict):
        if "$slot" in value:
            return "".join(values[p] if isinstance(p, int) else p for p in value["$slot"])
        return {k: _fill(v, values) for k, v in value["$map"].items()}
    return value


def _unmap(value: dict[str, Any]) -> dict[str, Any]:
    return dict(value["$map"])


# -- learning -----------------------------------------------------------------------------


def learn(question: str, tasks: Sequence[Task]) -> Template | None:
    """A template of `tasks` (a first plan, as the parser gave it) for `question`, or None
    when the shape left would be ambiguous (two slots side by side), match too much
    (fewer than `MIN_FIXED_WORDS` words of its own), or the plan writes one of the
    question's numbers more often than the question does (`100 / $2 * 100` for "100
    divided by ..., in percent": one of them is a constant, and no one can tell which).

    A whole argument that is a phrase of the question is a slot, whatever it is; if that
    leaves two slots side by side ("When was the {0} {1}?", from `search("Amber Gate")` and
    `extract_number($1, "built")`), only names and numbers are slots ("built" stays)."""
    asked = tokens(question)
    if not tasks or len(asked) > MAX_QUESTION_TOKENS:
        return None
    for loose in (True, False):
        phrases: list[tuple[str, ...]] = []  # slot number -> its words, case-folded
        encoded = []
        for t in tasks:
            args = [_encode(a, asked, phrases, loose) for a in t.args]
            kwargs = {"$map": {k: _encode(v, asked, phrases, loose) for k, v in t.kwargs.items()}}
            deps = sorted(t.deps)
            encoded.append(
                {"id": t.id, "tool": t.tool, "args": args, "kwargs": kwargs, "deps": deps}
            )
        shape = _shape(asked, phrases)
        if shape is None or any(
            isinstance(a, int) and isinstance(b, int) for a, b in itertools.pairwise(shape)
        ):
            continue
        fixed_words = sum(1 for s in shape if isinstance(s, str) and s[0].isalnum())
        if fixed_words < MIN_FIXED_WORDS or len(phrases) > MAX_SLOTS:
            return None
        slots = [(kind(_occurrence(asked, p)), len(p)) for p in phrases]
        if any(
            k in (NUMBER, GROUPED) and _uses(encoded, n) > shape.count(n)
            for n, (k, _) in enumerate(slots)
        ):
            return None  # the plan has a number more often than the question: a constant too
        return Template(shape, encoded, slots, question)
    return None


def _uses(value: Any, slot: int) -> int:
    """How many times an encoded plan (or argument) uses `slot`."""
    if isinstance(value, list):
        return sum(_uses(v, slot) for v in value)
    if isinstance(value, dict):
        if "$slot" in value:
            return sum(1 for p in value["$slot"] if p == slot and type(p) is int)
        return sum(_uses(v, slot) for v in value.values())
    return 0


def _occurrence(asked: list[Token], phrase: tuple[str, ...]) -> list[Token]:
    """The question's tokens where `phrase` first occurs."""
    n = len(phrase)
    for i in range(len(asked) - n + 1):
        if tuple(t.text for t in asked[i : i + n]) == phrase:
            return asked[i : i + n]
    return []


def _encode(value: Any, asked: list[Token], phrases: list[tuple[str, ...]], loose: bool) -> Any:
    if isinstance(value, str):
        return _slotted(value, asked, phrases, loose)
    if isinstance(value, (list, tuple)):
        return [_encode(v, asked, phrases, loose) for v in value]
    if isinstance(value, dict):
        return {"$map": {k: _encode(v, asked, phrases, loose) for k, v in value.items()}}
    return value


def _slotted(text: str, asked: list[Token], phrases: list[tuple[str, ...]], loose: bool) -> Any:
    """`text`, with the runs of the question's tokens it contains as slots: a whole argument
    (when `loose`), or a run that names something."""
    own = tokens(text)
    parts: list[str | int] = []
    last = 0  # characters of text already in parts
    i = 0
    while i < len(own):
        run = _longest_run(own, i, asked)
        whole = run == len(own)
        words = own[i : i + run]
        if (
            run
            and ((whole and loose) or _names_something(text, words))
            and "$" not in text[words[0].start : words[-1].end]
            and not text[: words[0].start].endswith(("$", "${"))  # a reference's number stays
        ):
            phrase = tuple(t.text for t in words)
            if phrase not in phrases:
                phrases.append(phrase)
            parts += [text[last : words[0].start], phrases.index(phrase)]
            last = words[-1].end
            i += run
        else:
            i += 1
    if not any(isinstance(p, int) for p in parts):
        return text
    parts.append(text[last:])
    return {"$slot": [p for p in parts if p != ""]}


def _longest_run(own: list[Token], i: int, asked: list[Token]) -> int:
    """The most tokens from own[i] on that occur in a row in the question."""
    best = 0
    for j in range(len(asked)):
        n = 0
        while i + n < len(own) and j + n < len(asked) and own[i + n].text == asked[j + n].text:
            n += 1
        best = max(best, n)
    return best


def _names_something(text: str, words: list[Token]) -> bool:
    """A run inside a longer argument is a slot only if it names something: a capital
    letter or a digit ("Eiffel Tower height" varies by "Eiffel Tower", not by "height")."""
    return any(c.isupper() or c.isdigit() for t in words for c in text[t.start : t.end])


def _shape(asked: list[Token], phrases: list[tuple[str, ...]]) -> list[str | int] | None:
    """The question's tokens with every occurrence of each slot's phrase (longest phrases
    first) replaced by the slot; None if some slot's phrase is left with no occurrence."""
    shape: list[str | int] = [t.text for t in asked]
    for slot in sorted(range(len(phrases)), key=lambda s: -len(phrases[s])):
        phrase = list(phrases[slot])
        n, i, seen = len(phrase), 0, False
        out: list[str | int] = []
        while i < len(shape):
            if shape[i : i + n] == phrase:
                out.append(slot)
                i += n
                seen = True
            else:
                out.append(shape[i])
                i += 1
        if not seen:
            return None
        shape = out
    return shape


# -- the cache ----------------------------------------------------------------------------


@dataclass(slots=True)
class CacheStats:
    """What the plan cache did, for a run's or a batch's stats."""

    hits: int = 0  # runs whose first plan came from a template (no planner call)
    misses: int = 0  # of those, runs whose joiner still asked for a new plan
    learned: int = 0
    dropped: int = 0


@dataclass(slots=True)
class Match:
    template: Template
    values: list[str]
    tasks: list[Task]


@dataclass
class TemplateCache:
    """The templates for one tool set: loaded from `store` once, matched in memory, learned
    and missed through to the store. Without a store they live as long as the object (a
    batch's runs share one)."""

    store: CallStore | None
    scope: str
    max_misses: int = MAX_MISSES
    stats: CacheStats = field(default_factory=CacheStats)
    _templates: list[Template] = field(default_factory=list)
    _loaded: bool = False
    _locks: dict[int, asyncio.Lock] = field(default_factory=dict)  # by event loop

    def _lock(self) -> asyncio.Lock:
        """This event loop's lock (a process-wide cache outlives `asyncio.run` calls)."""
        loop = id(asyncio.get_running_loop())
        lock = self._locks.get(loop)
        if lock is None:
            self._locks.clear()
            lock = self._locks[loop] = asyncio.Lock()
        return lock

    @classmethod
    def for_tools(cls, tools: Tools, store: CallStore | None = None, **kw: Any) -> TemplateCache:
        return cls(store, scope(tools), **kw)

    @property
    def templates(self) -> list[Template]:
        """The live templates, newest first."""
        return [t for t in reversed(self._templates) if t.misses < self.max_misses]

    async def load(self) -> None:
        """Read the store's templates (and their misses), once."""
        async with self._lock():
            if self._loaded:
                return
            self._loaded = True
            if self.store is None:
                return
            try:
                self._templates = await asyncio.to_thread(
                    _read_all, self.store, self.scope, self.max_misses
                )
            except PlaitError:
                self._templates = []

    async def match(self, question: str, tools: Tools | None = None) -> Match | None:
        """The most specific live template the question fits (the most tokens of its own;
        of equals, the newest), instantiated; None if none does. A template whose plan no
        longer fits the tools is passed over."""
        await self.load()
        ranked = sorted(self.templates, key=lambda t: (-t.fixed, -t.number))
        for template in ranked:
            values = template.fit(question)
            if values is None:
                continue
            try:  # a template read from a store is data: one that does not fit is passed over
                tasks = template.instantiate(values)
                if tools is not None:
                    for t in tasks:
                        tools.prepare(t)
                if not _reads_back(tasks, tools):
                    continue
            except (PlaitError, KeyError, TypeError, ValueError, IndexError, RecursionError):
                continue
            return Match(template, values, tasks)
        return None

    def hit(self, match: Match) -> None:
        match.template.hits += 1
        self.stats.hits += 1

    async def miss(self, match: Match) -> None:
        """The joiner asked for a new plan after this template's plan: count it against it."""
        template = match.template
        template.misses += 1
        self.stats.misses += 1
        if template.misses >= self.max_misses:
            self.stats.dropped += 1
        if self.store is not None and template.number >= 0:
            key = f"m:{template.number}:{template.misses}"
            await _quietly(self.store.put_calls, self.scope, [(key, "1")])

    async def learn(self, question: str, tasks: Sequence[Task]) -> Template | None:
        """Keep a template of a first plan the joiner finished on; None if it makes none or
        a live template already answers this question."""
        await self.load()
        if any(t.fit(question) is not None for t in self.templates):
            return None
        template = learn(question, tasks)
        if template is None:
            return None
        async with self._lock():
            if any(t.fit(question) is not None for t in self.templates):
                return None  # learned meanwhile by a run of the same shape
            template.number = len(self._templates)
            if self.store is not None:
                number = await _quietly(
                    _append, self.store, self.scope, template, len(self._templates)
                )
                if number is None:
                    return None
                template.number = number
            self._templates.append(template)
            self.stats.learned += 1
        return template


async def _quietly(fn: Any, *args: Any) -> Any:
    """A store call off the event loop; a store that fails makes the cache forget, nothing
    more."""
    try:
        return await asyncio.to_thread(fn, *args)
    except PlaitError:
        return None


def _read_all(store: CallStore, scope: str, max_misses: int) -> list[Template]:
    """Every template in the scope's log, with its recorded misses."""
    out: list[Template] = []
    start = 0
    while True:
        keys = [f"t:{n}" for n in range(start, start + LOAD_CHUNK)]
        found = store.get_calls(scope, keys)
        for n in range(start, start + LOAD_CHUNK):
            text = found.get(f"t:{n}")
            if text is not None:
                template = Template.from_json(text, n)
                if template is not None:
                    out.append(template)
        if len(found) < LOAD_CHUNK:
            break
        start += LOAD_CHUNK
    misses = [f"m:{t.number}:{k}" for t in out for k in range(1, max_misses + 1)]
    recorded = store.get_calls(scope, misses) if misses else {}
    for t in out:
        t.misses = sum(1 for k in range(1, max_misses + 1) if f"m:{t.number}:{k}" in recorded)
    return out


def _append(store: CallStore, scope: str, template: Template, start: int) -> int:
    """Put `template` at the first free place of the log from `start`; its place."""
    text = template.to_json()
    n = start
    for _ in range(64):
        store.put_calls(scope, [(f"t:{n}", text)])
        if store.get_calls(scope, [f"t:{n}"]).get(f"t:{n}") == text:
            return n
        n += 1  # another writer took it first
    raise PlaitError(f"plan cache: no free place for a template in {scope}")


def _reads_back(tasks: Sequence[Task], tools: Tools | None) -> bool:
    """Whether the plan text `render` makes of `tasks` parses back to them: the run is given
    that text, so a plan it would read otherwise (a reference to no task, a value with no
    literal) is no plan to give it."""
    from .parse import parse_plan  # the planner's reader, the one the run will use

    try:
        read = parse_plan(render(tasks), tools=tools)
    except (PlaitError, ValueError, SyntaxError, RecursionError):
        return False

    def same(t: Task) -> tuple[Any, ...]:
        return (t.id, t.tool, t.args, t.kwargs, t.deps)

    return [same(t) for t in read] == [same(t) for t in tasks]


def render(tasks: Sequence[Task]) -> str:
    """Tasks as plan text (Python literals, read back by the parser as written), ending with
    join(): what the planner would have written, for the run's conversation and log."""
    lines = []
    for t in tasks:
        parts = [repr(a) for a in t.args] + [f"{k}={v!r}" for k, v in t.kwargs.items()]
        lines.append(f"{t.id}. {t.tool}({', '.join(parts)})")
    lines.append(f"{max((t.id for t in tasks), default=0) + 1}. join()")
    return "\n".join(lines) + "\n<END_OF_PLAN>"
