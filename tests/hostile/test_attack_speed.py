"""Adversarial pass on the speculative join and the cached plan's short join prompt (issue
18): a speculative joiner's call must end with the run however it ends, its decision be taken
only for the very plan and results it joined, and the accounting say what happened."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from plait.core import events as ev
from plait.llm.base import Delta

from .test_speed2 import PLAN, Model, run


async def test_a_run_cancelled_while_replaying_an_adopted_join_closes_its_stream() -> None:
    """The speculative join was adopted (the real plan is the draft's) and its reply is still
    streaming when the run is cancelled: its stream must be closed with the run, not left
    reading the model in a task nobody awaits."""
    log: list[str] = []
    model = Model(PLAN, None, [])  # the speculative joiner says "Thought: " and hangs
    replaying = asyncio.Event()

    def on_event(e: Any) -> None:
        if isinstance(e, ev.LLMToken) and e.call == 2:
            replaying.set()  # the run reads the adopted reply as its joiner call

    draft = PLAN.replace("<END_OF_PLAN>", "")
    task = asyncio.create_task(run(model, draft, log, on_event=on_event))
    async with asyncio.timeout(30):
        await replaying.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert model.closed.is_set()
    names = {t.get_name() for t in asyncio.all_tasks()}
    assert not {n for n in names if n.startswith("plait-spec")}
