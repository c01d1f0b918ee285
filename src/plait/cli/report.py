"""`plait runs`, `plait show`, `plait runs rm|prune`: what a store holds, as text for people
or JSON for tools, and deleting what is no longer wanted.

`runs` and `show` are read-only: they never take a run's lease and never change the store.
`show` rebuilds the run's events from its log (`runlog.replay_events`), so its task table,
its replies, its timeline, its `--json` and its `--trace` are the same views a live run has.
`rm` and `prune` never delete a run that is being run (held), and say what they deleted.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from ..core import events as ev
from ..errors import PlaitError
from ..runs.runlog import replay_events, stored_result
from ..runs.trace import TraceRecorder
from ..stores import RunInfo, Store, open_store
from .terminal import terminal_text


def _say(text: str, err: bool = False) -> None:
    """A line for people: what runs, tools and models wrote in it cannot act on a terminal."""
    click.echo(terminal_text(text, newlines=True), err=err)


def print_runs(store: Store, limit: int, as_json: bool) -> None:
    try:
        infos = store.runs(limit)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps([_summary(i) for i in infos], allow_nan=False))
        return
    if not infos:
        _say(f"no runs in {store.url}", err=True)
        return
    rows = [
        (
            i.id,
            i.state,
            _age(i.updated),
            f"{i.tasks_done}/{i.tasks_total}",
            i.kind,
            _one_line(i.source, 50),
        )
        for i in infos
    ]
    header = ("ID", "STATUS", "AGE", "TASKS", "KIND", "QUESTION / PLAN")
    widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(len(header) - 1)]
    for r in [header, *rows]:
        cells = [str(v).ljust(w) for v, w in zip(r, widths, strict=False)]
        _say("  ".join([*cells, str(r[-1])]).rstrip())


def show_run(store: Store, run_id: str, trace_path: str | None, as_json: bool) -> None:
    try:
        info = store.get(run_id)
        if info is None:
            raise PlaitError(f"no run {run_id} in {store.url}")
        records = list(store.records(run_id))
    finally:
        store.close()
    if trace_path:
        trace = TraceRecorder()
        for e in replay_events(info, records):
            trace(e)
        trace.write(trace_path)
    result = stored_result(info, records)
    if as_json:
        click.echo(result.to_json())
        return
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.created))
    _say(f"run {info.id}: {info.state}, {info.kind}, created {created} ({_age(info.created)})")
    if info.kind == "question":
        _say(f"question: {info.source}")
        _say(f"model: {info.model}")
    _say(f"tools: {', '.join(info.tools)}")
    _say(f"tasks: {info.tasks_done}/{info.tasks_total} done")
    if result.answer is not None:
        _say(f"answer: {result.answer}")
    if info.error:
        _say(f"error: {info.error}")
    _say("\ntasks")
    for t in result.tasks:
        outcome = (
            t.error if t.status != "done" else _one_line(json.dumps(t.result, default=str), 60)
        )
        tries = f" ×{t.attempts}" if t.attempts > 1 else ""
        _say(f"  {t.id:>4}. {t.tool}{tries}  {t.status}  {outcome or ''}".rstrip())
    replies = _replies(replay_events(info, records))
    if replies:
        _say("\nreplies")
        for role, call, text, error in replies:
            head = f"  {role} (call {call})"
            _say(f"{head}: error: {error}" if error else head)
            for said in text.splitlines() or ([] if error else ["(empty)"]):
                _say(f"    │ {said}")
    _say("\ntimeline (seconds since created)")
    for e in replay_events(info, records):
        line = _timeline(e)
        if line is not None:
            _say(f"  {e.t:9.3f}  {line}")


def _replies(events: Any) -> list[tuple[str, int, str, str | None]]:
    """(role, call, text, error) of every model reply the log kept, in call order."""
    roles: dict[int, str] = {}
    out = []
    for e in events:
        match e:
            case ev.LLMStarted(call=c, role=role):
                roles[c] = role
            case ev.LLMFinished(call=c, text=text, error=error):
                out.append((roles.get(c, "llm"), c, text, error))
    return out


def remove_runs(url: str, run_ids: list[str]) -> None:
    """Delete these runs, all or none: a missing or held one is an error and nothing goes.
    Looked for read-only first, so a wrong URL or ID creates no store."""
    store = open_store(url, readonly=True)
    try:
        infos = {i: store.get(i) for i in run_ids}
        missing = [i for i, info in infos.items() if info is None]
        if missing:
            raise PlaitError(f"no run {', '.join(missing)} in {store.url}; nothing deleted")
        _refuse_held([info for info in infos.values() if info is not None])
    finally:
        store.close()
    store = open_store(url)
    try:  # looked at again where it is deleted: a run claimed since is not taken from under it
        gone = store.delete(run_ids, keep=lambda info: _refuse_held([info]))
    finally:
        store.close()
    for run_id in gone:
        _say(run_id)
    _say(f"plait runs rm: deleted {len(gone)} run{'s' * (len(gone) != 1)}", err=True)


def _refuse_held(infos: list[RunInfo]) -> bool:
    """False, unless one of `infos` is held: then `plait runs rm`'s one-line refusal."""
    if held := [i for i in infos if i.held]:
        who = ", ".join(f"{i.id} (held by {i.holder})" for i in held)
        raise PlaitError(f"run {who} is being run now; nothing deleted")
    return False


