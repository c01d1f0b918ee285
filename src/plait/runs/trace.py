"""Chrome trace-event JSON (opens in Perfetto or chrome://tracing), built from run events.

One slice per task run and per LLM call. Tasks are packed onto lanes so that slices that
overlap in time sit on different rows: the parallelism of a run is visible at a glance.
"""

from __future__ import annotations

import heapq
import json
from pathlib import Path
from typing import Any

from ..core import events as ev

PID = 1
LLM_LANE = 1


def _us(t: float) -> float:
    return round(t * 1e6, 1)


class TraceRecorder:
    """A listener that keeps the slices; `write(path)` saves them."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._tasks: dict[int, tuple[float, str, int]] = {}
        self._calls: dict[int, tuple[float, str]] = {}
        self._free: list[int] = []  # lanes free for reuse, lowest first
        self._lanes = 0
        self.run_id = ""

    def __call__(self, e: ev.Event) -> None:
        match e:
            case ev.RunStarted(run_id=run_id):
                self.run_id = run_id
            case ev.TaskStarted(t=t, id=i, tool=tool):
                lane = heapq.heappop(self._free) if self._free else self._new_lane()
                self._tasks[i] = (t, tool, lane)
            case ev.TaskFinished(t=t, id=i, status=status, error=error):
                started = self._tasks.pop(i, None)
                if started is None:  # settled without running (skipped, cancelled)
                    self._instant(t, f"{i} {status}", {"error": error})
                    return
                t0, tool, lane = started
                heapq.heappush(self._free, lane)
                args = {"status": status, **({"error": error} if error else {})}
                self._slice(f"{i}. {tool}", "task", t0, t, lane + LLM_LANE + 1, args)
            case ev.TaskRetrying(t=t, id=i, attempt=a, error=error):
                self._instant(t, f"{i} retry {a}", {"error": error})
            case ev.LLMStarted(t=t, call=c, role=role, model=model):
                self._calls[c] = (t, f"{role} ({model})")
            case ev.LLMFinished(t=t, call=c, usage=u, error=error):
                t0, name = self._calls.pop(c, (t, "llm"))
                info: dict[str, Any] = {
                    "prompt_tokens": u.prompt_tokens,
                    "completion_tokens": u.completion_tokens,
                }
                if error:
                    info["error"] = error
                self._slice(name, "llm", t0, t, LLM_LANE, info)
            case ev.LLMRetrying(t=t, call=c, attempt=a, error=error):
                self._instant(t, f"llm retry {a}", {"error": error}, LLM_LANE)
            case ev.Replanning(t=t, round=r, reason=reason):
                self._instant(t, f"replan {r}", {"reason": reason}, LLM_LANE)
            case _:
                pass

    def _new_lane(self) -> int:
        self._lanes += 1
        return self._lanes

    def _slice(
        self, name: str, cat: str, t0: float, t1: float, tid: int, args: dict[str, Any]
    ) -> None:
        self.events.append(
            {
                "name": name,
                "cat": cat,
                "ph": "X",
                "ts": _us(t0),
                "dur": _us(t1 - t0),
                "pid": PID,
                "tid": tid,
                "args": args,
            }
        )

    def _instant(self, t: float, name: str, args: dict[str, Any], tid: int = 0) -> None:
        self.events.append(
            {"name": name, "ph": "i", "s": "t", "ts": _us(t), "pid": PID, "tid": tid, "args": args}
        )

    def to_dict(self) -> dict[str, Any]:
        meta: list[dict[str, Any]] = [
            {
                "name": "process_name",
                "ph": "M",
                "pid": PID,
                "args": {"name": f"plait run {self.run_id}"},
            },
            {"name": "thread_name", "ph": "M", "pid": PID, "tid": 0, "args": {"name": "events"}},
            {
                "name": "thread_name",
                "ph": "M",
                "pid": PID,
                "tid": LLM_LANE,
                "args": {"name": "llm"},
            },
        ]
        for lane in range(1, self._lanes + 1):
            meta.append(
                {
                    "name": "thread_name",
                    "ph": "M",
                    "pid": PID,
                    "tid": lane + LLM_LANE + 1,
                    "args": {"name": f"tasks {lane}"},
                }
            )
        return {"traceEvents": meta + self.events, "displayTimeUnit": "ms"}

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))
