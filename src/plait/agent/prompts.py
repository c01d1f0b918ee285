"""Planner and joiner prompts (LLMCompiler's, trimmed), and reading the joiner's reply.

A run is one conversation: the planner's instructions and the question, the plan, the
results and the joiner's turn, then any replan, each call extending the messages of the one
before. So every call's prompt starts with the previous call's whole prompt and reply, and a
server that keeps the run's KV cache (llama.cpp's prompt cache, program affinity as in
Continuum) evaluates only what is new.

Prompts are built from the registered tools, so the planner sees each tool's signature,
description and JSON Schema. A tools module may set `EXAMPLES` (a string of plans written
for its own tools, each starting with a `Question:` line) to give the planner few-shot
examples that fit; otherwise a generic one is used. When it holds several, the ones most
like the question are shown (`select_examples`): a small model copies the nearest example's
shape, so the nearest must be the right one. An example may end with the joiner's
`Action: Finish(...)` line, so the model also sees what an answer looks like.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..core.graph import DONE
from ..core.task import Task, result_text
from ..core.tools import Tools
from ..errors import PlaitError
from .parse import END_OF_PLAN
from .schema import FUNCTION_WORDS, MARK

GENERIC_EXAMPLE = """\
Question: Which river is longer, the Nile or the Amazon, and by how much?
Thought: Both lengths can be looked up at the same time; the difference needs both.
1. search("Nile length")
2. search("Amazon length")
3. calculate("$1 - $2")
Thought: I can answer now.
4. join()
<END_OF_PLAN>
(This example uses tools that may not exist here: use only the tools listed above.)"""

PLANNER_SYSTEM = """\
Given a user question, write a plan of tool calls that answers it, with as many calls as \
possible able to run in parallel. Each task is one of these {count} actions:
{tools}
{join_index}. join(): collect the results and answer, or decide to plan again. \
It is always the last task.

