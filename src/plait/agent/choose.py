"""Choosing instead of generating: a plan's and a decision's discrete choices scored by the model.

A tiny model decodes the few discrete choices of a plan badly when it takes the greedy token
(which tool next, where an entity's phrase ends, which operator, Finish or Replan), yet it
ranks a handful of written-out candidates well. Where the model can score text (`Scorer`,
llama.cpp in-process), the planner and the joiner are run as a sequence of such choices:

- **Plan**, task by task: first the call's head (`search(`, `calculate(`, … or `join()`),
  then its arguments, each candidate a complete argument list, ranked by log-probability
  after the plan so far. Candidates come from the tools' parameter marks (schema.py):
  a `Span` parameter takes a phrase of the question overlapping none of the earlier
  tasks' phrases; a `Formula` takes `$a OP $b` over earlier numeric results, `a` coming
  from a phrase the question names before `b`'s (so `$3 - $4` reads as the question
  does); any other required parameter takes a reference `$N` to an earlier result of its
  type (a str parameter a str result, a number parameter a number). Optional parameters
  keep their defaults; no call is repeated, no call takes one result twice, a result
  feeds one later task, and `join()` is offered only once every name of the question has
  been looked up. If no tool can start a plan, the agent plans freely.
- **Decision**: `Action: Replan(reason)` when the outputs hold no answer; otherwise
  `Action: Finish(answer)`, or, when a task failed, Replan if the model prefers it to every
  answer. An answer is a number among the plan's outputs (the results no later task took;
  alone or with a unit the results use after numbers) or a phrase of an output; a Replan
  names a failed task when there is one. A phrase the question already says is no answer
  (the tiny model loves to copy the question's title back), unless the question offers a
  choice (`A or B`): then the answer is one of its options, as the latest result naming
  one names it. A tiny model also prefers short, common strings (a year) whatever the
  context, so each answer's score is calibrated (`CALIBRATION`): its log-probability after
  the run minus a part of its log-probability after a bare prompt that shows no results.

The choices are streamed as text, so the rest of the agent (parser, dispatch while planning,
events, the run log, resume) sees an ordinary reply. Nothing here answers a question or knows
a tool: the model makes every choice, among candidates built from the question, the tools'
signatures and the results.
"""

from __future__ import annotations

import itertools
import json
import re
import typing
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.events import Usage
from ..core.tools import Tool, Tools
from ..llm.base import Delta, Request, Scorer
from .schema import (
    EDGE_WORDS,
    FUNCTION_WORDS,
    mark,
    offers_choice,
    phrase_spans,
    phrases,
    question_spans,
    words,
)

OPERATORS = ("-", "+", "/", "*")
MAX_CANDIDATES = 96  # per choice; beyond this the plan's own order decides which are kept
MAX_ANSWER_WORDS = 4
CALIBRATION = 0.5  # weight of the context-free log-probability subtracted from a decision's
NEUTRAL = [{"role": "user", "content": "Reply with an action."}]
NEUTRAL_SESSION = "plait:neutral"  # the calibration prior's requests: no run's choice


@dataclass(slots=True)
class Param:
    name: str
    kind: str  # "span", "formula" or "ref"
    type: str  # "string", "number" or "any": what a reference must point at


@dataclass(slots=True)
class Shape:
    """What the candidate planner needs of a tool: its required parameters and result type."""

    name: str
    params: list[Param]
    returns: str


def _json_type(prop: dict[str, Any]) -> str:
    t = prop.get("type")
    if t in ("number", "integer"):
        return "number"
    if t == "string":
        return "string"
    return "any"


def _returns(tool: Tool) -> str:
    try:
        hint = typing.get_type_hints(tool.fn).get("return")
    except Exception:  # unresolvable hints: treat the result as anything
        return "any"
    if hint in (int, float):
        return "number"
    if hint is str:
        return "string"
    return "any"


def shapes(tools: Tools) -> dict[str, Shape]:
    """The tools the candidate planner can fill, by name (possibly none)."""
    out: dict[str, Shape] = {}
    for tool in tools.values():
        schema = tool.schema()
        props: dict[str, Any] = schema.get("properties", {})
        params = []
        for name in schema.get("required", []):
            prop = props.get(name, {})
            kind = {"question-span": "span", "formula": "formula"}.get(mark(prop) or "", "ref")
            params.append(Param(name, kind, _json_type(prop)))
        out[tool.name] = Shape(tool.name, params, _returns(tool))
    return out


def _fits(want: str, have: str) -> bool:
    return want == "any" or have == "any" or want == have


def fmt_number(x: float) -> str:
    """237.0 -> "237"; 8.903225 -> "8.9"; 6.800000000000001 -> "6.8"."""
    if isinstance(x, bool):
        return str(x)
    if abs(x - round(x)) < 1e-9:
        return str(round(x))
    return f"{round(x, 2):.2f}".rstrip("0").rstrip(".")


