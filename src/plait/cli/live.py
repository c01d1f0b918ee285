"""The live view of a run on stderr: what `plait run` and `plait exec` show while they work.

Tasks as they start and end, with what is running now kept at the bottom of a terminal;
model calls as they stream, the joiner's reply in a line, and with `verbose` every line of
every reply. A view of the event stream only: it keeps nothing the run needs.
"""

from __future__ import annotations

import time
from typing import Any

from ..core import events as ev
from .terminal import terminal_text


class LiveView:
    """Tasks as they start and end, on stderr, with what is running now kept at the bottom.

    Model calls: while one streams, its last line shows at the bottom (on a terminal); when
    the joiner has replied, its reply is printed in a line. `verbose` prints every line of
    every reply, the plan included, as it streams.
    """

    def __init__(self, verbose: bool = False) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(stderr=True, highlight=False)
        self.verbose = verbose
        self.running: dict[int, tuple[str, float]] = {}
        self.llm: dict[int, Reply] = {}
        # Printed in batches: one print per line is slow at 50k tasks. A reply's line is
        # printed whole (soft-wrapped), a task's cut to the terminal's width.
        self._lines: list[tuple[str, bool]] = []
        self._flushed = time.monotonic()
        self.live = Live(
            console=self.console, refresh_per_second=8, transient=True, get_renderable=self._render
        )
        self.live.start()

    def stop(self) -> None:
        self._flush()
        self.live.stop()

    def _flush(self) -> None:
        lines, self._lines = self._lines, []
        start = 0
        for end in range(1, len(lines) + 1):  # a print per run of lines of one kind
            if end == len(lines) or lines[end][1] != lines[start][1]:
                text = "\n".join(line for line, _ in lines[start:end])
                if lines[start][1]:
                    self.console.print(text, soft_wrap=True)
                else:
                    self.console.print(text, no_wrap=True, overflow="ellipsis")
                start = end
        self._flushed = time.monotonic()

    def _print(self, text: str, whole: bool = False) -> None:
        self._lines.append((text, whole))
        if len(self._lines) >= 200 or time.monotonic() - self._flushed > 0.1:
            self._flush()

    def _render(self) -> Any:
        from rich.text import Text

        # Called from rich's refresh thread: iterate over copies.
        lines = []
        for call in list(self.llm.values()):
            last = _one_line(call.partial or call.last)
            last = last if len(last) <= 60 else "…" + last[-59:]
            role = terminal_text(call.role)
            lines.append(f"  … {role} writing ({call.tokens} tokens) {last}".rstrip())
        shown = sorted(list(self.running.items()))[:12]
        lines += [f"  ▶ {i}. {terminal_text(name)}" for i, (name, _) in shown]
        if len(self.running) > len(shown):
            lines.append(f"  … and {len(self.running) - len(shown)} more running")
        return Text("\n".join(lines), style="dim")

    def _reply_lines(self, role: str, lines: list[str]) -> None:
        for line in lines:
            self._print(f"[dim]  {_esc(role)} │[/] {_esc(line)}", whole=True)

    def __call__(self, e: ev.Event) -> None:
        p = self._print
        match e:
            case ev.TaskStarted(t=t, id=i, tool=tool):
                self.running[i] = (tool, t)
            case ev.TaskFinished(id=i, status=status, restored=True):
                p(f"[dim]↺ {i}. {status}, from the store[/]")
            case ev.TaskFinished(t=t, id=i, status=status, result=result, error=error):
                tool, t0 = self.running.pop(i, ("", t))
                if status == "done":
                    text = _one_line(str(result))
                    text = text if len(text) <= 70 else text[:67] + "..."
                    p(f"[green]✓[/] {i}. {_esc(tool)} [dim]{t - t0:.2f}s[/] → {_esc(text)}")
                else:
                    mark = {"failed": "[red]✗[/]", "skipped": "[yellow]-[/]"}.get(
                        status, "[dim]○[/]"
                    )
                    p(f"{mark} {i}. {_esc(tool or 'task')} {status}: {_esc(error or '')}")
            case ev.TaskRetrying(id=i, attempt=a, error=error):
                p(f"[yellow]↻[/] {i}. retry {a}: {_esc(error)}")
            case ev.LLMStarted(restored=True, call=c, role=role):
                self.llm[c] = Reply(role, 0.0, restored=True)
            case ev.LLMStarted(t=t, call=c, role=role):
                self.llm[c] = Reply(role, t)
            case ev.LLMToken(call=c, text=text):
                call = self.llm.get(c)
                if call is not None:
                    call.tokens += 1
                    done = call.feed(text)
                    if self.verbose:
                        self._reply_lines(call.role, done)
            case ev.LLMRetrying(call=c, attempt=a, error=error, delay=d):
                call = self.llm.get(c)
                if call is not None:
                    call.reset()
                p(f"[yellow]↻[/] LLM retry {a} in {d:.1f}s: {_esc(error)}")
            case ev.LLMFinished(t=t, call=c, usage=u, error=error, text=text, restored=restored):
                call = self.llm.pop(c, None) or Reply("llm", t)
                if restored:  # a reply replayed from the store: nothing was asked
                    if self.verbose:
                        p(f"[dim]↺ {_esc(call.role)} reply, from the store[/]")
                        self._reply_lines(call.role, text.splitlines())
                    return
                if self.verbose and call.partial:
                    self._reply_lines(call.role, [call.partial])
                n = u.completion_tokens or call.tokens
                status = f"[red]{_esc(error)}[/]" if error else f"{n} tokens"
                line = f"[cyan]●[/] {_esc(call.role)} {t - call.started:.2f}s, {status}"
                if call.role == "joiner" and not error and not self.verbose:
                    reply = _one_line(text)
                    reply = reply if len(reply) <= 300 else reply[:299] + "…"
                    p(f"{line}: {_esc(reply)}", whole=True)
                else:
                    p(line)
            case ev.PlanInvalid(error=error):
                p(f"[red]✗ invalid plan:[/] {_esc(error)}", whole=True)
            case ev.Replanning(round=r, reason=reason):
                p(f"[magenta]⟳ replan {r}:[/] {_esc(reason)}", whole=True)
            case _:
                pass


class Reply:
    """A model call the live view is showing: its reply so far, split in lines."""

    __slots__ = ("last", "partial", "restored", "role", "started", "tokens")

    def __init__(self, role: str, started: float, restored: bool = False) -> None:
        self.role = role
        self.started = started
        self.restored = restored
        self.tokens = 0
        self.partial = ""  # the line being written
        self.last = ""  # the last whole line

    def feed(self, text: str) -> list[str]:
        """Add streamed text; return the lines it completed."""
        *done, self.partial = (self.partial + text).split("\n")
        if done:
            self.last = done[-1]
        return done

    def reset(self) -> None:
        """The reply was lost and is asked for again: what streamed so far is not the reply."""
        self.partial = self.last = ""


def _esc(text: str) -> str:
    """Tool- or model-derived text as rich markup: no markup of its own, no control codes."""
    from rich.markup import escape

    return escape(terminal_text(text))


def _one_line(text: str) -> str:
    return terminal_text(" ".join(text.split()))
