"""The Ray backend: each tool call is a Ray task, or a call on a Ray actor for a stateful tool.

Only where a call runs changes. The scheduler and the run store stay in this process (the
driver), so dataflow, limits, timeouts, retries and the event log are exactly the local
backend's. What Ray adds:

- CPU-bound pure-Python tools run in parallel, in worker processes across the cluster,
  each call with the resources its tool asks for (`@tool(resources=...)`).
- A timed-out or cancelled call is stopped: `ray.cancel` interrupts the worker. A call on
  an actor cannot be interrupted, so that actor is killed and a new one takes later calls.
- A result larger than `inline_bytes` stays in Ray's object store as a `Remote`; a later
  call that takes it gets the value on its own node, never through the driver.
- A call whose worker or node died raises `WorkerLost` here, so the scheduler runs it
  again elsewhere and the run log shows the retry. Ray's own task retries are off for
  that reason: a retry nobody records is a retry a resume cannot account for.

The cluster is the one Ray's convention names: `address=`, else `$RAY_ADDRESS`, else the
latest cluster started on this machine, else a new local one. The process's connection is
shared by its backends; the last one to close shuts it down if plait opened it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Mapping
from typing import Any

try:
    import ray
    import ray.exceptions as rex
    from ray import cloudpickle
except ImportError as e:  # pragma: no cover - depends on the extra
    from ..errors import PlaitError

    raise PlaitError("the ray backend needs Ray: pip install 'plait[ray]'") from e

from ..core.context import TaskContext, current_task, serving
from ..core.remote import Remote
from ..core.tools import Tool
from ..errors import PlaitError, WorkerLost

INLINE_BYTES = 1 << 20  # results up to this size come back to the driver

# Errors that mean the work was lost with its process or node, not that the tool failed.
_LOST: tuple[type[BaseException], ...] = (
    rex.WorkerCrashedError,
    rex.NodeDiedError,
    rex.LocalRayletDiedError,
    rex.ObjectLostError,
    rex.RayActorError,
    rex.OutOfMemoryError,
)


# This process's connection to Ray, shared by every RayBackend in it: ray.init is once per
# process, so the last backend to close shuts down a connection that plait opened (and none
# that the user opened), never one another run still uses.
_lock = threading.Lock()
_users = 0
_ours = False


def _connect(address: str | None) -> None:
    global _users, _ours
    with _lock:
        if not ray.is_initialized():
            _init(address)
            _ours = True
        _users += 1


def _disconnect() -> None:
    global _users, _ours
    with _lock:
        _users -= 1
        if _users == 0 and _ours:
            _ours = False
            ray.shutdown()


class RayBackend:
    name = "ray"

    def __init__(self, address: str | None = None, *, inline_bytes: int = INLINE_BYTES) -> None:
        self.inline_bytes = inline_bytes
        _connect(address)
        self._open = True
        self._tasks: dict[int, Any] = {}  # id(tool) -> its remote function
        self._actors: dict[int, Any] = {}  # id(tool) -> its actor, for stateful tools
        self._checked: set[int] = set()  # tools whose resources some node has
        self._tools: dict[int, Tool] = {}  # keeps the ids above from being reused
        self._completions: _Completions | None = None

    async def call(self, tool: Tool, arguments: dict[str, Any]) -> Any:
        self._check_resources(tool)
        template, refs = _split(arguments)
        ctx = current_task()
        # One plain argument (and the refs): Ray serializes each one separately, every call.
        call = (template, (ctx.run_id, ctx.task_id, ctx.attempt) if ctx is not None else None)
        if tool.stateful:
            method = self._actor(tool).call.options(num_returns=2)
            meta_ref, value_ref = method.remote(call, *refs)
        else:
            meta_ref, value_ref = self._task(tool).remote(call, *refs)
        loop = asyncio.get_running_loop()
        if self._completions is None or self._completions.loop is not loop:
            self._completions = _Completions(loop)  # one backend may serve several loops
        try:
            meta = await self._completions.watch(meta_ref)
        except asyncio.CancelledError:
            _cancel(meta_ref)
            if tool.stateful:
                # A running actor call cannot be stopped; a new actor takes the next calls.
                self._retire(tool)
            _handled(value_ref)
            raise
        except rex.TaskCancelledError:
            # Not by us (that raised CancelledError above): the call failed, the run goes on.
            _handled(value_ref)
            raise RuntimeError("the call was cancelled on the cluster") from None
        except rex.RayTaskError as e:
            _handled(value_ref)
            raise _cause(e) from None
        except _LOST as e:
            _handled(value_ref)
            raise WorkerLost(_first_line(e)) from None
        if meta[0] == "value":
            return meta[1]
        return Remote(value_ref, meta[1], meta[2], ray.get)

    async def aclose(self) -> None:
        if not self._open:
            return
        self._open = False
        actors, self._actors = list(self._actors.values()), {}
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        self._tasks.clear()
        self._tools.clear()
        self._completions = None
        await asyncio.to_thread(_disconnect)

    def _retire(self, tool: Tool) -> None:
        actor = self._actors.pop(id(tool), None)
        if actor is not None:
            with contextlib.suppress(Exception):
                ray.kill(actor)

    # per tool ----------------------------------------------------------------------------

    def _task(self, tool: Tool) -> Any:
        remote = self._tasks.get(id(tool))
        if remote is None:
            _ship(tool)

            inline_bytes = self.inline_bytes

            def run(*args: Any) -> tuple[Any, Any]:
                return _serve(tool, inline_bytes, *args)

            run.__name__ = run.__qualname__ = tool.name
            # max_retries=0: a lost call comes back to the scheduler, which records its retry.
            options = {**_ray_options(tool.resources), "num_returns": 2, "max_retries": 0}
            remote = ray.remote(run).options(**options)
            self._tasks[id(tool)] = remote
            self._tools[id(tool)] = tool
        return remote

    def _actor(self, tool: Tool) -> Any:
        actor = self._actors.get(id(tool))
        if actor is None:
            _ship(tool)
            options = {
                **_ray_options(tool.resources),
                "max_concurrency": tool.max_concurrency or 1,
                "max_restarts": -1,  # a lost node's actor starts again elsewhere
                "max_task_retries": 0,  # and the call is retried by the scheduler
            }
            actor = ray.remote(_Host).options(**options).remote(tool, self.inline_bytes)
            self._actors[id(tool)] = actor
            self._tools[id(tool)] = tool
        return actor

    def _check_resources(self, tool: Tool) -> None:
        """Fail a call no node could ever take, instead of leaving it queued for good."""
        if id(tool) in self._checked or not tool.resources:
            return
        needs = _needs(tool.resources)
        for node in ray.nodes():
            have = node.get("Resources", {})
            if node.get("Alive") and all(have.get(k, 0) >= v for k, v in needs.items()):
                self._checked.add(id(tool))
                return
        raise PlaitError(f"tool {tool.name} needs {needs}, which no node of the Ray cluster has")


class _Host:
    """The actor of a stateful tool: one process that keeps the tool's state between calls."""

    def __init__(self, tool: Tool, inline_bytes: int) -> None:
        self.tool = tool
        self.inline_bytes = inline_bytes

    def call(self, *args: Any) -> tuple[Any, Any]:
        return _serve(self.tool, self.inline_bytes, *args)


