"""The fast literal reader must agree with the `ast` path on everything it accepts."""

from __future__ import annotations

import ast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.agent.parse import _fast_arguments, _NotSimple, _quote_bare_refs, parse_arguments
from plait.errors import PlanError


def slow(raw: str):
    node = ast.parse(f"_({_quote_bare_refs(raw)})", mode="eval").body
    return (
        tuple(ast.literal_eval(a) for a in node.args),
        {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords},
    )


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
literals = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=5) | st.integers(), inner, max_size=3)
    ),
    max_leaves=12,
)
refs = st.integers(1, 999).map(lambda n: f"${n}") | st.integers(1, 999).map(lambda n: f"${{{n}}}")


@settings(max_examples=400, deadline=None)
@given(
    st.lists(literals | refs, max_size=4),
    st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,5}", fullmatch=True), literals, max_size=3),
)
def test_fast_path_agrees_with_ast(args, kwargs):
    parts = [a if isinstance(a, str) and a.startswith("$") else repr(a) for a in args]
    parts += [f"{k}={v!r}" for k, v in kwargs.items()]
    raw = ", ".join(parts)
    try:
        expected = slow(raw)
    except (SyntaxError, ValueError):
        return  # e.g. a keyword named like a Python keyword: the ast path owns that case
    try:
        got = _fast_arguments(raw)
    except _NotSimple:
        return
    assert repr(got) == repr(expected)


@pytest.mark.parametrize(
    "raw",
    [
        "01",
        "1_000",
        "0x10",
        "True=1",
        "class=2",
        "'a' 'b'",
        "{1, 2}",
        "x == 1",
        "b'x'",
        "- 5",
        '"""a"b"""',
        "1, x=2, 3",
        "{[1]: 2}",
        "*a",
        "1.",
    ],
)
def test_fast_path_leaves_the_odd_cases_to_ast(raw):
    with pytest.raises((_NotSimple, TypeError, ValueError)):
        _fast_arguments(raw)
    # and the full reader still gives a definite answer: arguments, or (for ones that start
    # like keyword arguments but are not valid ones) a PlanError saying why
    try:
        parse_arguments(raw)
    except PlanError as e:
        assert raw in ("True=1", "class=2", "1, x=2, 3"), e


def test_fast_path_reads_the_common_shapes():
    assert _fast_arguments('"Eiffel Tower", k=3, flag=True') == (
        ("Eiffel Tower",),
        {"k": 3, "flag": True},
    )
    assert _fast_arguments("[$1, ${2}], {'a': (1, 2.5)}, None") == (
        (["$1", "${2}"], {"a": (1, 2.5)}, None),
        {},
    )
    assert _fast_arguments(r"'it\'s', -4e2") == (("it's", -400.0), {})
