"""Offline example tools: a search over a small fact corpus, and exact arithmetic.

Nothing here is canned: `search` ranks the facts in facts.jsonl against the query, and
`extract_number`, `calculate` and `which_larger` compute from whatever text comes back.

The annotations say where an argument comes from, for models that plan by choosing among
candidates (plait.agent.schema): `search` takes a phrase of the question (`Span`), so a small
model looks up what the question names; `calculate` takes arithmetic over earlier results
(`Formula`). To any other model they are plain `str` parameters.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
from pathlib import Path

import plait
from plait.agent.schema import Formula, Span

FACTS = [
    json.loads(line)
    for line in (Path(__file__).with_name("facts.jsonl")).read_text().splitlines()
    if line
]
_WORD = re.compile(r"[a-z0-9]+")
_STOP = {
    "the",
    "of",
    "a",
    "an",
    "in",
    "is",
    "how",
    "what",
    "and",
    "to",
    "tall",
    "height",
    "high",
    "long",
}


def _terms(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


def _score(query: set[str], fact: dict[str, str]) -> float:
    title, text = _terms(fact["title"]), _terms(fact["text"])
    if not query & (title | text):
        return 0.0
    # Title words matched, then how much of the title the query covers ("Tokyo" is the
    # city before it is "Tokyo Skytree"), then the text's matches.
    covered = len(query & title) / len(title) if title else 0.0
    return 2.0 * len(query & title) + covered + len(query & text) / math.sqrt(len(text) + 1)


@plait.tool
async def search(query: Span) -> str:
    """Look up one fact in the encyclopedia; returns the best-matching sentence."""
    terms = _terms(query)
    best = max(FACTS, key=lambda f: _score(terms, f))
    if _score(terms, best) == 0:
        raise LookupError(f"nothing found for {query!r}")
    return best["text"]


@plait.tool
def extract_number(text: str, unit: str = "") -> float:
    """The first number in text (before `unit`, if given): 330 from '330 metres tall'."""
    pattern = r"(?<![\w.])(-?\d(?:[\d,]*\d)?(?:\.\d+)?)(?![\w])"  # not K2's 2
    if unit:
        pattern += r"\s*" + re.escape(unit)
    m = re.search(pattern, text)
    if not m:
        raise ValueError(f"no number{' before ' + repr(unit) if unit else ''} in {text!r}")
    return float(m.group(1).replace(",", ""))


_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.Mod: operator.mod,
    ast.FloorDiv: operator.floordiv,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 100:
            raise ValueError("exponent too large")
        return _OPS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.operand))
    raise ValueError(f"not arithmetic: {ast.unparse(node)}")


@plait.tool
def calculate(expression: Formula) -> float:
    """Evaluate arithmetic such as '330 - 93' or '(2.1 + 8.9) / 2': numbers, + - * / ** %."""
    return _eval(ast.parse(expression.strip(), mode="eval").body)


@plait.tool
def which_larger(a: str, b: str) -> str:
    """Of two texts, the one that states the larger number (the first number in each)."""
    return a if extract_number(a) >= extract_number(b) else b


# Few-shot plans for the planner, each ending with the joiner's answer; the planner is shown
# the ones most like its question. Deliberately not the README's question, nor any question
# of bench/answers.py: a model that copies an example must not look as if it had answered.
EXAMPLES = """\
Question: How long is the Thames?
1. search("Thames")
2. join()
<END_OF_PLAN>
Observation 1: The River Thames is 346 kilometres long and flows through London.
Action: Finish(346 kilometres)

Question: Who wrote Hamlet?
1. search("Hamlet")
2. join()
<END_OF_PLAN>
Observation 1: William Shakespeare wrote Hamlet, first performed around 1600, and Macbeth.
Action: Finish(William Shakespeare)

Question: When did the Sydney Opera House open?
1. search("Sydney Opera House")
2. join()
<END_OF_PLAN>
Observation 1: The Sydney Opera House is 65 metres tall at its highest shell and opened in 1973.
Action: Finish(1973)

Question: How much longer is the Danube than the Thames?
1. search("Danube")
2. search("Thames")
3. extract_number($1)
4. extract_number($2)
5. calculate("$3 - $4")
6. join()
<END_OF_PLAN>
Observation 5: 2504.0
Action: Finish(2504 kilometres)

Question: What is the combined population of Canberra and Ottawa?
1. search("Canberra")
2. search("Ottawa")
3. extract_number($1)
4. extract_number($2)
5. calculate("$3 + $4")
6. join()
<END_OF_PLAN>
Observation 5: 1.46
Action: Finish(1.46 million)

Question: How many times taller is the Sydney Opera House than the Leaning Tower of Pisa?
1. search("Sydney Opera House")
2. search("Leaning Tower of Pisa")
3. extract_number($1)
4. extract_number($2)
5. calculate("$3 / $4")
6. join()
<END_OF_PLAN>
Observation 5: 1.1607142857142858
Action: Finish(1.16)

Question: Which is longer, the Thames or the Danube?
1. search("Thames")
2. search("Danube")
3. which_larger($1, $2)
4. join()
<END_OF_PLAN>
Observation 3: The Danube is 2850 kilometres long and flows through ten countries.
Action: Finish(Danube)"""