def prune_runs(url: str, before: float, dry_run: bool) -> None:
    """Delete every run last updated before `before` (unix time) that nobody is running.
    Looked for read-only first: with none to delete, nothing is opened for writing."""
    store = open_store(url, readonly=True)
    try:
        old = [i.id for i in store.runs(ALL) if i.updated < before and not i.held]
    finally:
        store.close()
    gone = old
    if old and not dry_run:
        store = open_store(url)
        try:  # a run resumed since it was looked at (held, or updated) is kept
            gone = store.delete(old, keep=lambda info: info.held or info.updated >= before)
        finally:
            store.close()
    for run_id in gone:
        _say(run_id)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(before))
    verb = "would delete" if dry_run else "deleted"
    n = len(gone)
    _say(f"plait runs prune: {verb} {n} run{'s' * (n != 1)} last updated before {when}", err=True)


ALL = 2**62  # `runs(limit)` for every run


def _timeline(e: ev.Event) -> str | None:
    match e:
        case ev.RunStarted(resumed=resumed):
            return "» resumed" if resumed else "» started"
        case ev.TaskAdded(task=task):
            return f"+ {task.id}. {task.tool}({_one_line(json.dumps(task.arguments()), 60)})"
        case ev.TaskStarted(id=i):
            return f"▶ {i}"
        case ev.TaskRetrying(id=i, attempt=a, error=error):
            return f"↻ {i} retry {a}: {error}"
        case ev.TaskFinished(id=i, status=status, error=error):
            return f"{'✓' if status == 'done' else '✗'} {i} {status}" + (
                f": {error}" if error else ""
            )
        case ev.LLMFinished(call=c, usage=u, error=error):
            tail = f"error: {error}" if error else f"{u.completion_tokens} tokens"
            return f"● llm call {c} {tail}"
        case ev.PlanInvalid(error=error):
            return f"✗ invalid plan: {error}"
        case ev.Replanning(round=r, reason=reason):
            return f"⟳ replan {r}: {reason}"
        case ev.Answered(answer=answer):
            return f"= answer: {_one_line(answer, 70)}"
    return None


def _summary(i: RunInfo) -> dict[str, Any]:
    return {
        "id": i.id,
        "status": i.state,
        "kind": i.kind,
        "created": i.created,
        "updated": i.updated,
        "tasks_done": i.tasks_done,
        "tasks_total": i.tasks_total,
        "question": i.source if i.kind == "question" else None,
        "model": i.model,
        "answer": i.answer,
        "error": i.error,
    }


def _age(t: float) -> str:
    s = max(0.0, time.time() - t)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{int(s // size)}{unit} ago"
    return f"{int(s)}s ago"


def _one_line(text: str, width: int) -> str:
    text = terminal_text(" ".join(text.split()))
    return text if len(text) <= width else text[: width - 1] + "…"
