"""plait: compile LLM agent work into a task graph and run it in parallel.

import plait

@plait.tool
async def search(query: str) -> str: ...

result = plait.run("Which is taller?", tools=[search], model="openai:gpt-4o-mini")
result = plait.execute('1. search("Eiffel Tower")\\n2. join()', tools=[search])
"""

from __future__ import annotations

from . import batch, events
from .agent import RetryPolicy
from .api import aexecute, aresume, arun, astream, execute, resume, run
from .batch import BatchResult, BatchStats, abatch
from .errors import PlaitError, PlanError, ToolError
from .events import Event, Usage
from .llm import LLM, LLMError, resolve_model
from .plan import PlanParser, Task, parse_plan
from .result import LLMCall, RunResult, TaskRecord
from .scheduler import Scheduler, TaskContext, current_task
from .stores import RunHeld, RunInfo, RunNotFound, Store, StoreError, open_store
from .tools import Tool, Tools, load_tools, tool

__version__ = "0.1.0"

__all__ = [
    "LLM",
    "BatchResult",
    "BatchStats",
    "Event",
    "LLMCall",
    "LLMError",
    "PlaitError",
    "PlanError",
    "PlanParser",
    "RetryPolicy",
    "RunHeld",
    "RunInfo",
    "RunNotFound",
    "RunResult",
    "Scheduler",
    "Store",
    "StoreError",
    "Task",
    "TaskContext",
    "TaskRecord",
    "Tool",
    "ToolError",
    "Tools",
    "Usage",
    "abatch",
    "aexecute",
    "aresume",
    "arun",
    "astream",
    "batch",
    "current_task",
    "events",
    "execute",
    "load_tools",
    "open_store",
    "parse_plan",
    "resolve_model",
    "resume",
    "run",
    "tool",
]
