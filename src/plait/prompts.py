"""Planner and joiner prompts (LLMCompiler's, trimmed), and reading the joiner's reply.

A run is one conversation: the planner's instructions and the question, the plan, the
results and the joiner's turn, then any replan, each call extending the messages of the one
before. So every call's prompt starts with the previous call's whole prompt and reply, and a
server that keeps the run's KV cache (llama.cpp's prompt cache, program affinity as in
Continuum) evaluates only what is new.

Prompts are built from the registered tools, so the planner sees each tool's signature,
description and JSON Schema. A tools module may set `EXAMPLES` (a string of plans written
for its own tools) to give the planner few-shot examples that fit; otherwise a generic one
is used.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .plan import END_OF_PLAN, Task, result_text
from .tools import Tools

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
- Use only the actions above; never invent one.

Example:
{examples}"""

JOINER_RULES = """

After the plan has run you will be shown its results and asked to decide. Then reply in \
exactly two lines:
Thought: <your reasoning about the results>
Action: Finish(<the final answer>)
or, only if the results cannot answer the question yet:
Thought: <your reasoning>
Action: Replan(<what is missing and should be done next>)
For example:
Thought: The Nile is about 6650 km long and the Amazon about 6400 km.
Action: Finish(The Nile is longer, by about 250 km.)"""

JOIN_TURN = (
    "{results}\n\nNow decide, for the question: {question}\n"
    "Reply with Thought: ... and then Action: Finish(...) or Action: Replan(...)."
)


def tool_lines(tools: Tools) -> str:
    lines = []
    for i, t in enumerate(tools.values(), 1):
        schema = json.dumps(t.schema().get("properties", {}), separators=(",", ":"))
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
) -> list[dict[str, str]]:
    """The opening of a run's conversation: the planner's instructions and the question."""
    end = "nothing" if json_form else END_OF_PLAN
    system = PLANNER_SYSTEM.format(
        count=len(tools) + 1,
        tools=tool_lines(tools),
        join_index=len(tools) + 1,
        start="" if next_id == 1 else f", starting at {next_id}",
        end=end,
        examples=examples or GENERIC_EXAMPLE,
    )
    if json_form:
        system += (
            '\n\nWrite the plan as JSON instead: {"tasks": [{"id": 1, "tool": "search", '
            '"args": {"query": "..."}}, ...]}, references as strings like "$1", and a last '
            'task {"id": N, "tool": "join", "args": {}}.'
        )
    # The joiner's rules live here too, in the prefix every call of the run shares.
    system += JOINER_RULES
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


def render_call(task: Task) -> str:
    parts = [repr(a) for a in task.args] + [f"{k}={v!r}" for k, v in task.kwargs.items()]
    return f"{task.id}. {task.tool}({', '.join(parts)})"


def observations(tasks: Sequence[tuple[Task, str, object, str | None]], limit: int = 2000) -> str:
    """Each task call followed by what came of it, as the joiner and replanner read it."""
    lines = []
    for task, status, result, error in tasks:
        lines.append(render_call(task))
        if status == "done":
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
_THOUGHT = re.compile(r"Thought\s*:\s*(.*)", re.IGNORECASE)


def parse_decision(reply: str) -> Decision:
    """Read `Action: Finish(...)` / `Action: Replan(...)`; a reply with neither is the answer."""
    thought_m = _THOUGHT.search(reply)
    thought = thought_m.group(1).strip() if thought_m else ""
    matches = list(_ACTION.finditer(reply))
    if not matches:
        text = reply.strip()
        if text.lower().startswith("thought:"):
            text = text[len("thought:") :].strip()
        return Decision("finish", text, thought)
    m = matches[-1]
    body = reply[m.end() :]
    close = body.rfind(")")
    text = (body[:close] if close >= 0 else body).strip()
    return Decision(m.group(1).lower(), text, thought)
