"""Offline example tools: a search over a small fact corpus, and exact arithmetic.

Nothing here is canned: `search` ranks the facts in facts.jsonl against the query, and
`extract_number` and `calculate` compute from whatever text comes back.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
from pathlib import Path

import plait

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
    return 2.0 * len(query & title) + len(query & text) / math.sqrt(len(text) + 1)


@plait.tool
async def search(query: str) -> str:
    """Look up one fact in the encyclopedia; returns the best-matching sentence."""
    terms = _terms(query)
    best = max(FACTS, key=lambda f: _score(terms, f))
    if _score(terms, best) == 0:
        raise LookupError(f"nothing found for {query!r}")
    return best["text"]


@plait.tool
def extract_number(text: str, unit: str = "") -> float:
    """The first number in text (before `unit`, if given): 330 from '330 metres tall'."""
    pattern = r"(-?\d[\d,]*(?:\.\d+)?)"
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
def calculate(expression: str) -> float:
    """Evaluate arithmetic such as '330 - 93' or '(2.1 + 8.9) / 2': numbers, + - * / ** %."""
    return _eval(ast.parse(expression.strip(), mode="eval").body)


# Few-shot plans for the planner. Deliberately not the README's question: a model that
# copies an example must not look as if it had answered.
EXAMPLES = """\
Question: How much longer is the Nile than the Danube?
1. search("Nile length")
2. search("Danube length")
3. extract_number($1, unit="kilometres")
4. extract_number($2, unit="kilometres")
5. calculate("$3 - $4")
6. join()
<END_OF_PLAN>"""