@dataclass(slots=True)
class Earlier:
    """A task the plan may build on: its id, result type, call text, and the phrases it took."""

    id: int
    tool: str
    returns: str
    call: str
    spans: tuple[tuple[int, int], ...] = ()  # the question's words its phrases took
    refs: tuple[int, ...] = ()


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def render(tool: str, args: Sequence[object]) -> str:
    """A call as the candidate planner writes it: `search("Nile")`, `extract_number($1)`."""
    parts = [
        a
        if isinstance(a, str) and re.fullmatch(r"\$\{?\d+\}?", a)
        else _literal(a)
        if isinstance(a, str)
        else repr(a)
        for a in args
    ]
    return f"{tool}({', '.join(parts)})"


def locate(question: str, args: Sequence[object]) -> tuple[tuple[int, int], ...]:
    """The question's words that a call's string arguments repeat (for a replan's tasks)."""
    low = [w.lower() for w in words(question)]
    out = []
    for a in args:
        if not isinstance(a, str):
            continue
        target = [w.lower() for w in words(a)]
        for i in range(len(low) - len(target) + 1):
            if target and low[i : i + len(target)] == target:
                out.append((i, i + len(target)))
                break
    return tuple(out)


class PlanChooser:
    """Write one plan as a sequence of scored choices (see the module docstring)."""

    def __init__(
        self,
        llm: Scorer,
        tools: Tools,
        question: str,
        next_id: int,
        earlier: Sequence[Earlier] = (),
        max_tasks: int = 8,
    ) -> None:
        self.llm = llm
        self.shapes = shapes(tools)
        self.question = question
        self.next_id = next_id
        self.earlier = list(earlier)
        self.max_tasks = max_tasks
        self.spans = question_spans(question)

    def arguments(self, shape: Shape) -> dict[str, tuple[tuple[int, int], ...]]:
        """Every argument list the tool may take now, as the text after `tool(` (with the
        question's words its phrases take)."""
        taken = [span for e in self.earlier for span in e.spans]
        # A result feeds one later task: a small model otherwise loops over the same inputs.
        used = {r for e in self.earlier for r in e.refs}
        free = [e for e in self.earlier if e.id not in used]
        Option = tuple[str, tuple[int, ...], tuple[tuple[int, int], ...]]
        per_param: list[list[Option]] = []
        for p in shape.params:
            options: list[Option] = []
            if p.kind == "span":
                for i, j, phrase in phrase_spans(self.question, taken=taken, maximal=True):
                    options.append((_literal(phrase), (), ((i, j),)))
            elif p.kind == "formula":
                nums = [e.id for e in free if _fits("number", e.returns)]
                origin = self._origins()
                for a, b in itertools.permutations(nums, 2):
                    if origin.get(a, -1) > origin.get(b, 1 << 30):
                        continue  # operands in the order the question names them
                    for op in OPERATORS:
                        options.append((_literal(f"${a} {op} ${b}"), (a, b), ()))
            else:
                for e in free:
                    if _fits(p.type, e.returns):
                        options.append((f"${e.id}", (e.id,), ()))
            if not options:
                return {}
            per_param.append(options)
        calls = {e.call for e in self.earlier}
        out: dict[str, tuple[tuple[int, int], ...]] = {}
        for combo in itertools.product(*per_param):
            refs = [r for _, rs, _ in combo for r in rs]
            if len(refs) != len(set(refs)):
                continue  # one result taken twice
            text = ", ".join(t for t, _, _ in combo) + ")"
            if f"{shape.name}({text}" in calls:
                continue
            out[text] = tuple(span for _, _, spans in combo for span in spans)
            if len(out) >= MAX_CANDIDATES:
                break
        return out

    def _origins(self) -> dict[int, int]:
        """For each earlier task, the first question word its inputs' phrases took."""
        by_id = {e.id: e for e in self.earlier}
        out: dict[int, int] = {}
        for e in self.earlier:  # in id order: a task's inputs come first
            starts = [i for i, _ in e.spans] + [out[r] for r in e.refs if r in out]
            if starts:
                out[e.id] = min(starts)
        return {i: o for i, o in out.items() if i in by_id}

    async def _choose(self, request: Request, prefix: str, options: list[str], usage: Usage) -> str:
        if len(options) == 1:
            return options[0]
        scores, used = await self.llm.score(request, prefix, options)
        usage.prompt_tokens = used.prompt_tokens
        usage.completion_tokens += used.completion_tokens
        return options[max(range(len(options)), key=lambda i: scores[i])]

    async def stream(self, request: Request) -> AsyncIterator[Delta]:
        text = ""
        usage = Usage()
        for n in range(self.next_id, self.next_id + self.max_tasks + 1):
            prefix = f"{text}{n}. "
            heads: dict[str, dict[str, tuple[tuple[int, int], ...]]] = {}
            if n < self.next_id + self.max_tasks:
                for shape in self.shapes.values():
                    offered = self.arguments(shape)
                    if offered:
                        heads[f"{shape.name}("] = offered
            # A plan looks up every name the question gives before it may end.
            unnamed = any(any(p.kind == "span" for p in self.shapes[h[:-1]].params) for h in heads)
            ends = [] if unnamed else ["join()\n"]
            head = await self._choose(request, prefix, [*heads, *ends], usage)
            if head == "join()\n":
                line = f"{n}. join()\n"
                yield Delta(line, Usage(usage.prompt_tokens, usage.completion_tokens))
                return
            args = await self._choose(
                request, prefix + head, [a + "\n" for a in heads[head]], usage
            )
            line = f"{n}. {head}{args}"
            text += line
            tool = head[:-1]
            self.earlier.append(
                Earlier(
                    n,
                    tool,
                    self.shapes[tool].returns,
                    f"{head}{args.rstrip()}",
                    heads[head][args[:-1]],
                    tuple(int(r) for r in re.findall(r"\$(\d+)", args)),
                )
            )
            yield Delta(line, Usage(usage.prompt_tokens, usage.completion_tokens))


