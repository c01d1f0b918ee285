"""Adversarial pass on the day's small fixes: pure-call keys (core/shared.py `call_key`),
store version checks, read-only look-ups, Tool's options, the serve lockout.

Each test is a defect found and fixed: it failed before its fix.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
from collections import Counter

import pydantic

import plait
from plait.core.shared import call_key
from plait.core.tools import tool


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Point(pydantic.BaseModel):
    x: int
    y: int


async def test_a_pure_tool_whose_parameters_pydantic_coerces_still_shares_equal_calls():
    # The plan writes JSON literals; validation turns them into an Enum, a model, a date.
    # Their keys were None after validation, so equal calls of such a tool all ran.
    ran: Counter[str] = Counter()

    @tool(pure=True)
    def paint(color: Color, at: Point, day: datetime.date) -> str:
        ran[color.value] += 1
        return f"{color.value} at {at.x},{at.y} on {day}"

    plan = (
        '1. paint("red", {"x": 1, "y": 2}, "2026-01-02")\n'
        '2. paint(color="red", at={"y": 2, "x": 1}, day="2026-01-02")\n'
        '3. paint("blue", {"x": 1, "y": 2}, "2026-01-02")\n'
    )
    result = await plait.aexecute(plan, tools=[paint])
    assert result.status == "done"
    assert [t.result for t in result.tasks] == [
        "red at 1,2 on 2026-01-02", "red at 1,2 on 2026-01-02", "blue at 1,2 on 2026-01-02"
    ]  # fmt: skip
    assert ran == {"red": 1, "blue": 1}


@dataclasses.dataclass
class Box:
    item: object


class Label(str):
    pass


def test_keys_of_non_json_values_tell_their_types_and_contents_apart():
    # Shared at last, but never merged with a value of another type or another content.
    assert call_key("f", {"q": Color.RED}) == call_key("f", {"q": Color.RED}) is not None
    assert call_key("f", {"q": Point(x=1, y=2)}) == call_key("f", {"q": Point(x=1, y=2)})
    assert call_key("f", {"q": Box("a")}) == call_key("f", {"q": Box("a")}) is not None
    distinct = [
        Color.RED, "red", Label("red"), b"red", ["red"], {"\x00": ["red"]},
        Point(x=1, y=2), {"x": 1, "y": 2}, Point(x=1, y=3),
        Box("a"), Box(b"a"), {"item": "a"}, Box(Box("a")),
        datetime.date(2026, 1, 2), "2026-01-02", datetime.datetime(2026, 1, 2),
    ]  # fmt: skip
    keys = [call_key("f", {"q": v}) for v in distinct]
    assert None not in keys
    assert len(set(keys)) == len(keys), keys
    # A plain dict cannot pose as a tagged value, however its keys are spelled.
    tagged = call_key("f", {"q": b"red"})
    forged = [{"\x00": v} for v in (["builtins.bytes", '"red"'], ["builtins.bytes", "red"])]
    assert all(call_key("f", {"q": f}) not in (tagged, None) for f in forged)
    # A set's (or any other container's) items lose their types in JSON: never merged.
    assert call_key("f", {"q": {b"a"}}) is None
    assert call_key("f", {"q": frozenset({"a"})}) is None
