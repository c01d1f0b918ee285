"""`plait batch`: the shell around `batch.abatch` — input lines in, output lines out, progress.

The output file is the batch's record for the user: a line per item, written and flushed as
each item finishes, so a batch killed at any point loses no finished item, and started again
on the same file it skips the items already there (a last line cut by the kill is dropped and
its item done again) and the bad input lines already reported (by their `bad_line`; only on
plait's own bad-line records, never an item's field of that name). Exit 0
when every item is done, 1 when some failed, 130 interrupted.

Input lines are read as bytes and decoded one by one: a line that is not UTF-8, not JSON
(NaN, Infinity and 1e999 included: no output line could carry them) or nested too deeply is
a failed item naming its line, and the batch goes on; a blank line is no item.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import click

from ..batch import BLANK, BadItem, BatchStats, abatch
from ..errors import PlaitError
from ..runs.loading import load_tools
from ..runs.result import finite


def run_batch(
    input_path: str,
    *,
    tools: str | tuple[str, ...],
    model: str,
    base_url: str | None,
    out_path: str,
    concurrency: int,
    max_replans: int,
    store: str | None,
    run_id: str | None,
    llm_slots: int | None = None,
    order: str = "prefix",
    backend: str = "local",
    temperature: float | None = None,
    max_tokens: int | None = None,
    plan_cache: bool = False,
    draft_model: str | None = None,
) -> int:
    if input_path != "-" and not Path(input_path).is_file():
        raise PlaitError(f"input file not found: {input_path}")
    registry = load_tools(tools)
    out = Path(out_path)
    written, written_lines = _written(out)
    total = None if input_path == "-" else _count_lines(Path(input_path))
    stats = BatchStats()
    already = len(written) + len(written_lines)
    if already:
        click.echo(f"plait batch: {out} has {already} items already; skipping them", err=True)
    progress = Progress(stats, total, already)

    async def main() -> None:
        ticker = asyncio.create_task(progress.tick())
        try:
            # A lone surrogate from an input's \udcxx escape goes out as that escape again.
            with out.open("a", encoding="utf-8", errors="backslashreplace") as sink:
                async for result in abatch(
                    _items(input_path),
                    tools=registry,
                    model=model,
                    base_url=base_url,
                    concurrency=concurrency,
                    store=store,
                    run_id=run_id,
                    skip=written,
                    skip_positions=written_lines,
                    label=f"{input_path} line",
                    max_replans=max_replans,
                    stats=stats,
                    llm_slots=llm_slots,
                    order=order,
                    backend=backend,
                    temperature=temperature,
                    max_tokens=max_tokens,
                    plan_cache=plan_cache,
                    draft_model=draft_model,
                ):
                    sink.write(_line(result.to_dict()) + "\n")
                    sink.flush()
                    progress.update()
        finally:
            ticker.cancel()

    try:
        try:
            with contextlib.redirect_stdout(sys.stderr):  # stdout is for the summary
                asyncio.run(main())
        finally:
            progress.stop()
    except KeyboardInterrupt:
        click.echo(f"plait batch: interrupted; run it again on {out} to finish", err=True)
        return 130
    click.echo(json.dumps(stats.to_dict()))
    click.echo(f"plait batch: {_summary(stats)}", err=True)
    return 1 if stats.failed else 0


def _line(record: dict[str, Any]) -> str:
    """An output line: strict JSON (a float that is not finite, NaN or Infinity, is null)."""
    return json.dumps(finite(record), ensure_ascii=False, default=str, allow_nan=False)


def _items(path: str) -> Iterator[Any]:
    """Each line parsed, lazily (a million lines are never all in memory); a bad line is a
    BadItem in its place and a blank one BLANK, so every line keeps its number."""
    stream: BinaryIO = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    try:
        for n, raw in enumerate(stream, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield BadItem(f"{path} line {n}: not UTF-8 ({e.reason} at byte {e.start + 1})")
                continue
            if not line.strip():
                yield BLANK
                continue
            try:
                yield json.loads(line, parse_constant=_not_json, parse_float=_finite)
            except ValueError as e:
                yield BadItem(f"{path} line {n}: not JSON ({e})")
            except RecursionError:
                yield BadItem(f"{path} line {n}: nested too deeply")
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: valid JSON, but no output could carry it
        raise ValueError(f"{text} is out of range")
    return value


def _written(out: Path) -> tuple[list[Any], set[int]]:
    """Ids of the items already in the output file, and the input lines it already reports
    as bad (by their `bad_line`); a last line cut short by a kill is cut off the file."""
    ids: list[Any] = []
    bad_lines: set[int] = set()
    if not out.exists():
        return ids, bad_lines
    good = 0  # bytes of whole, valid lines
    with out.open("rb") as f:
        lines = f.read().splitlines(keepends=True)
    for n, raw in enumerate(lines, 1):
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        if record is None or not raw.endswith(b"\n"):
            if n < len(lines):  # not what a kill leaves: never cut a user's data
                raise PlaitError(f"{out} line {n} is not a result line; fix or move the file")
            break
        if isinstance(record, dict):
            if _is_bad_line(record):
                bad_lines.add(record["bad_line"])
            elif record.get("id") is not None:
                ids.append(record["id"])
        good += len(raw)
    if good < out.stat().st_size:
        with out.open("r+b") as f:
            f.truncate(good)
    return ids, bad_lines


# The keys of the line `batch` writes for a bad input line: it carries none of the item's
# fields, so an item's own field named `bad_line` never makes its line one.
_BAD_LINE_KEYS = frozenset({"id", "status", "answer", "error", "usage", "bad_line"})


def _is_bad_line(record: dict[str, Any]) -> bool:
    """Whether an output line is plait's report of a bad input line (not an item's result
    that happens to have a field called `bad_line`): only its keys, failed, no answer, and
    an error naming that very line ("FILE line N: ...")."""
    line, error = record.get("bad_line"), record.get("error")
    return (
        set(record) == _BAD_LINE_KEYS
        and type(line) is int
        and record.get("status") == "failed"
        and record.get("answer") is None
        and isinstance(error, str)
        and f" line {line}: " in error
    )


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def _summary(s: BatchStats) -> str:
    tokens = s.usage.prompt_tokens + s.usage.completion_tokens
    return (
        f"{s.done} done, {s.failed} failed; tool calls {s.tool_calls_made:,} made of "
        f"{s.tool_calls_requested:,} requested; LLM calls {s.llm_calls_made:,} made of "
        f"{s.llm_calls_requested:,} requested; {tokens:,} tokens; {s.wall:.2f}s"
    )


class Progress:
    """Where the batch is: done, failed, in flight, the rate, an ETA, tokens, elapsed time.

    A rich progress bar on a terminal, redrawn by `tick` every half second so that it moves
    before the first item ends; a plain line every 10 s otherwise (logs, CI).
    """

    EVERY = 10.0  # seconds between plain lines

    def __init__(self, stats: BatchStats, total: int | None, already: int) -> None:
        self.stats = stats
        self.total = total
        self.already = already
        self.tty = sys.stderr.isatty()
        self._last = time.monotonic()
        self._bar: Any = None
        if self.tty:
            from rich.progress import BarColumn, Progress, TextColumn

            self._bar = Progress(
                TextColumn("[bold]batch"),
                BarColumn(),
                TextColumn("{task.completed:,}/{task.total:,}" if total else "{task.completed:,}"),
                TextColumn("{task.fields[line]}"),
                transient=False,
            )
            self._task = self._bar.add_task(
                "batch", total=total, completed=already, line=self.line()
            )
            self._bar.start()

    def line(self) -> str:
        s = self.stats
        wall = s.wall
        finished = s.done + s.failed
        parts = [f"{s.done:,} done", f"{s.failed:,} failed", f"{s.running:,} in flight"]
        if finished:
            rate = finished / max(wall, 1e-9)
            parts.append(_rate(rate))
            if self.total is not None:
                left = max(self.total - self.already - finished, 0)
                parts.append(f"ETA {_clock(left / rate)}")
        tokens = s.usage.prompt_tokens + s.usage.completion_tokens
        parts += [f"{tokens:,} tokens", f"{_clock(wall)} elapsed"]
        return ", ".join(parts)

    def update(self) -> None:
        if self._bar is not None:
            done = self.already + self.stats.done + self.stats.failed
            self._bar.update(self._task, completed=done, line=self.line())
        elif time.monotonic() - self._last >= self.EVERY:
            self._last = time.monotonic()
            click.echo(f"plait batch: {self.line()}", err=True)

    async def tick(self, every: float = 0.5) -> None:
        """Refresh the view while the batch runs, items finishing or not (cancel to stop)."""
        while True:
            await asyncio.sleep(every)
            self.update()

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _rate(per_second: float) -> str:
    """Items a second, or a minute or an hour when that reads better than 0.0/s."""
    for unit, size in (("s", 1), ("min", 60), ("h", 3600)):
        if round(per_second * size, 1) >= 1 or unit == "h":
            return f"{per_second * size:.1f}/{unit}"
    raise AssertionError


def _clock(seconds: float) -> str:
    """1h02m, 3m20s, 45s."""
    s = int(seconds + 0.5)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"
