"""The server's counters, and their Prometheus text exposition (`GET /metrics`).

Counted from the events of the runs this process ran (so they start at zero with the
process, as Prometheus counters do); the runs by status are read from the store.
"""

from __future__ import annotations

from collections import Counter

from plait import events as ev


class Metrics:
    def __init__(self) -> None:
        self.runs_started = 0
        self.runs_finished: Counter[str] = Counter()
        self.tasks_started = 0
        self.tasks_finished: Counter[str] = Counter()
        self.llm_calls = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.events = 0
        self.stream_clients = 0

    def count(self, e: ev.Event) -> None:
        """Called with each event of each run, restored ones included (not counted)."""
        if getattr(e, "restored", False):
            return
        self.events += 1
        if isinstance(e, ev.TaskStarted):
            self.tasks_started += 1
        elif isinstance(e, ev.TaskFinished):
            self.tasks_finished[e.status] += 1
        elif isinstance(e, ev.LLMFinished):
            self.llm_calls += 1
            self.prompt_tokens += e.usage.prompt_tokens
            self.completion_tokens += e.usage.completion_tokens

    def finished(self, status: str) -> None:
        self.runs_finished[status] += 1

    def text(self, runs_by_status: dict[str, int]) -> str:
        """The exposition: # HELP, # TYPE, then samples; one family at a time."""
        out: list[str] = []

        def family(name: str, kind: str, text: str, samples: list[tuple[str, float]]) -> None:
            out.append(f"# HELP {name} {text}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(f"{name}{labels} {value:g}" for labels, value in samples)

        family(
            "plait_runs",
            "gauge",
            "Runs in the store, by status (running: held by a live process).",
            [(f'{{status="{s}"}}', n) for s, n in sorted(runs_by_status.items())],
        )
        family(
            "plait_runs_started_total",
            "counter",
            "Runs this server started or resumed.",
            [("", self.runs_started)],
        )
        family(
            "plait_runs_finished_total",
            "counter",
            "Runs this server ran to an end, by status.",
            [(f'{{status="{s}"}}', n) for s, n in sorted(self.runs_finished.items())],
        )
        family("plait_tasks_started_total", "counter", "Tasks started.", [("", self.tasks_started)])
        family(
            "plait_tasks_finished_total",
            "counter",
            "Tasks settled, by status.",
            [(f'{{status="{s}"}}', n) for s, n in sorted(self.tasks_finished.items())],
        )
        family("plait_llm_calls_total", "counter", "LLM calls finished.", [("", self.llm_calls)])
        family(
            "plait_llm_tokens_total",
            "counter",
            "LLM tokens, by kind.",
            [
                ('{kind="prompt"}', self.prompt_tokens),
                ('{kind="completion"}', self.completion_tokens),
            ],
        )
        family("plait_events_total", "counter", "Run events emitted.", [("", self.events)])
        family(
            "plait_event_stream_clients",
            "gauge",
            "Event-stream clients connected now.",
            [("", self.stream_clients)],
        )
        return "\n".join(out) + "\n"
