"""`plait exec` and `plait run`: a thin shell over the Python API.

Contracts: exit 0 on success, 1 when the run ended with a failed task or no answer, 2 on
invalid input (one line on stderr, no traceback unless --debug), 130 when interrupted.
`--json` prints exactly one JSON object on stdout; otherwise a live view goes to stderr and
the answer to stdout, so `plait run ... > answer.txt` does what it says.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import click

from . import api
from . import events as ev
from .errors import PlaitError, PlanError
from .result import RunResult
from .stores import default_store_url, open_store
from .trace import TraceRecorder

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130


def _store_option(f: Any) -> Any:
    return click.option(
        "--store",
        "store_url",
        default=None,
        metavar="URL",
        help="Run store: sqlite:///PATH.db, postgresql://…, memory:// "
        "[default: $PLAIT_STORE, else runs.db in the user data directory].",
    )(f)


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
    f = click.option(
        "--run-id", default=None, metavar="ID", help="Name the run (default: a random id)."
    )(f)
    return _store_option(f)


def _common(f: Any) -> Any:
    f = click.option("--debug", is_flag=True, help="Show tracebacks.")(f)
    f = click.option(
        "--trace",
        "trace_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="Write a Chrome trace-event JSON file (open it in Perfetto).",
    )(f)
    f = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")(f)
    f = click.option(
        "--tools",
        required=True,
        metavar="TOOLS",
        help="A .py file or importable module; its @plait.tool functions are used.",
    )(f)
    return _backend_option(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="plait")
def cli() -> None:
    """Compile agent work into a task graph and run it in parallel."""


@cli.command("exec")
@click.argument("plan", metavar="PLAN")
@_common
@_durable
def exec_cmd(
    plan: str,
    tools: str,
    as_json: bool,
    trace_path: str | None,
    debug: bool,
    store_url: str | None,
    run_id: str | None,
    backend: str,
) -> int:
    """Run the plan in file PLAN (or - for stdin) without a planner."""
    text = _read_plan(plan)
    store = store_url or default_store_url()
    try:
        return _drive(
            lambda on_event: api.aexecute(
                text,
                tools=tools,
                on_event=on_event,
                store=store,
                run_id=run_id,
                backend=backend,
            ),
            as_json,
            trace_path,
            store,
        )
    except PlanError as e:
        raise PlaitError(f"{plan}: {e}") from None


@cli.command("run")
@click.argument("question")
@_common
@click.option(
    "--model",
    default=api.DEFAULT_MODEL,
    show_default=True,
    metavar="SPEC",
    help="local[:FILE.gguf], openai:MODEL, or replay:FILE?ttft=S&tps=N.",
)
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
@_durable
def run_cmd(
    question: str,
    tools: str,
    as_json: bool,
    trace_path: str | None,
    debug: bool,
    model: str,
    base_url: str | None,
    max_replans: int,
    store_url: str | None,
    run_id: str | None,
    backend: str,
) -> int:
    """Answer QUESTION: plan with the model, run the tasks as they stream, join."""
    store = store_url or default_store_url()
    return _drive(
        lambda on_event: api.arun(
            question,
            tools=tools,
            model=model,
            base_url=base_url,
            max_replans=max_replans,
            on_event=on_event,
            store=store,
            run_id=run_id,
            backend=backend,
        ),
        as_json,
        trace_path,
        store,
    )


@cli.command("resume")
@click.argument("run_id", metavar="ID")
@_common
@_store_option
@click.option(
    "--model", default=None, metavar="SPEC", help="Override the model the run was started with."
)
@click.option("--base-url", default=None, help="Override the server URL for openai: models.")
def resume_cmd(
    run_id: str,
    tools: str,
    as_json: bool,
    trace_path: str | None,
    debug: bool,
    store_url: str | None,
    model: str | None,
    base_url: str | None,
    backend: str,
) -> int:
    """Finish run ID from its store: what it recorded settled is not done again."""
    store = store_url or default_store_url()
    return _drive(
        lambda on_event: api.aresume(
            run_id,
            tools=tools,
            store=store,
            model=model,
            base_url=base_url,
            on_event=on_event,
            backend=backend,
        ),
        as_json,
        trace_path,
        store,
    )


@cli.command("batch")
@click.argument("input_path", metavar="INPUT.jsonl")
@click.option(
    "--tools",
    required=True,
    metavar="TOOLS",
    help="A .py file or importable module; its @plait.tool functions are used.",
)
@click.option("--model", default=api.DEFAULT_MODEL, show_default=True, metavar="SPEC")
@click.option("--base-url", default=None, help="Server URL for openai: models.")
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Where results go, a JSON line per item as it finishes; an existing file is "
    "continued (items already in it are skipped).",
)
@click.option(
    "--concurrency", default=8, show_default=True, type=click.IntRange(min=1), metavar="N"
)
@click.option("--max-replans", default=2, show_default=True, type=click.IntRange(min=0))
@click.option(
    "--store",
    "store_url",
    default=None,
    metavar="URL",
    help="Record every item's run, so an interrupted batch resumes items it had begun.",
)
@click.option("--run-id", default=None, metavar="ID", help="Name the batch (its runs: ID:ITEM).")
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
    tools: str,
    model: str,
    base_url: str | None,
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
    from .batchcli import run_batch

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
    )


@cli.command("runs")
@_store_option
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run, a line each.")
def runs_cmd(store_url: str | None, limit: int, as_json: bool) -> int:
    """List recent runs: id, status, age, tasks done/total."""
    from .report import print_runs

    print_runs(open_store(store_url or default_store_url(), readonly=True), limit, as_json)
    return EXIT_OK


@cli.command("show")
@click.argument("run_id", metavar="ID")
@_store_option
@click.option(
    "--trace",
    "trace_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Export the run as a Chrome trace-event JSON file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the run's result object.")
def show_cmd(run_id: str, store_url: str | None, trace_path: str | None, as_json: bool) -> int:
    """Print run ID's tasks and timeline."""
    from .report import show_run

    show_run(
        open_store(store_url or default_store_url(), readonly=True), run_id, trace_path, as_json
    )
    return EXIT_OK


