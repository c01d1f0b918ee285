"""One run's speed-ups, as the run sees them: its first plan from the plan cache, and the calls
it speculates while its planner thinks. The glue between a run and templates.py and
speculate.py, so the session that runs it (api.py) makes three calls: `first_plan` before
the run, `start` inside it (where the scheduler is) with `watch` on its events, `finish`
after it. The logic lives in those modules; this one only keeps the run's account.

- Plan cache: `first_plan` matches the question against the cache; on a hit the run is given
  the instantiated plan as its first planner reply (a reply that needs no model, as a
  resumed run's kept replies are), so the planner is not called; the caller keeps the plan
  text in the run's options for a resume. `finish` counts a hit whose run replanned or found
  no answer as a miss (not one whose model call failed: an outage is no fault of the plan),
  and teaches the cache a template when the run was answered on its first plan with every
  task done (the tasks `watch` saw before any Replanning). A hit's joiner is sent a short
  prompt of its own (agent/loop.py), not the planner's conversation.
- Speculation: `start` builds a Speculator over the scheduler's shared calls and backend,
  starts the question's literals (`speculate="question"`) or streams a draft model's plan
  (`draft`), and `watch` hands it the run's events (it adopts and settles by them). A
  draft's whole plan is speculated too, and once its results are in the agent's joiner is
  started on them (`Agent.join_early`, the speculative join). Not
  done when the plan comes from the cache: the plan is then there at once, which is all
  speculation could hope for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ..core import events as ev
from ..core.scheduler import Scheduler
from ..core.task import Task
from ..core.tools import Tools
from ..llm.base import LLM, Request
from .loop import Agent
from .prompts import planner_messages, select_examples
from .speculate import Speculator, draft_guesses, from_question
from .templates import CallStore, Match, TemplateCache, render, scope

QUESTION = "question"  # `draft_model=` value that speculates the question's literals only
STOP = ("<END_OF_PLAN>",)
_IN_MEMORY: dict[str, TemplateCache] = {}  # plan_cache=True with no store: this process's


@contextlib.asynccontextmanager
async def open_plan_cache(
    plan_cache: bool | TemplateCache | None, tools: Tools, store: CallStore | str | None
) -> AsyncIterator[TemplateCache | None]:
    """The run's plan cache: the one given; or with `plan_cache=True`, the templates of
    `store` (a URL is opened here and closed after), or of this process when there is none."""
    if isinstance(plan_cache, TemplateCache) or not plan_cache:
        yield plan_cache or None
        return
    if store is None:
        yield _IN_MEMORY.setdefault(scope(tools), TemplateCache.for_tools(tools))
        return
    if not isinstance(store, str):
        yield TemplateCache.for_tools(tools, store)
        return
    from ..stores import open_store  # only when a URL names a store

    opened = await asyncio.to_thread(open_store, store)
    try:
        yield TemplateCache.for_tools(tools, opened)
    finally:
        await asyncio.to_thread(opened.close)


@dataclass
class RunSpeedups:
    question: str
    tools: Tools
    cache: TemplateCache | None = None
    draft: LLM | str | None = None  # a draft model, or QUESTION
    examples: str | None = None  # the few-shot plans, for the draft's prompt
    match: Match | None = None
    speculator: Speculator | None = None
    _first: list[Task] = field(default_factory=list)  # the first plan's tasks
    _replanned: bool = False
    _failed: bool = False  # a task of the run failed or was skipped
    _missed: bool = False
    _model_failed: bool = False  # a model call of the run failed for good
    _learned: bool = False
    _draft_task: asyncio.Task[None] | None = None

    async def first_plan(self) -> str | None:
        """The plan text the cache has for the question, or None: ask the planner."""
        if self.cache is None:
            return None
        self.match = await self.cache.match(self.question, self.tools)
        if self.match is None:
            return None
        self.cache.hit(self.match)
        return render(self.match.tasks)

    def start(self, scheduler: Scheduler, agent: Agent | None = None) -> None:
        """Begin speculating (inside the run, before the planner is asked); with a draft
        model and the run's `agent`, a whole draft plan whose speculated results are all in
        starts the agent's speculative join (`Agent.join_early`)."""
        if self.draft is None or self.match is not None:
            return
        spec = Speculator(
            self.tools,
            scheduler.shared,
            scheduler.backend.call,
            limits=getattr(scheduler, "limits", None),
        )
        self.speculator = spec
        if self.draft == QUESTION:
            spec.start(from_question(self.question, self.tools))
        elif not isinstance(self.draft, str):
            shots = self.examples
            if shots:
                shots = select_examples(shots, self.question, 2)
            request = Request(planner_messages(self.question, self.tools, examples=shots), STOP)
            on_plan = None
            if agent is not None:
                on_plan = spec.start_plan
                joins = spec.stats.joins
                spec.on_whole = lambda tasks, results: agent.join_early(tasks, results, joins)
            self._draft_task = asyncio.create_task(
                draft_guesses(self.draft, request, self.tools, spec.start, on_plan),
                name="plait-draft",
            )

    def watch(self, event: ev.Event) -> None:
        """A listener for the run's events."""
        if isinstance(event, ev.Replanning):
            self._replanned = True
        elif isinstance(event, ev.TaskAdded) and not self._replanned and not event.restored:
            self._first.append(event.task)
        elif isinstance(event, ev.TaskFinished) and event.status != "done":
            self._failed = True
        elif isinstance(event, ev.LLMFinished) and event.error is not None:
            self._model_failed = True
        if self.speculator is not None:
            self.speculator.watch(event)
            if self.speculator.over and self._draft_task is not None:
                self._draft_task.cancel()  # the plan is complete: the draft is moot

    async def stop(self) -> None:
        """Stop the draft and every speculated call (the run's scope is ending)."""
        if self._draft_task is not None:
            self._draft_task.cancel()
            with contextlib.suppress(BaseException):
                await self._draft_task
        if self.speculator is not None:
            await self.speculator.aclose()

    async def finish(self, answered: bool) -> None:
        """After the run: count the cached plan's hit or miss, or learn a template."""
        if self.cache is None:
            return
        if self.match is not None:
            # A model that failed (an outage: LLMError after its retries) says nothing of
            # the plan: no miss, or an outage would drop every good template.
            if self._replanned or not (answered or self._model_failed):
                self._missed = True
                await self.cache.miss(self.match)
        elif answered and not self._replanned and not self._failed and self._first:
            self._learned = await self.cache.learn(self.question, self._first) is not None

    def savings(self) -> dict[str, Any]:
        """The run's `savings` in its --json object."""
        spec = self.speculator.stats.to_dict() if self.speculator is not None else None
        joins = self.speculator.stats.joins.to_dict() if self.speculator is not None else None
        return {
            "planner_calls_skipped": 1 if self.match is not None else 0,
            "speculated_calls": spec,
            "speculated_joins": joins,
        }

    def plan_cache(self) -> dict[str, Any] | None:
        """The run's `plan_cache` in its --json object (None: the cache was off)."""
        if self.cache is None:
            return None
        m = self.match
        return {
            "hit": m is not None,
            "template": m.template.number if m is not None else None,
            "slots": m.values if m is not None else None,
            "missed": self._missed,  # the joiner asked for a new plan after it
            "learned": self._learned,  # this run taught the cache a template
        }
