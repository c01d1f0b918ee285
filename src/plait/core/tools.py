"""Tools: `@tool`, the registry, JSON Schema from signatures, and argument checks.

A tool is a plain sync or async function. Its signature and type hints are the contract the
planner sees (as JSON Schema) and the scheduler enforces (pydantic validates the arguments
before every call). Checks that need no results run when a task is added, so a plan whose
literals can never fit is rejected before anything runs.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import UnionType
from typing import Annotated, Any, TypedDict, Union, Unpack, get_args, get_origin, overload

import pydantic

from ..errors import PlanError, ToolError
from .task import Task, mentions_reference

__all__ = ["Tool", "Tools", "tool"]


class Options(TypedDict, total=False):
    """A tool's keywords, each also its attribute (unset: the default after it)."""

    name: str | None  # the function's name
    description: str | None  # the docstring's first paragraph
    max_concurrency: int | None  # calls at once; None: no limit
    timeout: float | None  # seconds a call may take; None: no limit
    retries: int  # 0
    retry_backoff: float  # 0.1 s, doubled each retry
    pure: bool  # False
    resources: Mapping[str, Any] | None  # {}
    stateful: bool  # False


OPTIONS = tuple(Options.__annotations__)


class Tool:
    """A function the planner may call, with its limits. Calling it calls the function."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        _signature: inspect.Signature | None = None,
        **options: Unpack[Options],
    ) -> None:
        if unknown := set(options) - set(OPTIONS):
            raise TypeError(f"Tool() got an unexpected keyword argument {min(unknown)!r}")
        self.fn = fn
        self.name = options.get("name") or fn.__name__
        doc = inspect.cleandoc(fn.__doc__ or "").split("\n\n")[0]
        self.description = options.get("description") or doc
        self.max_concurrency = options.get("max_concurrency")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ToolError(f"tool {fn.__name__}: max_concurrency must be at least 1")
        self.timeout = options.get("timeout")
        self.retries = options.get("retries", 0)
        if self.retries < 0:
            raise ToolError(f"tool {fn.__name__}: retries must not be negative")
        self.retry_backoff = options.get("retry_backoff", 0.1)
        # Pure: the result depends on the arguments only, calling has no effect (shared.py).
        self.pure = options.get("pure", False)
        # What one call needs where it runs (`num_cpus`, `num_gpus`, `memory` in bytes, or a
        # custom resource, also as `custom={...}`): the ray backend asks the cluster for it.
        self.resources = _check_resources(fn.__name__, options.get("resources") or {})
        # Stateful: it keeps a loaded model, a connection: the ray backend's one actor runs it.
        self.stateful = options.get("stateful", False)
        self.is_async = inspect.iscoroutinefunction(fn)
        try:  # string annotations (`from __future__ import annotations`) name types in fn's module
            self._signature = _signature or inspect.signature(fn, eval_str=True)
        except Exception as e:
            raise ToolError(
                f"tool {self.name}: cannot read its type hints: {type(e).__name__}: {e}"
            ) from None
        self._positional: list[str] = []
        self._var_positional: str | None = None  # the name of *args, which takes a list
        self._var_keyword = False
        fields: dict[str, Any] = {}
        annotations: dict[str, Any] = {}
        self._defaults: dict[str, Any] = {}  # what the arguments model fills in
        for i, (pname, p) in enumerate(self._signature.parameters.items()):
            if p.kind is p.VAR_KEYWORD:
                self._var_keyword = True
                continue
            ann = Any if p.annotation is p.empty else p.annotation
            default = ... if p.default is p.empty else p.default
            if p.kind is p.VAR_POSITIONAL:
                self._var_positional = pname
                ann, default = list[ann], []  # type: ignore[valid-type]
            annotations[pname] = ann
            if default is not ...:
                self._defaults[pname] = default
            # Internal field names avoid clashes with BaseModel attributes ("json", "copy").
            fields[f"p{i}"] = (ann, pydantic.Field(default, alias=pname, title=pname))
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                self._positional.append(pname)
        # Called with keywords only, unless *args or positional-only parameters forbid it.
        self._call_positionally = self._var_positional is not None or any(
            p.kind is p.POSITIONAL_ONLY for p in self._signature.parameters.values()
        )
        config = pydantic.ConfigDict(
            arbitrary_types_allowed=True, extra="allow" if self._var_keyword else "forbid"
        )
        self._model: type[pydantic.BaseModel] = pydantic.create_model(  # type: ignore[call-overload]
            f"{self.name}_arguments", __config__=config, **fields
        )
        self._names = {f"p{i}": n for i, n in enumerate(self._signature.parameters)}
        self._required = [n for n in annotations if n not in self._defaults]
        # Built now, not on first use: a run should not pay pydantic's schema build.
        self._adapters = {n: _type_adapter(ann) for n, ann in annotations.items()}
        # Per parameter, the types whose values pydantic hands on as they are (a list or dict
        # as a shallow copy): such a value needs no validator call (see `validate`, which
        # then fills in the defaults itself: not a mutable one, which the model copies).
        self._as_is = {n: _as_is(ann) for n, ann in annotations.items()}
        self._fills = all(type(d) in _PLAIN[:4] or d is None for d in self._defaults.values())
        self._schema: dict[str, Any] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def options(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this tool around the same function."""
        return {k: getattr(self, k) for k in OPTIONS}

    def renamed(self, name: str) -> Tool:
        """The same tool, limits included, under another name."""
        if name == self.name:
            return self
        return Tool(self.fn, **{**self.options(), "name": name})

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as function, options and resolved signature (for a backend that ships it to
        # another process); the validators are built again there rather than pickled. The
        # signature goes along because a function pickled by value keeps only the globals
        # its code uses, not those its string annotations name.
        return (_rebuild, (self.fn, self.options(), self._signature))

    def invoke(self, arguments: dict[str, Any]) -> Any:
        """Call the function with validated arguments (a coroutine, for an async tool)."""
        if not self._call_positionally:
            return self.fn(**arguments)
        kwargs = dict(arguments)
        args = [kwargs.pop(p) for p in self._positional if p in kwargs]
        if self._var_positional is not None:
            args.extend(kwargs.pop(self._var_positional, ()))
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Tool {self.name}{self._signature}>"

    # planner-facing --------------------------------------------------------------------

    def schema(self) -> dict[str, Any]:
        """JSON Schema of the arguments object (a copy: callers may change it)."""
        if self._schema is None:  # built once: every planner prompt of a batch shows it
            schema = self._model.model_json_schema(by_alias=True)
            schema.pop("title", None)
            for prop in schema.get("properties", {}).values():
                prop.pop("title", None)
            self._schema = schema
        return copy.deepcopy(self._schema)

    def signature(self) -> str:
        """`name(param: type, ...)` as the planner prompt shows it, with `/` and `*` markers."""
        params = list(self._signature.parameters.values())
        last_positional_only = max(
            (i for i, p in enumerate(params) if p.kind is p.POSITIONAL_ONLY), default=-1
        )
        parts = []
        star = False
        for i, p in enumerate(params):
            ann = "" if p.annotation is p.empty else f": {_type_name(p.annotation)}"
            default = "" if p.default is p.empty else f" = {p.default!r}"
            prefix = "*" if p.kind is p.VAR_POSITIONAL else "**" if p.kind is p.VAR_KEYWORD else ""
            if p.kind is p.VAR_POSITIONAL:
                star = True
            elif p.kind is p.KEYWORD_ONLY and not star:
                parts.append("*")  # what follows must be named
                star = True
            parts.append(f"{prefix}{p.name}{ann}{default}")
            if i == last_positional_only:
                parts.append("/")  # what comes before cannot be named
        return f"{self.name}({', '.join(parts)})"

    # scheduler-facing ------------------------------------------------------------------

    def bind(self, task: Task) -> dict[str, Any]:
        """Name every argument and check the ones that need no result; raise PlanError if not."""
        if len(task.args) > len(self._positional) and not self._var_positional:
            raise PlanError(
                f"task {task.id} ({self.name}): takes {len(self._positional)} positional "
                f"arguments, {len(task.args)} given",
                line=task.line,
            )
        bound = dict(zip(self._positional, task.args, strict=False))
        extra = task.args[len(self._positional) :]
        if extra and self._var_positional is not None:
            bound[self._var_positional] = list(extra)
        for key, value in task.kwargs.items():
            if key in bound:
                raise self._unfit(task, f"argument {key!r} given twice")
            if key not in self._as_is and not self._var_keyword:
                raise self._unfit(task, f"unknown argument {key!r}")
            bound[key] = value
        for pname in self._required:
            if pname not in bound:
                raise self._unfit(task, f"missing argument {pname!r}")
        for key, value in bound.items():
            as_is = self._as_is.get(key)
            if as_is is None or type(value) in as_is:
                continue  # a **kwargs extra, or valid as it is
            # Values holding a reference are checked at call time, once resolved.
            if not task.deps or not mentions_reference(value):
                try:
                    self._adapters[key].validate_python(value)
                except pydantic.ValidationError as e:
                    raise self._unfit(task, f"argument {key!r}: {_first_error(e)}") from None
        return bound

    def _unfit(self, task: Task, why: str) -> PlanError:
        return PlanError(f"task {task.id} ({self.name}): {why}", line=task.line)

    def validate(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Arguments after pydantic validation (and coercion), ready for the call. Values of
        a type pydantic hands on unchanged skip it (a list or dict copied, as it would)."""
        if self._fills and all(type(v) in self._as_is.get(k, ()) for k, v in arguments.items()):
            out = {**self._defaults, **arguments}
            if len(out) == len(self._as_is):  # every parameter given or defaulted
                return {k: v if type(v) not in (list, dict) else type(v)(v) for k, v in out.items()}
        if not self._names:
            return dict(arguments)
        try:
            model = self._model.model_validate(arguments)
        except pydantic.ValidationError as e:
            raise ValueError(f"invalid arguments for {self.name}: {_first_error(e)}") from None
        out = {self._names[k]: v for k, v in model.__dict__.items()}
        if model.__pydantic_extra__:
            out.update(model.__pydantic_extra__)
        return out


def _rebuild(fn: Callable[..., Any], options: dict[str, Any], signature: inspect.Signature) -> Tool:
    return Tool(fn, **options, _signature=signature)


def _check_resources(name: str, resources: Mapping[str, Any]) -> dict[str, Any]:
    """`resources=` as given, once every amount is a non-negative number."""
    out: dict[str, Any] = {}
    for key, value in resources.items():
        if key == "custom":
            if not isinstance(value, Mapping):
                raise ToolError(f"tool {name}: resources['custom'] must map names to amounts")
            out["custom"] = _check_resources(name, value)
            continue
        if not isinstance(key, str) or not key:
            raise ToolError(f"tool {name}: resource names must be strings")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ToolError(f"tool {name}: resource {key!r} must be a number >= 0, not {value!r}")
        out[key] = value
    return out


def _type_adapter(ann: Any) -> pydantic.TypeAdapter[Any]:
    """A validator for one parameter; plain classes are checked with isinstance, as the
    arguments model does (`arbitrary_types_allowed`)."""
    try:
        return pydantic.TypeAdapter(ann)
    except pydantic.PydanticSchemaGenerationError:
        return pydantic.TypeAdapter(ann, config=pydantic.ConfigDict(arbitrary_types_allowed=True))


# Types whose values pydantic hands on unchanged (a list or dict as a shallow copy).
_PLAIN = (str, int, float, bool, list, dict, type(None))
_UNCHANGED = [(t, (t,)) for t in _PLAIN] + [(Any, _PLAIN), (object, _PLAIN)]


def _as_is(ann: Any) -> tuple[type, ...]:
    """The value types a parameter annotated `ann` takes as they are: a plain type's own,
    or a union's of plain types (a smart union keeps an exact match); else none."""
    parts = get_args(ann) if get_origin(ann) in (Union, UnionType) else (ann,)
    found = [next((ts for t, ts in _UNCHANGED if t is a), None) for a in parts]
    return () if None in found else tuple(t for ts in found if ts is not None for t in ts)


def _type_name(ann: Any) -> str:
    if get_origin(ann) is Annotated:  # Annotated[str, plait.planschema.Span]: show str
        ann = get_args(ann)[0]
    return ann.__name__ if isinstance(ann, type) else str(ann).replace("typing.", "")


def _first_error(e: pydantic.ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"])
    return f"{err['msg']}" + (f" at {loc}" if loc else "")


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...
@overload
def tool(**options: Unpack[Options]) -> Callable[[Callable[..., Any]], Tool]: ...
def tool(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Make a function a tool: `@tool` or `@tool(max_concurrency=4, timeout=10, retries=2)`.

    `pure=True` declares that equal arguments always give an equal result and that calling
    has no side effect: equal calls in a run (or a batch) then run once.
    `resources={"num_cpus": 2, "memory": 2**30, "custom": {"scraper": 1}}` is what one call
    needs on a Ray cluster; `stateful=True` keeps the tool on one Ray actor between calls.
    """
    if unknown := set(options) - set(OPTIONS):  # here, not once the decorator is applied
        raise TypeError(f"tool() got an unexpected keyword argument {min(unknown)!r}")
    return Tool(fn, **options) if fn is not None else lambda f: Tool(f, **options)


class Tools(Mapping[str, Tool]):
    """The tools a run may call, by name."""

    def __init__(
        self, tools: Iterable[Tool | Callable[..., Any]] = (), *, examples: str | None = None
    ) -> None:
        self.examples = examples  # few-shot plans written for these tools, for the planner
        self._tools: dict[str, Tool] = {}
        for t in tools:
            t = t if isinstance(t, Tool) else Tool(t)
            if t.name in self._tools:
                raise ToolError(f"two tools are named {t.name!r}")
            self._tools[t.name] = t

    def __getitem__(self, name: str) -> Tool:
        return self._tools[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tools)

    def __len__(self) -> int:
        return len(self._tools)

    def prepare(self, task: Task) -> Task:
        """The task with arguments bound to parameter names; PlanError if it can never run."""
        t = self._tools.get(task.tool)
        if t is None:
            known = ", ".join(sorted(self._tools)) or "none"
            raise PlanError(
                f"task {task.id}: unknown tool {task.tool!r} (tools: {known})", line=task.line
            )
        if task.args or task.kwargs:
            return Task(task.id, task.tool, (), t.bind(task), task.deps, task.line)
        t.bind(task)
        return task