def _units(texts: Sequence[str]) -> list[str]:
    """Words that follow numbers in the results ("metres", "million"), most frequent first."""
    counts: dict[str, int] = {}
    for text in texts:
        for m in re.finditer(r"\d(?:[\d,]*\d)?(?:\.\d+)?\s+([A-Za-z]+)", text):
            w = m.group(1)
            if w.lower() not in FUNCTION_WORDS | EDGE_WORDS and len(w) > 1:
                counts[w] = counts.get(w, 0) + 1
    return sorted(counts, key=lambda w: -counts[w])[:3]


def answers(results: Sequence[object], context: Sequence[str] = ()) -> list[str]:
    """What the joiner may answer: the numbers among `results` (alone or with a unit the
    results or `context` texts use after numbers) and phrases of the text results, each once."""
    numbers = [r for r in results if isinstance(r, (int, float)) and not isinstance(r, bool)]
    texts = [r for r in results if isinstance(r, str)]
    out: list[str] = []
    units = _units([*texts, *context])
    for x in reversed(numbers):  # the last computed first: ties go to the later result
        n = fmt_number(float(x))
        out += [n, *(f"{n} {u}" for u in units)]
    for t in texts:
        out += phrases(t, max_words=MAX_ANSWER_WORDS)
    return list(dict.fromkeys(out))[:MAX_CANDIDATES]


class DecisionChooser:
    """The joiner's `Action: Finish(answer)` or `Action: Replan(reason)`, chosen by score."""

    def __init__(
        self,
        llm: Scorer,
        results: Sequence[object],
        failures: Sequence[str],
        context: Sequence[str] = (),
        *,
        question: str = "",
        calibration: float = CALIBRATION,
    ) -> None:
        self.llm = llm
        self.results = results  # the plan's outputs: what the answer is taken from
        self.failures = failures
        self.context = context  # every text result: where units are read
        self.question = question
        self.calibration = calibration

    def options(self) -> tuple[list[str], str]:
        """The answers Finish may give, and the reason Replan would give."""
        found = answers(self.results, self.context)
        asked = question_spans(self.question)
        asked_words = {w.lower() for p in asked for w in words(p)}
        if offers_choice(self.question):
            # A choice: the answer is one of the options, as the latest result naming one
            # names it.
            named = [a for a in found if a in asked]
            for text in reversed(self.context):
                named = named or [a for a in answers([text]) if a in asked]
            found = named or found
        else:
            found = [a for a in found if not asked_words & {w.lower() for w in words(a)}]
        found = [a for a in found if "(" not in a and ")" not in a]
        reason = self.failures[0] if self.failures else "the results do not answer the question"
        return found, reason.replace("(", "[").replace(")", "]")

    async def stream(self, request: Request) -> AsyncIterator[Delta]:
        found, reason = self.options()
        usage = Usage()
        action = "Replan(" if not found else "Finish("
        if found and self.failures:  # a task failed: the model decides whether to go on
            options = [f"Finish({a})" for a in found] + [f"Replan({reason})"]
            scores, usage = await self.llm.score(request, "Action: ", options)
            if max(range(len(options)), key=lambda i: scores[i]) == len(options) - 1:
                action = "Replan("
        if action == "Replan(":
            yield Delta(f"Action: Replan({reason})", usage)
            return
        options = [f"{a})" for a in found]
        if len(options) == 1:
            yield Delta(f"Action: Finish({options[0]}", usage)
            return
        scores, more = await self.llm.score(request, "Action: Finish(", options)
        usage = usage + more
        if self.calibration:
            neutral = Request(NEUTRAL, session=NEUTRAL_SESSION)
            prior, _ = await self.llm.score(neutral, "Action: Finish(", options)
            scores = [s - self.calibration * p for s, p in zip(scores, prior, strict=True)]
        choice = options[max(range(len(options)), key=lambda i: scores[i])]
        yield Delta(f"Action: Finish({choice}", usage)
