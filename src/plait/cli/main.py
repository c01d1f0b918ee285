"""The command line: a thin shell over the Python API (`plait exec`, `run`, `resume`, `batch`,
`runs`, `show`).

Contracts: exit 0 on success, 1 when the run ended with a failed task or no answer, 2 on
invalid input (one line on stderr, no traceback unless --debug), 130 when interrupted.
Invalid input is found before anything runs: flags, output paths (`--trace`, `--out`), the
plan's bytes, the tools file. `--json` prints exactly one JSON value on stdout, strict JSON
(a float that is not finite is null); otherwise a live view goes to stderr and the answer to
stdout, so `plait run ... > answer.txt` does what it says.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import re
import shlex
import signal
import sys
import time
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import click

from .. import api
from ..agent.samples import MAX_SAMPLES
from ..core import events as ev
from ..errors import PlaitError, PlanError
from ..runs.result import RunResult
from ..runs.trace import TraceRecorder
from ..stores import RunExists, default_store_url, open_store, redact_url
from . import mcp as mcp_cli
from .live import LiveView
from .mcp import tools_option as _tools_option
from .terminal import terminal_text

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130

ENVIRONMENT = """\b
Environment:
  PLAIT_STORE      the run store, when --store is not given
  OPENAI_API_KEY   the key for openai: models
  OPENAI_BASE_URL  the server for openai: models, when --base-url is not given
  RAY_ADDRESS      the Ray cluster for --backend ray (RAY_AUTH_TOKEN if it uses tokens)

\b
A plan is numbered tool calls, one a line; $N is task N's result:
  1. search("Eiffel Tower height")
  2. extract_number(text=$1, unit="metres")
The whole syntax (and the JSON form) is in README.md, section "Plans".
"""


def _output_path(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A file plait will write: checked before anything runs, so a run's work is never lost
    to a path it cannot write at the end."""
    if value is None:
        return None
    path = Path(value)
    parent = path.parent
    if path.is_dir():
        raise click.BadParameter(f"{value} is a directory")
    if not parent.is_dir():
        raise click.BadParameter(f"{value}: directory {parent} does not exist")
    if path.exists() and not os.access(path, os.W_OK):
        raise click.BadParameter(f"{value} is not writable")
    if not path.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise click.BadParameter(f"{value}: cannot create a file in {parent}")
    return value


