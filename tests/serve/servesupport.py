"""Helpers for the server tests: a real `plait serve` on 127.0.0.1, and httpx helpers.

`Server` starts `plait serve` as a subprocess (port 0 the first time: the server prints the
address it bound; a restart takes the same port, so a page or client can reconnect), reads
its stderr in a thread, and can stop it with SIGTERM or kill it with SIGKILL.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
TOOLS = HERE / "servetools.py"
_SCRIPT = Path(sys.executable).with_name("plait")
PLAIT = (
    [str(_SCRIPT)]
    if _SCRIPT.is_file()
    else [sys.executable, "-c", "from plait.cli import main; main()"]
)
WAIT = 60.0  # the most any wait for a state lasts


class Server:
    def __init__(self, store: str, env: dict[str, str], *extra: str, tools: Path = TOOLS) -> None:
        self.store = store
        self.env = env
        self.extra = list(extra)
        self.tools = tools
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.stderr: list[str] = []
        self.url = ""

    def start(self, *more: str) -> Server:
        args = [*PLAIT, "serve", "--tools", str(self.tools), "--store", self.store]
        args += ["--port", str(self.port), *self.extra, *more]
        self.proc = subprocess.Popen(
            args, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        ready = threading.Event()
        lines = self.stderr
        proc = self.proc

        def read() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                lines.append(line)
                if line.startswith("plait serve: http://"):
                    self.url = line.split()[2].rstrip("/")
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(WAIT) or not self.url:
            self.kill()
            raise AssertionError(f"plait serve did not start: {''.join(lines)}")
        self.port = int(self.url.rsplit(":", 1)[1])
        deadline = time.monotonic() + WAIT
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError(f"plait serve is not healthy: {''.join(lines)}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(WAIT)

    def stop(self) -> int:
        """SIGTERM, as a deploy does; the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(WAIT)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=WAIT, **kwargs)


def open_gate(env: dict[str, str]) -> None:
    Path(env["PLAIT_SERVE_GATE"]).touch()


def ran(env: dict[str, str], run_id: str) -> list[tuple[int, int]]:
    """(pid, task id) of every execution of a logged tool in `run_id`, in order."""
    path = Path(env["PLAIT_SERVE_LOG"])
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        pid, run, task = line.split()
        if run == run_id:
            out.append((int(pid), int(task)))
    return out


def events(
    client: httpx.Client,
    run_id: str,
    last_id: str | None = None,
    until: Any = None,
) -> list[dict[str, Any]]:
    """Read the run's event stream to its end (or until `until(event)` is true): a list of
    {"id", "event", "data"}, data decoded."""
    headers = {"Last-Event-ID": last_id} if last_id is not None else {}
    out: list[dict[str, Any]] = []
    with client.stream("GET", f"/v1/runs/{run_id}/events", headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        frame: dict[str, Any] = {}
        for line in response.iter_lines():
            if not line:
                if "data" in frame:
                    frame["data"] = json.loads(frame["data"])
                    out.append(frame)
                    if until is not None and until(frame):
                        break
                frame = {}
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            frame[field] = value[1:] if value.startswith(" ") else value
    return out


def wait_for(client: httpx.Client, run_id: str, check: Any) -> dict[str, Any]:
    """Poll GET /v1/runs/{id} until check(run) is true; at most WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while True:
        response = client.get(f"/v1/runs/{run_id}")
        if response.status_code == 200 and check(response.json()):
            return response.json()  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"run {run_id} never got there: {response.text}"
        time.sleep(0.05)


def key(event_id: str) -> tuple[int, int]:
    """An event id as the server orders them: S, S.K, S.end."""
    seq, _, k = event_id.partition(".")
    return (int(seq), 1 << 62 if k == "end" else int(k or 0))