Rules:
- One task per line: `ID. tool(arguments)`. IDs are integers, strictly increasing{start}.
- Arguments are Python literals (strings, numbers, lists, dicts), positional or keyword, \
and must fit the action's types.
- To use an earlier task's result, write $ID (for example $1) as an argument or inside a \
string. A task runs as soon as the tasks it references are done, so do not chain calls \
that do not depend on each other.
- You may write a line `Thought: ...` before a task to reason briefly.
- End with `join()` on its own line, then {end}.
- Use only the actions above; never invent one."""

# For a model that plans by choosing among candidates (choose.py): the grammar is enforced
# by the candidates, so the prompt need only say what each tool does and show examples.
COMPACT_SYSTEM = """\
Answer the question with a plan: one tool call per line, numbered, then join(). A call may \
use an earlier call's result as $ID. Tools:
{tools}
{join_index}. join(): the plan is complete.
After the plan has run, answer with Action: Finish(the answer), or Action: Replan(what is \
missing)."""

EXAMPLES_HEAD = "\n\nExamples:\n"

# How the joiner replies: in the planner's prompt (JOINER_RULES) and the joiner's own
# (JOINER_SYSTEM), word for word.
REPLY_FORMAT = """Thought: <your reasoning about the results>
Action: Finish(<the final answer>)
or, only if the results cannot answer the question yet:
Thought: <your reasoning>
Action: Replan(<what is missing and should be done next>)
For example:
Thought: The Nile is about 6650 km long and the Amazon about 6400 km.
Action: Finish(The Nile is longer, by about 250 km.)"""
JOINER_RULES = (
    "\n\nAfter the plan has run you will be shown its results and asked to decide. Then "
    "reply in exactly two lines:\n" + REPLY_FORMAT
)
# The joiner's own instructions, for a join whose plan no planner call of this run wrote (a
# plan from the plan cache, a speculative join): the planner's prefix would be evaluated for
# nothing there, so the joiner is shown only the question, the plan and its results.
JOINER_SYSTEM = (
    "A plan of tool calls was run to answer a user's question. You are shown the question, "
    "each task of the plan with its result, and decide. Reply in exactly two lines:\n"
    + REPLY_FORMAT
)

JOIN_TURN = (
    "{results}\n\nNow decide, for the question: {question}\n"
    "Reply with a Thought line, then an Action line: Finish with the answer in parentheses, "
    "or Replan with what is missing."
)
ASK_AGAIN = (
    "That reply holds no decision. Reply again: one line starting with Action:, then Finish "
    "with the answer itself in parentheses, or Replan with what is missing in parentheses."
)
# The joiner's decision where the backend follows a JSON Schema (an object: OpenAI wants one).
JOIN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "action": {"enum": ["Finish", "Replan"]},
        "text": {"type": "string", "minLength": 1, "maxLength": 160},
    },
    "required": ["action", "text"],
    "additionalProperties": False,
}


def tool_lines(tools: Tools) -> str:
    lines = []
    for i, t in enumerate(tools.values(), 1):
        props = {
            k: {key: v for key, v in p.items() if key != MARK}
            for k, p in t.schema().get("properties", {}).items()
        }
        schema = json.dumps(props, separators=(",", ":"))
        desc = f": {t.description}" if t.description else ""
        lines.append(f"{i}. {t.signature()}{desc}\n   arguments: {schema}")
    return "\n".join(lines)


def planner_messages(
    question: str,
    tools: Tools,
    *,
    examples: str | None = None,
    next_id: int = 1,
    json_form: bool = False,
    compact: bool = False,
) -> list[dict[str, str]]:
    """The opening of a run's conversation: the planner's instructions and the question.
    `compact`: the short form, for a model whose plan is chosen among candidates."""
    if compact:
        lines = [f"{i}. {t.signature()}: {t.description}" for i, t in enumerate(tools.values(), 1)]
        system = COMPACT_SYSTEM.format(tools="\n".join(lines), join_index=len(tools) + 1)
        return [
            {"role": "system", "content": system + EXAMPLES_HEAD + (examples or GENERIC_EXAMPLE)},
            {"role": "user", "content": f"Question: {question}"},
        ]
    end = "nothing" if json_form else END_OF_PLAN
    system = PLANNER_SYSTEM.format(
        count=len(tools) + 1,
        tools=tool_lines(tools),
        join_index=len(tools) + 1,
        start="" if next_id == 1 else f", starting at {next_id}",
        end=end,
    )
    if json_form:
        system += (
            '\n\nWrite the plan as JSON instead: {"tasks": [{"id": 1, "tool": "search", '
            '"args": {"query": "..."}}, ...]}, references as strings like "$1", and a last '
            'task {"id": N, "tool": "join", "args": {}}.'
        )
    # The joiner's rules live here too, in the prefix every call of the run shares; the
    # examples come last, as the part that changes with the question.
    system += JOINER_RULES + EXAMPLES_HEAD + (examples or GENERIC_EXAMPLE)
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": f"Question: {question}"},
    ]


def replan_turn(reason: str, results: str, next_id: int) -> dict[str, str]:
    """The user turn that asks for more tasks, after results (if any) and why."""
    seen = f"Results of the tasks run so far:\n{results}\n\n" if results else ""
    return {
        "role": "user",
        "content": f"{seen}A new plan is needed: {reason}\n"
        f"Write only the new tasks, numbered from {next_id}. They may use earlier results as "
        "$ID.",
    }


def join_turn(question: str, results: str) -> dict[str, str]:
    """The user turn that asks the joiner to decide, after the new results.

    Short on purpose: the rules are in the system prompt, so with a warm KV cache the joiner
    evaluates little more than the results.
    """
    seen = f"Results of the tasks:\n{results}" if results else "No task was run."
    return {"role": "user", "content": JOIN_TURN.format(results=seen, question=question)}


def joiner_messages(
    question: str, tasks: Sequence[tuple[Task, str, object, str | None]]
) -> list[dict[str, str]]:
    """A join of its own (JOINER_SYSTEM): the question, the plan's tasks as canonical calls
    (each argument named, see `canonical`), each with its result. Built from the tasks and
    results alone, never from a planner's text: two plans with the same tasks and results
    get the same prompt."""
    results = observations(tasks)
    seen = f"Question: {question}\n\nThe plan's tasks and their results:\n{results}"
    return [
        {"role": "system", "content": JOINER_SYSTEM},
        {"role": "user", "content": JOIN_TURN.format(results=seen, question=question)},
    ]


def canonical(task: Task, tools: Tools) -> Task:
    """`task` with every argument named (as the tool binds it), so `f("x")` and `f(q="x")`
    read alike; the task as written if it does not bind."""
    try:
        return tools.prepare(task)
    except PlaitError:
        return task


def ask_again_turn() -> dict[str, str]:
    """The user turn after a joiner reply that held no decision."""
    return {"role": "user", "content": ASK_AGAIN}


_EX_WORD = re.compile(r"[a-z0-9']+")
_COMPARATIVE = re.compile(
    r"^(?:taller|higher|longer|shorter|larger|smaller|bigger|farther|"
    r"further|older|newer|more|less)$"
)

_ADJECTIVE = frozenset(["tall", "high", "long", "far", "big", "large", "old"])


def _form(text: str) -> tuple[set[str], set[str]]:
    """A question's form (its function words, comparatives as one, with their word pairs)
    and its other words: examples are matched on the form first, the topic second."""
    ws = _EX_WORD.findall(text.lower())
    form = [
        "<er>" if _COMPARATIVE.match(w) else "<adj>" if w in _ADJECTIVE else w
        for w in ws
        if w in FUNCTION_WORDS
    ]
    pairs = {f"{a} {b}" for a, b in itertools.pairwise(form)}
    return set(form) | pairs, {w for w in ws if w not in FUNCTION_WORDS}


def split_examples(examples: str) -> list[str]:
    """The examples of an EXAMPLES string, each from its `Question:` line."""
    parts = re.split(r"(?m)^(?=Question:)", examples.strip())
    return [p.strip() for p in parts if p.strip()]


def select_examples(examples: str, question: str, k: int = 2) -> str:
    """The `k` examples whose questions are most like `question` (in form, then in topic),
    nearest last (closest to the question in the prompt); all of them if k or fewer."""
    found = split_examples(examples)
    if len(found) <= k:
        return examples
    form, topic = _form(question)

    def score(i: int) -> tuple[int, int, int]:
        f, t = _form(found[i].splitlines()[0])
        return (len(form & f), len(topic & t), -i)

    best = sorted(range(len(found)), key=score, reverse=True)[:k]
    return "\n\n".join(found[i] for i in reversed(best))


def render_call(task: Task) -> str:
    parts = [repr(a) for a in task.args] + [f"{k}={v!r}" for k, v in task.kwargs.items()]
    return f"{task.id}. {task.tool}({', '.join(parts)})"


def observations(tasks: Sequence[tuple[Task, str, object, str | None]], limit: int = 2000) -> str:
    """Each task call followed by what came of it, as the joiner and replanner read it."""
    lines = []
    for task, status, result, error in tasks:
        lines.append(render_call(task))
        if status == DONE:
            text = result_text(result)
            if len(text) > limit:
                text = text[:limit] + " …"
            lines.append(f"Observation: {text}")
        else:
            lines.append(f"Observation: {status}: {error}")
    return "\n".join(lines)


@dataclass(slots=True)
class Decision:
    action: str  # "finish" or "replan"
    text: str
    thought: str = ""


_ACTION = re.compile(r"Action\s*:\s*(Finish|Replan)\s*\(", re.IGNORECASE)
_CUT_JSON = re.compile(r'\s*\{\s*"action"\s*:\s*"(\w+)"\s*,\s*"text"\s*:\s*"((?:[^"\\]|\\.)*)')
_THOUGHT = re.compile(r"Thought\s*:\s*(.*)", re.IGNORECASE)
# What an echoed template looks like in place of a decision: `...`, `…`, `<the final answer>`,
# `(answer)`-style words from our own instructions, or nothing at all.
_PLACEHOLDER = re.compile(
    r"^(?:[.\s…]*|<[^<>]*>|\[[^\[\]]*\]|answer|the (?:final )?answer|reason|what is missing.*)$",
    re.IGNORECASE,
)


def _body(reply: str, start: int) -> str | None:
    """The text from `start` to its balanced closing parenthesis; None if it never closes
    and the reply goes on to another decision (an echo of `Finish(...) or Replan(...)`)."""
    depth = 1
    for i in range(start, len(reply)):
        ch = reply[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return reply[start:i]
    rest = reply[start:]
    if _ACTION.search(rest):
        return None
    return rest.rstrip().rstrip(".").rstrip()  # cut at max tokens: keep what came


def is_placeholder(text: str) -> bool:
    """Whether a decision's text is a template's placeholder rather than content."""
    return bool(_PLACEHOLDER.match(text.strip()))


def parse_decision(reply: str) -> Decision | None:
    """Read `Action: Finish(...)` / `Action: Replan(...)`, or None if the reply has no decision.

    A decision whose text is a placeholder (`...`, `<the final answer>`) is an echo of the
    instructions, not a decision; so is a reply naming both actions as alternatives. A reply
    with no decision is never taken as the answer: the caller asks again.
    """
    if reply.strip().startswith("{"):  # a reply under JOIN_SCHEMA
        try:
            loaded = json.loads(reply)
        except ValueError:  # cut off at max tokens: keep what came, as for the text form
            cut = _CUT_JSON.match(reply)
            loaded = {"action": cut.group(1), "text": cut.group(2)} if cut else None
        if isinstance(loaded, dict):
            action, body = str(loaded.get("action", "")), str(loaded.get("text", "")).strip()
            if action.lower() not in ("finish", "replan") or is_placeholder(body):
                return None
            return Decision(action.lower(), body)
    thought_m = _THOUGHT.search(reply)
    thought = thought_m.group(1).strip() if thought_m else ""
    found: list[Decision] = []
    for m in _ACTION.finditer(reply):
        inside = _body(reply, m.end())
        if inside is None:
            continue
        between = reply[m.end() + len(inside) : m.end() + len(inside) + 12]
        if re.match(r"\)?\s*or\b", between, re.IGNORECASE):
            return None  # `Finish(x) or Replan(y)`: the template, echoed
        body = inside.strip()
        if is_placeholder(body):
            continue
        found.append(Decision(m.group(1).lower(), body, thought))
    return found[-1] if found else None