def _text_arg(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A command-line string that must be text: argv bytes that are not UTF-8 are refused."""
    if value is None:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(value)
        e = _utf8_error(raw)
        raise click.BadParameter(
            f"not UTF-8: byte 0x{raw[e.start]:02x} at offset {e.start}"
        ) from None
    if param.name == "run_id" and (not value or any(not c.isprintable() for c in value)):
        raise click.BadParameter(f"{value!r}: a run id is printable text, not empty")
    return value


def _text_args(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    return tuple(_text_arg(ctx, param, v) or "" for v in values)


DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    """`7d`, `12h`, `30m`, `45s`, `2w` (or several: `1d12h`) in seconds."""
    text = value.strip().lower()
    parts = DURATION.findall(text)
    if not parts or DURATION.sub("", text).strip():
        raise click.BadParameter(f"{value!r} is not an age: use e.g. 30s, 15m, 12h, 7d, 2w")
    seconds = sum(float(n) * SECONDS[unit] for n, unit in parts)
    if not seconds <= time.time():  # inf too: no run, nor unix time, is older than 1970
        raise click.BadParameter(f"{value!r} is older than the epoch (1970): use a smaller age")
    return seconds


def _utf8_error(raw: bytes) -> UnicodeDecodeError:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return e
    raise AssertionError("valid UTF-8")


def _store_option(
    help: str = "Run store: sqlite:///PATH.db, postgresql://…, memory:// "
    "[default: $PLAIT_STORE, else runs.db in the user data directory].",
) -> Any:
    return click.option("--store", "store_url", default=None, metavar="URL", help=help)


def _trace_option(help: str) -> Any:
    return click.option(
        "--trace",
        "trace_path",
        type=click.Path(dir_okay=False),
        default=None,
        callback=_output_path,
        help=help,
    )


def _run_id_option(help: str) -> Any:
    return click.option("--run-id", default=None, metavar="ID", callback=_text_arg, help=help)


_model_option = click.option(
    "--model",
    default=api.DEFAULT_MODEL,
    show_default=True,
    metavar="SPEC",
    help="local[:FILE.gguf], openai:MODEL, ollama:MODEL, or replay:FILE?ttft=S&tps=N.",
)


def _backend_option(f: Any) -> Any:
    return click.option(
        "--backend",
        type=click.Choice(["local", "ray"]),
        default="local",
        show_default=True,
        help="Where tools run: this process (threads), or a Ray cluster: $RAY_ADDRESS, "
        "else a new local one (needs plait[ray]).",
    )(f)


def _durable(f: Any) -> Any:
    f = _run_id_option("Name the run (default: a random id).")(f)
    return _store_option()(f)


def _sampling(f: Any) -> Any:
    f = click.option(
        "--max-tokens",
        default=None,
        type=click.IntRange(min=1),
        metavar="N",
        help="At most N tokens in each model reply [default: the model's own bound].",
    )(f)
    return click.option(
        "--temperature",
        default=None,
        type=click.FloatRange(0.0, 2.0),
        metavar="T",
        help="Sampling temperature of every model call [default: 0].",
    )(f)


def _speedups(f: Any, samples: bool = False) -> Any:
    """--plan-cache and --draft-model (run, batch); --samples, --agree, --judge (run)."""
    if samples:
        f = click.option(
            "--judge",
            default=None,
            metavar="SPEC",
            help="A model that breaks a tie between sampled answers [default: the first given].",
        )(f)
        f = click.option(
            "--agree",
            default=None,
            type=click.IntRange(min=1),
            metavar="K",
            help="Stop as soon as K attempts give one answer [default: a majority of N].",
        )(f)
        f = click.option(
            "--samples",
            default=1,
            show_default=True,
            type=click.IntRange(min=1, max=MAX_SAMPLES),
            metavar="N",
            help="Run N attempts at once, sharing pure tool calls, and vote on their answers.",
        )(f)
    f = click.option(
        "--draft-model",
        default=None,
        metavar="SPEC",
        help="A fast model whose plan's pure calls start while the planner thinks "
        "(`question`: the question's own names, no model).",
    )(f)
    return click.option(
        "--plan-cache",
        is_flag=True,
        help="Reuse the plan of an earlier question of the same shape (kept in the store).",
    )(f)


def _sampled_speedups(f: Any) -> Any:
    return _speedups(f, samples=True)


def _verbose(f: Any) -> Any:
    return click.option(
        "-v",
        "--verbose",
        is_flag=True,
        help="Show the planner's and the joiner's replies, line by line as they stream.",
    )(f)


def _common(f: Any) -> Any:
    f = click.option("--debug", is_flag=True, help="Show tracebacks.")(f)
    f = _trace_option("Write a Chrome trace-event JSON file (open it in Perfetto).")(f)
    f = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")(f)
    f = _tools_option(f)
    return _backend_option(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=ENVIRONMENT)
@click.version_option(None, "-V", "--version", package_name="plait")
def cli() -> None:
    """Compile agent work into a task graph and run it in parallel."""


@cli.command("exec")
@click.argument("plan", metavar="PLAN")
@_common
@_durable
def exec_cmd(
    plan: str,
    tools: tuple[str, ...],
    as_json: bool,
    trace_path: str | None,
    debug: bool,
    store_url: str | None,
    run_id: str | None,
    backend: str,
) -> int:
    """Run the plan in file PLAN (or - for stdin) without a planner."""
    text = _read_plan(plan)
    try:
        return _drive_new(
            functools.partial(api.aexecute, text),
            Again(tools, store_url, backend),
            as_json,
            trace_path,
            run_id,
        )
    except PlanError as e:
        raise PlaitError(f"{plan}: {e}") from None


@cli.command("run")
@click.argument("question", callback=_text_arg)
@_common
@_verbose
@_model_option
@click.option(
    "--base-url", default=None, help="Server URL for openai: models (else OPENAI_BASE_URL)."
)
@click.option(
    "--max-replans",
    default=2,
    show_default=True,
    type=click.IntRange(min=0),
    help="How many times the joiner may ask for a new plan.",
)
@_sampling
@_sampled_speedups
@_durable
def run_cmd(
    question: str,
    tools: tuple[str, ...],
    as_json: bool,
    trace_path: str | None,
    debug: bool,
    verbose: bool,
    model: str,
    base_url: str | None,
    max_replans: int,
    temperature: float | None,
    max_tokens: int | None,
    plan_cache: bool,
    draft_model: str | None,
    samples: int,
    agree: int | None,
    judge: str | None,
    store_url: str | None,
    run_id: str | None,
    backend: str,
) -> int:
    """Answer QUESTION: plan with the model, run the tasks as they stream, join."""
    if agree is not None and agree > samples:
        raise click.BadParameter(f"{agree} is more than --samples {samples}", param_hint="--agree")
    start = functools.partial(
        api.arun,
        question,
        model=model,
        base_url=base_url,
        max_replans=max_replans,
        temperature=temperature,
        max_tokens=max_tokens,
        plan_cache=plan_cache,
        draft_model=draft_model,
        samples=samples,
        agree=agree,
        judge=judge,
    )
    return _drive_new(start, Again(tools, store_url, backend), as_json, trace_path, run_id, verbose)


@cli.command("resume")
@click.argument("run_id", metavar="ID")
@_common
@_verbose
@_store_option()
@click.option(
    "--model", default=None, metavar="SPEC", help="Override the model the run was started with."
)
@click.option("--base-url", default=None, help="Override the server URL for openai: models.")
def resume_cmd(
    run_id: str,
    tools: tuple[str, ...],
    as_json: bool,
    trace_path: str | None,
    debug: bool,
    verbose: bool,
    store_url: str | None,
    model: str | None,
    base_url: str | None,
    backend: str,
) -> int:
    """Finish run ID from its store: what it recorded settled is not done again."""
    start = functools.partial(api.aresume, run_id, model=model, base_url=base_url)
    return _drive(start, Again(tools, store_url, backend), as_json, trace_path, verbose)


@cli.command("batch")
@click.argument("input_path", metavar="INPUT.jsonl")
@_tools_option
@_model_option
@click.option("--base-url", default=None, help="Server URL for openai: models.")
@_sampling
@_speedups
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False),
    callback=_output_path,
    help="Where results go, a JSON line per item as it finishes; an existing file is "
    "continued (items already in it are skipped).",
)
@click.option(
    "--concurrency", default=8, show_default=True, type=click.IntRange(min=1), metavar="N"
)
@click.option("--max-replans", default=2, show_default=True, type=click.IntRange(min=0))
@_store_option("Record every item's run, so an interrupted batch resumes items it had begun.")
@_run_id_option("Name the batch (its runs: ID:ITEM).")
@click.option(
    "--llm-slots",
    default=None,
    type=click.IntRange(min=1),
    metavar="N",
    help="At most N model calls in flight (the server's slots), queued in --order.",
)
@click.option(
    "--order",
    type=click.Choice(["prefix", "arrival"]),
    default="prefix",
    show_default=True,
    help="Which queued model call goes next: longest shared prompt prefix, or first come.",
)
@_backend_option
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def batch_cmd(
    input_path: str,
    tools: tuple[str, ...],
    model: str,
    base_url: str | None,
    temperature: float | None,
    max_tokens: int | None,
    plan_cache: bool,
    draft_model: str | None,
    out_path: str,
    concurrency: int,
    max_replans: int,
    store_url: str | None,
    run_id: str | None,
    llm_slots: int | None,
    order: str,
    backend: str,
    debug: bool,
) -> int:
    """Answer every question in INPUT.jsonl (or - for stdin): {"id": ..., "question": ...}
    a line; other fields are kept. Shared work is done once across the batch."""
    from .batch import run_batch

    return run_batch(
        input_path,
        tools=tools,
        model=model,
        base_url=base_url,
        out_path=out_path,
        concurrency=concurrency,
        max_replans=max_replans,
        store=store_url,
        run_id=run_id,
        llm_slots=llm_slots,
        order=order,
        backend=backend,
        temperature=temperature,
        max_tokens=max_tokens,
        plan_cache=plan_cache,
        draft_model=draft_model,
    )


@cli.group("runs", invoke_without_command=True)
@_store_option()
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array of the runs.")
@click.pass_context
def runs_cmd(ctx: click.Context, store_url: str | None, limit: int, as_json: bool) -> int:
    """List recent runs: id, status, age, tasks done/total. `runs rm` and `runs prune`
    delete runs."""
    ctx.obj = store_url
    if ctx.invoked_subcommand is not None:
        return EXIT_OK
    from .report import print_runs

    print_runs(open_store(store_url or default_store_url(), readonly=True), limit, as_json)
    return EXIT_OK


def _runs_store(ctx: click.Context, store_url: str | None) -> str:
    """A `runs` subcommand's store: its own --store, else the one given to `runs`."""
    parent = ctx.parent.obj if ctx.parent is not None else None
    return store_url or parent or default_store_url()


@runs_cmd.command("rm")
@click.argument("run_ids", metavar="ID...", nargs=-1, required=True, callback=_text_args)
@_store_option()
@click.pass_context
def runs_rm_cmd(ctx: click.Context, run_ids: tuple[str, ...], store_url: str | None) -> int:
    """Delete runs ID... and their logs. A run being run now is not deleted; nothing is,
    unless every ID can go."""
    from .report import remove_runs

    remove_runs(_runs_store(ctx, store_url), list(run_ids))
    return EXIT_OK


@runs_cmd.command("prune")
@click.option(
    "--older-than",
    "age",
    required=True,
    metavar="AGE",
    callback=_duration,
    help="Delete runs last updated longer ago than AGE: 30s, 15m, 12h, 7d, 2w. "
    "An AGE reaching before 1970 is an error.",
)
@click.option("--dry-run", is_flag=True, help="Print the runs that would go; delete nothing.")
@_store_option()
@click.pass_context
def runs_prune_cmd(ctx: click.Context, age: float, dry_run: bool, store_url: str | None) -> int:
    """Delete the runs not updated for AGE (a run being run now stays), and their logs."""
    from .report import prune_runs

    prune_runs(_runs_store(ctx, store_url), time.time() - age, dry_run)
    return EXIT_OK


@cli.command("show")
@click.argument("run_id", metavar="ID")
@_store_option()
@_trace_option("Export the run as a Chrome trace-event JSON file.")
@click.option("--json", "as_json", is_flag=True, help="Print the run's result object.")
def show_cmd(run_id: str, store_url: str | None, trace_path: str | None, as_json: bool) -> int:
    """Print run ID's tasks and timeline."""
    from .report import show_run

    show_run(
        open_store(store_url or default_store_url(), readonly=True), run_id, trace_path, as_json
    )
    return EXIT_OK


def _read_plan(path: str) -> str:
    """The plan's text; bytes that are not UTF-8 are an error naming where they are."""
    where = "stdin" if path == "-" else path
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except FileNotFoundError:
        raise PlaitError(f"plan file not found: {path}") from None
    except OSError as e:
        raise PlaitError(f"cannot read plan file {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PlaitError(
            f"{where}: not UTF-8: byte 0x{data[e.start]:02x} at offset {e.start}"
        ) from None


class Again:
    """How to name this run's command again: the flags a resume hint must repeat."""

    def __init__(self, tools: str | tuple[str, ...], store_url: str | None, backend: str) -> None:
        self.tools = (tools,) if isinstance(tools, str) else tools  # each --tools given
        self.store_url = store_url  # as given: None means the default, which a resume uses too
        self.store = store_url or default_store_url()  # the one the run uses
        self.backend = backend

    def flags(self, tools: bool = True) -> str:
        parts = [f" --tools {shlex.quote(t)}" for t in self.tools] if tools else []
        if self.store_url is not None:
            parts.append(f" --store {shlex.quote(redact_url(self.store_url))}")
        if self.backend != "local" and tools:
            parts.append(f" --backend {self.backend}")
        return "".join(parts)

    def resume(self, run_id: str) -> str:
        return f"plait resume {shlex.quote(run_id)}{self.flags()}"

    def show(self, run_id: str) -> str:
        return f"plait show {shlex.quote(run_id)}{self.flags(tools=False)}"


def _taken(store: str, run_id: str | None, again: Again) -> str:
    """Why --run-id cannot name a new run: it names one that is finished, or one to resume."""
    info = None
    with contextlib.suppress(PlaitError):
        opened = open_store(store)
        try:
            info = opened.get(run_id or "")
        finally:
            opened.close()
    rid = run_id or ""
    if info is not None and info.state in ("done", "failed"):
        return (
            f"run {rid} already exists and is finished ({info.state}): see it with "
            f"`{again.show(rid)}`, or choose another --run-id for a new run"
        )
    state = f" ({info.state})" if info is not None else ""
    return f"run {rid} already exists{state}: finish it with `{again.resume(rid)}`"


def _drive_new(
    start: Callable[..., Coroutine[Any, Any, RunResult]],
    again: Again,
    as_json: bool,
    trace_path: str | None,
    run_id: str | None,
    verbose: bool = False,
) -> int:
    """`_drive` a new run (exec, run) named `run_id`: one already taken is a one-line error."""
    try:
        return _drive(functools.partial(start, run_id=run_id), again, as_json, trace_path, verbose)
    except RunExists:
        raise PlaitError(_taken(again.store, run_id, again)) from None


class _Listener:
    """What `_drive` gives a run as its listener: the live view and the trace hear its
    events. Sampled attempts (`--samples`): the live view follows the first attempt as it
    goes, and the trace is rebuilt from the chosen attempt's events after the vote
    (`chosen`), so it is written, and is the answer's run, whichever attempt that is."""

    def __init__(self, trace: TraceRecorder | None, view: LiveView | None) -> None:
        self.trace = trace
        self.view = view
        self.final: list[RunResult] = []

    def __call__(self, e: ev.Event) -> None:
        if self.trace is not None:
            self.trace(e)
        if self.view is not None:
            self.view(e)
        if isinstance(e, ev.RunFinished):
            self.final.append(e.result)

    def chosen(self, events: list[ev.Event]) -> None:
        if self.trace is None:
            return
        self.trace = TraceRecorder()
        for e in events:
            self.trace(e)


def _drive(
    start: Callable[..., Coroutine[Any, Any, RunResult]],
    again: Again,
    as_json: bool,
    trace_path: str | None,
    verbose: bool = False,
) -> int:
    """Run `start` (an api call, given here the run's tools, store, backend and event
    listener) to its end with the live view or --json; its exit code."""
    view = None if as_json else LiveView(verbose)
    on_event = _Listener(TraceRecorder() if trace_path else None, view)
    final = on_event.final

    trace_error: str | None = None
    try:
        try:
            # stdout is the answer's (or the one JSON object's): what tools print while the
            # run goes, here or forwarded from Ray workers, goes to stderr.
            with contextlib.redirect_stdout(sys.stderr):
                result = asyncio.run(
                    start(
                        tools=again.tools,
                        store=again.store,
                        backend=again.backend,
                        on_event=on_event,
                    )
                )
        finally:
            if view is not None:
                view.stop()
            trace = on_event.trace
            if trace is not None and trace_path and trace.events:
                try:
                    trace.write(trace_path)
                except OSError as e:  # checked before the run: it changed since
                    trace_error = f"cannot write the trace to {trace_path}: {e.strerror or e}"
    except KeyboardInterrupt:
        if as_json and final:
            click.echo(final[-1].to_json())
        hint = _resume_hint(final[-1].run_id, again) if final else ""
        click.echo(f"plait: interrupted{hint}", err=True)
        return EXIT_INTERRUPTED
    if as_json:
        click.echo(result.to_json())
    else:
        _summary(result)
    if trace_error is not None:
        click.echo(f"plait: {trace_error}", err=True)
        return EXIT_FAILED
    return EXIT_OK if result.ok else EXIT_FAILED


def _vote_line(result: RunResult) -> str:
    """How a sampled run's vote went, in a line: each attempt's answer (or its fate), the
    chosen one marked, an answer its own plan argues against marked doubted: `samples, by
    plan check: #1 cut short, *#2 423 metres, #3 330 metres (doubted), ...`."""
    parts = []
    for a in result.attempts or []:
        mark = "*" if a["run_id"] is not None and a["run_id"] == result.run_id else ""
        if a["cut_short"]:
            fate = "cut short"
        elif a["answer"] is not None:
            fate = _one_line(a["answer"])[:40] + (" (doubted)" if a.get("doubt") else "")
        else:
            fate = f"failed ({_one_line(a['error'] or 'no answer')[:40]})"
        parts.append(f"{mark}#{a['index'] + 1} {fate}")
    by = (result.savings or {}).get("decided_by", "vote")
    return terminal_text(f"samples, by {by}: {', '.join(parts)}")


def _resume_hint(run_id: str, again: Again) -> str:
    if again.store.startswith("memory:"):
        return ""
    return f"; finish it with: {again.resume(run_id)}"


def _summary(result: RunResult) -> None:
    """The run in a line, then the answer on stdout; a run without one ends, on stderr,
    with the reason in words. An answer its own plan argues against (agent/doubts.py) is
    still the answer, with a line saying why it is doubted."""
    counts: dict[str, int] = {}
    for t in result.tasks:
        counts[t.status] = counts.get(t.status, 0) + 1
    parts = ", ".join(f"{n} {s}" for s, n in counts.items())
    tokens = result.usage.prompt_tokens + result.usage.completion_tokens
    tail = f", {tokens} tokens" if tokens else ""
    n = result.replans
    replans = f", {n} replan{'s' * (n != 1)}" if n else ""
    click.echo(
        f"{result.status}: {len(result.tasks)} tasks ({parts or 'none'}){replans} in "
        f"{result.elapsed:.2f}s{tail}",
        err=True,
    )
    if result.attempts:  # --samples: the live view followed the first attempt only
        click.echo(_vote_line(result), err=True)
    if result.doubt:  # the answer stands, but its own plan argues against it: say so
        click.echo(f"doubt: {_one_line(result.doubt)}", err=True)
    if result.answer is not None:
        click.echo(result.answer)
    if result.error:
        click.echo(f"error: {_one_line(result.error)}", err=True)


def _one_line(text: str) -> str:
    return " ".join(text.split())


@cli.command("serve")
@_tools_option
@click.option(
    "--model",
    default=api.DEFAULT_MODEL,
    show_default=True,
    metavar="SPEC",
    help="The model of question runs that name none.",
)
@_store_option()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8321, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--token",
    default=None,
    envvar="PLAIT_TOKEN",
    metavar="TOKEN",
    help="Bearer token every route but /healthz needs [default: $PLAIT_TOKEN].",
)
def serve_cmd(
    tools: tuple[str, ...],
    model: str,
    store_url: str | None,
    host: str,
    port: int,
    token: str | None,
) -> int:
    """Serve runs over HTTP (/v1/runs, event streams) and the live page at /. Needs plait[serve]."""
    from ..serve import serve

    return serve(tools, model, store_url or default_store_url(), host, port, token)