class _Completions:
    """Hands finished Ray calls to the event loop, waking it once per burst of them.

    Awaiting each ObjectRef wakes the loop once per call from Ray's thread, which costs
    more than the rest of a trivial call; here a burst of completions is one wake-up."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._done: list[tuple[asyncio.Future[Any], Any]] = []

    def watch(self, ref: Any) -> asyncio.Future[Any]:
        waiter = self.loop.create_future()
        on_completed = getattr(ref, "_on_completed", None)
        if on_completed is not None:  # what ref.future() uses, without a Future per call
            on_completed(lambda outcome: self._finished(waiter, outcome))
        else:
            ref.future().add_done_callback(lambda f: self._finished(waiter, _outcome(f)))
        return waiter

    def _finished(self, waiter: asyncio.Future[Any], outcome: Any) -> None:
        with self._lock:  # in Ray's thread
            self._done.append((waiter, outcome))
            first = len(self._done) == 1
        if first:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            done, self._done = self._done, []
        for waiter, outcome in done:
            if waiter.cancelled():
                continue
            # A call's result is always a tuple (see _serve); anything else is Ray's error.
            if isinstance(outcome, BaseException):
                waiter.set_exception(outcome)
            else:
                waiter.set_result(outcome)


def _outcome(f: concurrent.futures.Future[Any]) -> Any:
    error = f.exception()
    return error if error is not None else f.result()


def _serve(
    tool: Tool,
    inline_bytes: int,
    call: tuple[Any, tuple[str, int, int] | None],
    *values: Any,
) -> tuple[Any, Any]:
    """One call, in a Ray worker: fill in the values Ray fetched, validate, call, pack."""
    template, context = call
    arguments = template
    if values:  # the driver could not validate what it had not seen
        arguments = tool.validate(_fill(template, values))
    with serving(TaskContext(*context) if context is not None else None):
        result = tool.invoke(arguments)
        if inspect.isawaitable(result):
            result = asyncio.run(_wait(result))
    size = _nbytes(result)
    if size <= inline_bytes:
        return ("value", result), None
    return ("remote", type(result).__name__, size), result


async def _wait(awaitable: Any) -> Any:
    return await awaitable


class _Slot:
    """Where the i-th Remote was in the arguments; Ray hands the worker its value."""

    __slots__ = ("i",)

    def __init__(self, i: int) -> None:
        self.i = i


def _split(value: Any, refs: list[Any] | None = None) -> tuple[Any, list[Any]]:
    """The arguments with each Remote replaced by a _Slot, and the Remotes' object refs.

    Refs go as top-level task arguments: Ray then moves their values to the worker's node
    itself (nested refs would arrive as refs)."""
    refs = [] if refs is None else refs
    if isinstance(value, Remote):
        refs.append(value.ref)
        return _Slot(len(refs) - 1), refs
    if isinstance(value, dict):
        return {k: _split(v, refs)[0] for k, v in value.items()}, refs
    if isinstance(value, (list, tuple)):
        return type(value)(_split(v, refs)[0] for v in value), refs
    return value, refs


def _fill(value: Any, values: tuple[Any, ...]) -> Any:
    if isinstance(value, _Slot):
        return values[value.i]
    if isinstance(value, dict):
        return {k: _fill(v, values) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_fill(v, values) for v in value)
    return value


def _nbytes(value: Any, depth: int = 0) -> int:
    """About how large a value is, cheaply: exact for bytes, str and arrays, sampled for
    long containers."""
    if isinstance(value, (bytes, bytearray, str)):
        return len(value)
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    if depth < 4 and isinstance(value, (list, tuple, set, frozenset, dict)):
        items = list(value.items()) if isinstance(value, dict) else list(value)
        sample = items[:256]
        if not sample:
            return 64
        size = sum(_nbytes(x, depth + 1) for x in sample)
        return size * len(items) // len(sample) + 64
    return sys.getsizeof(value)


def _ray_options(resources: Mapping[str, Any]) -> dict[str, Any]:
    """`@tool(resources=...)` as Ray's `.options()`: named ones as themselves, the rest as
    custom resources."""
    options: dict[str, Any] = {}
    custom = dict(resources.get("custom", {}))
    for key, value in resources.items():
        if key in ("num_cpus", "num_gpus", "memory"):
            options[key] = value
        elif key != "custom":
            custom[key] = value
    if custom:
        options["resources"] = custom
    return options


def _needs(resources: Mapping[str, Any]) -> dict[str, float]:
    """The same, in `ray.nodes()`'s names: CPU, GPU, memory and the custom ones."""
    names = {"num_cpus": "CPU", "num_gpus": "GPU", "memory": "memory"}
    options = _ray_options(resources)
    needs = {names[k]: v for k, v in options.items() if k in names and v}
    needs.update({k: v for k, v in options.get("resources", {}).items() if v})
    return needs