def _read_plan(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise PlaitError(f"plan file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PlaitError(f"cannot read plan file {path}: {e}") from None


def _drive(start: Any, as_json: bool, trace_path: str | None, store: str | None = None) -> int:
    trace = TraceRecorder() if trace_path else None
    view = None if as_json else LiveView()
    final: list[RunResult] = []

    def on_event(e: ev.Event) -> None:
        if trace is not None:
            trace(e)
        if view is not None:
            view(e)
        if isinstance(e, ev.RunFinished):
            final.append(e.result)

    try:
        try:
            # stdout is the answer's (or the one JSON object's): what tools print while the
            # run goes, here or forwarded from Ray workers, goes to stderr.
            with contextlib.redirect_stdout(sys.stderr):
                result = asyncio.run(start(on_event))
        finally:
            if view is not None:
                view.stop()
            if trace is not None and trace_path and trace.events:
                trace.write(trace_path)
    except KeyboardInterrupt:
        if as_json and final:
            click.echo(final[-1].to_json())
        hint = _resume_hint(final[-1].run_id, store) if final else ""
        click.echo(f"plait: interrupted{hint}", err=True)
        return EXIT_INTERRUPTED
    if as_json:
        click.echo(result.to_json())
    else:
        _summary(result)
    return EXIT_OK if result.ok else EXIT_FAILED


def _resume_hint(run_id: str, store: str | None) -> str:
    if store is None or store.startswith("memory:"):
        return ""
    return f"; finish it with: plait resume {run_id} --tools TOOLS --store {store}"


def _summary(result: RunResult) -> None:
    counts: dict[str, int] = {}
    for t in result.tasks:
        counts[t.status] = counts.get(t.status, 0) + 1
    parts = ", ".join(f"{n} {s}" for s, n in counts.items())
    tokens = result.usage.prompt_tokens + result.usage.completion_tokens
    tail = f", {tokens} tokens" if tokens else ""
    click.echo(
        f"{result.status}: {len(result.tasks)} tasks ({parts or 'none'}) in "
        f"{result.elapsed:.2f}s{tail}",
        err=True,
    )
    if result.error:
        click.echo(f"error: {result.error}", err=True)
    if result.answer is not None:
        click.echo(result.answer)


class LiveView:
    """Tasks as they start and end, on stderr, with what is running now kept at the bottom."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(stderr=True, highlight=False)
        self.running: dict[int, tuple[str, float]] = {}
        self.llm: dict[int, list[Any]] = {}  # call -> [role, started, tokens]
        self._lines: list[str] = []  # printed in batches: one print per line is slow at 50k tasks
        self._flushed = time.monotonic()
        self.live = Live(
            console=self.console, refresh_per_second=8, transient=True, get_renderable=self._render
        )
        self.live.start()

    def stop(self) -> None:
        self._flush()
        self.live.stop()

    def _flush(self) -> None:
        if self._lines:
            text, self._lines = "\n".join(self._lines), []
            self.console.print(text, no_wrap=True, overflow="ellipsis")
        self._flushed = time.monotonic()

    def _render(self) -> Any:
        from rich.text import Text

        # Called from rich's refresh thread: iterate over copies.
        lines = [f"  … {role} writing ({n} tokens)" for role, _, n in list(self.llm.values())]
        shown = sorted(list(self.running.items()))[:12]
        lines += [f"  ▶ {i}. {name}" for i, (name, _) in shown]
        if len(self.running) > len(shown):
            lines.append(f"  … and {len(self.running) - len(shown)} more running")
        return Text("\n".join(lines), style="dim")

    def __call__(self, e: ev.Event) -> None:
        def p(text: str) -> None:
            self._lines.append(text)
            if len(self._lines) >= 200 or time.monotonic() - self._flushed > 0.1:
                self._flush()

        match e:
            case ev.TaskStarted(t=t, id=i, tool=tool):
                self.running[i] = (tool, t)
            case ev.TaskFinished(id=i, status=status, restored=True):
                p(f"[dim]↺ {i}. {status}, from the store[/]")
            case ev.TaskFinished(t=t, id=i, status=status, result=result, error=error):
                tool, t0 = self.running.pop(i, ("", t))
                if status == "done":
                    text = " ".join(str(result).split())
                    text = text if len(text) <= 70 else text[:67] + "..."
                    p(f"[green]✓[/] {i}. {tool} [dim]{t - t0:.2f}s[/] → {_esc(text)}")
                else:
                    mark = {"failed": "[red]✗[/]", "skipped": "[yellow]-[/]"}.get(
                        status, "[dim]○[/]"
                    )
                    p(f"{mark} {i}. {tool or 'task'} {status}: {_esc(error or '')}")
            case ev.TaskRetrying(id=i, attempt=a, error=error):
                p(f"[yellow]↻[/] {i}. retry {a}: {_esc(error)}")
            case ev.LLMStarted(restored=True) | ev.LLMFinished(restored=True):
                pass  # a reply replayed from the store: nothing was asked
            case ev.LLMStarted(t=t, call=c, role=role):
                self.llm[c] = [role, t, 0]
            case ev.LLMToken(call=c):
                if c in self.llm:
                    self.llm[c][2] += 1
            case ev.LLMRetrying(call=c, attempt=a, error=error, delay=d):
                p(f"[yellow]↻[/] LLM retry {a} in {d:.1f}s: {_esc(error)}")
            case ev.LLMFinished(t=t, call=c, usage=u, error=error):
                role, t0, n = self.llm.pop(c, ["llm", t, 0])
                status = f"[red]{_esc(error)}[/]" if error else f"{u.completion_tokens or n} tokens"
                p(f"[cyan]●[/] {role} {t - t0:.2f}s, {status}")
            case ev.PlanInvalid(error=error):
                p(f"[red]✗ invalid plan:[/] {_esc(error)}")
            case ev.Replanning(round=r, reason=reason):
                p(f"[magenta]⟳ replan {r}:[/] {_esc(reason)}")
            case _:
                pass


def _esc(text: str) -> str:
    from rich.markup import escape

    return escape(text)


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
        click.echo(f"{where}{e.format_message()}", err=True)
        code = EXIT_INVALID
    except click.Abort:
        code = EXIT_INTERRUPTED
    except PlaitError as e:
        if debug:
            traceback.print_exc()
        click.echo(f"plait: {e}", err=True)
        code = EXIT_INVALID
    except KeyboardInterrupt:
        click.echo("plait: interrupted", err=True)
        code = EXIT_INTERRUPTED
    except Exception as e:
        if debug:
            traceback.print_exc()
        click.echo(
            f"plait: internal error: {type(e).__name__}: {e} (--debug shows where)", err=True
        )
        code = EXIT_FAILED
    sys.exit(code if isinstance(code, int) else EXIT_OK)


if __name__ == "__main__":
    main()
