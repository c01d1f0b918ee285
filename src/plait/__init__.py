"""plait: compile LLM agent work into a task graph and run it in parallel.

import plait

@plait.tool
async def search(query: str) -> str: ...

result = plait.run("Which is taller?", tools=[search], model="openai:gpt-4o-mini")
result = plait.execute('1. search("Eiffel Tower")\\n2. join()', tools=[search])

Every public name is here. They are imported when first used (PEP 562), so importing one
layer (`plait.core.graph`, a Ray worker unpickling a tool) does not load the API, the model
clients or the stores.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_WHERE = {
    "LLM": "plait.llm",
    "LLMError": "plait.llm",
    "resolve_model": "plait.llm",
    "BatchResult": "plait.batch",
    "BatchStats": "plait.batch",
    "abatch": "plait.batch",
    "Event": "plait.core.events",
    "Usage": "plait.core.events",
    "LLMCall": "plait.runs.result",
    "RunResult": "plait.runs.result",
    "TaskRecord": "plait.runs.result",
    "PlaitError": "plait.errors",
    "PlanError": "plait.errors",
    "ToolError": "plait.errors",
    "PlanParser": "plait.agent.parse",
    "parse_plan": "plait.agent.parse",
    "RetryPolicy": "plait.agent.loop",
    "RunHeld": "plait.stores",
    "RunInfo": "plait.stores",
    "RunNotFound": "plait.stores",
    "Store": "plait.stores",
    "StoreError": "plait.stores",
    "open_store": "plait.stores",
    "Scheduler": "plait.core.scheduler",
    "Task": "plait.core.task",
    "TaskContext": "plait.core.context",
    "current_task": "plait.core.context",
    "Tool": "plait.core.tools",
    "Tools": "plait.core.tools",
    "tool": "plait.core.tools",
    "load_tools": "plait.runs.loading",
    "aexecute": "plait.api",
    "aresume": "plait.api",
    "arun": "plait.api",
    "astream": "plait.api",
    "execute": "plait.api",
    "resume": "plait.api",
    "run": "plait.api",
}
_MODULES = {"batch": "plait.batch", "events": "plait.core.events"}

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


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
    elif name in _MODULES:
        value = importlib.import_module(_MODULES[name])
    else:
        raise AttributeError(f"module 'plait' has no attribute {name!r}")
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:  # what type checkers and editors see: the same names, eagerly
    from . import batch
    from .agent.loop import RetryPolicy
    from .agent.parse import PlanParser, parse_plan
    from .api import aexecute, aresume, arun, astream, execute, resume, run
    from .batch import BatchResult, BatchStats, abatch
    from .core import events
    from .core.context import TaskContext, current_task
    from .core.events import Event, Usage
    from .core.scheduler import Scheduler
    from .core.task import Task
    from .core.tools import Tool, Tools, tool
    from .errors import PlaitError, PlanError, ToolError
    from .llm import LLM, LLMError, resolve_model
    from .runs.loading import load_tools
    from .runs.result import LLMCall, RunResult, TaskRecord
    from .stores import RunHeld, RunInfo, RunNotFound, Store, StoreError, open_store