def _ship(tool: Tool) -> None:
    """Send the tool's module by value unless it is installed: workers cannot import a
    tools file given by path, nor a script or test module they never saw."""
    module = sys.modules.get(getattr(tool.fn, "__module__", "") or "")
    if module is None or module.__name__ == "__main__" or module.__name__.startswith("plait."):
        return
    path = getattr(module, "__file__", None) or ""
    if "site-packages" in path or "dist-packages" in path:
        return
    cloudpickle.register_pickle_by_value(module)


def _cancel(ref: Any) -> None:
    # A running sync actor method cannot be interrupted; a task gets KeyboardInterrupt.
    with contextlib.suppress(Exception):  # already finished, or its worker already gone
        ray.cancel(ref, force=False)


def _handled(ref: Any) -> None:
    """Read a call's second return, which carries the same error, so Ray does not print it
    again as an unhandled error when it is freed."""
    on_completed = getattr(ref, "_on_completed", None)
    if on_completed is not None:
        with contextlib.suppress(Exception):
            on_completed(lambda _: None)


def _cause(e: rex.RayTaskError) -> BaseException:
    """The tool's own exception, as it raised it in the worker (a KeyboardInterrupt or
    SystemExit there is a failed call here, never this process's own interrupt)."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, rex.ObjectLostError):
        return RuntimeError(
            "an input kept on the cluster was lost with its node "
            f"({_first_line(cause)}); a resume makes it again"
        )
    if isinstance(cause, Exception):
        return cause
    return RuntimeError(_first_line(e))


def _probe(address: str | None, timeout: float = 5.0) -> None:
    """Fail at once, by name, when a named cluster is not listening: ray.init would retry
    for minutes."""
    if not address or address in ("auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise PlaitError(f"bad Ray address {address!r} (use HOST:PORT or ray://HOST:PORT)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise PlaitError(f"cannot start or reach the Ray cluster at {address}: {reason}") from None


def _first_line(e: BaseException) -> str:
    """The first sentence of Ray's message (the rest is advice on where to look)."""
    text = str(e).strip().splitlines()
    return text[0].split(". ")[0].rstrip(".") if text else type(e).__name__


def _init(address: str | None) -> None:
    """ray.init, quietly, keeping this process's SIGTERM handler (ray.init replaces it)."""
    _probe(address or os.environ.get("RAY_ADDRESS"))
    main = threading.current_thread() is threading.main_thread()
    saved = signal.getsignal(signal.SIGTERM) if main else None
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
    except Exception as e:
        where = address or "RAY_ADDRESS"
        raise PlaitError(
            f"cannot start or reach the Ray cluster ({where}): {_first_line(e)}"
        ) from None
    finally:
        if main and saved is not None:
            signal.signal(signal.SIGTERM, saved)