cli.add_command(mcp_cli.tools_cmd)
cli.add_command(mcp_cli.mcp_cmd)


def _terminate(signum: int, frame: Any) -> None:
    # A deploy's SIGTERM stops the run like Ctrl-C: what is queued for the store is written.
    # Inside asyncio.run that is its SIGINT handler (the first cancels the run, a second
    # interrupts the shutdown); elsewhere, or with SIGINT ignored, a KeyboardInterrupt.
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    if argv is None:  # the `plait` process itself, not a call from Python
        signal.signal(signal.SIGTERM, _terminate)
        # A run holds many small objects for its whole life: collect young ones less often,
        # and never rescan what importing left behind (about 12% of a 50k-task run).
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
    try:
        code = cli.main(args=args, prog_name="plait", standalone_mode=False)
    except click.UsageError as e:
        where = f"plait {e.ctx.info_name}: " if e.ctx and e.ctx.parent else "plait: "
        click.echo(f"{where}{_one_line(e.format_message())}", err=True)
        code = EXIT_INVALID
    except click.Abort:
        code = EXIT_INTERRUPTED
    except PlaitError as e:
        if debug:
            traceback.print_exc()
        click.echo(f"plait: {_one_line(str(e))}", err=True)
        code = EXIT_INVALID
    except KeyboardInterrupt:
        click.echo("plait: interrupted", err=True)
        code = EXIT_INTERRUPTED
    except Exception as e:
        if debug:
            traceback.print_exc()
        click.echo(
            f"plait: internal error: {type(e).__name__}: {_one_line(str(e))} (--debug shows where)",
            err=True,
        )
        code = EXIT_FAILED
    sys.exit(code if isinstance(code, int) else EXIT_OK)


if __name__ == "__main__":
    main()
