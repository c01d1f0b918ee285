"""`plait serve` under load, on loopback only, bounded: fan-out, many runs, overhead per run.

Starts `plait serve` (a subprocess on 127.0.0.1, a fresh SQLite store in a temp dir) with
bench tools written to that dir: `tick(name, ms)` sleeps and returns, `gate()` waits for a
file. Clients are minimal raw-socket SSE readers (HTTP/1.0, no library), one asyncio task
each, in this process.

1. Fan-out: one run (a gate, then 4 chains of 25 `tick`s), 200 event-stream clients. All
   connect while the run waits at its gate (the server's own gauge says 200), then the gate
   opens. Every client must receive every event, in order (the same id sequence, strictly
   increasing, ending with run_finished). Delay = a client's receive time minus the event's
   emit time (`created + t`, both this machine's wall clock), over every client and event.
2. Many runs: 50 runs at once (the plan below each), one stream client each; each must get
   its whole stream in order. Delays as above, and the wall time of the 50.
3. Overhead per run: the same plan, one run at a time, POST to run_finished as a client sees
   it, against `plait exec PLAN --store sqlite:///…` (the run's own `elapsed`, and the
   process's wall time, which includes starting Python and loading plait).

    python bench/serve_load.py [--clients 200] [--runs 50] [--sequential 10] [--exec 5]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

_T = re.compile(rb'"t":(-?[0-9.eE+-]+)')
_FRAME = re.compile(rb"^id: (\S+)$", re.M)

TOOLS = """
import asyncio, os
import plait

@plait.tool
async def tick(name: str, ms: int = 10, after: list | None = None) -> str:
    await asyncio.sleep(ms / 1000)
    return name

@plait.tool
async def gate() -> str:
    while not os.path.exists(os.environ["BENCH_GATE"]):
        await asyncio.sleep(0.01)
    return "open"
"""
_SCRIPT = Path(sys.executable).with_name("plait")
PLAIT = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "plait.cli"]


def chains(chains: int, length: int, first: int = 1, after: int | None = None) -> list[str]:
    lines, n = [], first
    for c in range(chains):
        prev = after
        for i in range(length):
            ref = f", after=[${prev}]" if prev is not None else ""
            lines.append(f'{n}. tick("c{c}s{i}", 10{ref})')
            prev, n = n, n + 1
    return lines


RUN_PLAN = "\n".join(chains(4, 5))  # 20 tasks, 4 chains of 5 ticks of 10 ms


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_server(tmp: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "BENCH_GATE": str(tmp / "gate")}
    args = [*PLAIT, "serve", "--tools", str(tmp / "tools.py"), "--store"]
    args += [f"sqlite:///{tmp / 'runs.db'}", "--host", "127.0.0.1", "--port", "0"]
    proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    if not line.startswith("plait serve: http://"):
        proc.kill()
        raise SystemExit(f"plait serve did not start: {line}{proc.stderr.read()}")
    url = line.split()[2].rstrip("/")
    for _ in range(600):
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.05)
    raise SystemExit("plait serve never became healthy")


async def sse_client(url: str, run_id: str) -> list[tuple[str, Any, float]]:
    """(id, t, receive time) of each event of the run's stream, read to its end; the
    delay is computed after (`delays`), so reading stays as light as it can be."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port), limit=1 << 22)
    writer.write(f"GET /v1/runs/{run_id}/events HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    got: list[tuple[str, Any, float]] = []
    buffer = b""
    while chunk := await reader.read(1 << 16):
        now = time.time()  # one read, one receive time: frames are parsed after
        buffer += chunk
        *frames, buffer = buffer.split(b"\n\n")
        for frame in frames:
            m = _FRAME.search(frame)
            if m is not None:
                got.append((m.group(1).decode(), _T.search(frame), now))
    writer.close()
    return got


def delays(got: list[tuple[str, Any, float]], created: float, since: float = 0.0) -> list[float]:
    """Receive time minus emit time (created + the event's t) of each event emitted after
    `since` (what was emitted before the clients were all there is backlog, not delay)."""
    out = []
    for _, match, now in got:
        emitted = created + (float(match.group(1)) if match else 0.0)
        if emitted >= since:
            out.append(now - emitted)
    return out


def in_order(ids: list[str]) -> bool:
    def key(i: str) -> tuple[int, int]:
        seq, _, k = i.partition(".")
        return (int(seq), 1 << 62 if k == "end" else int(k or 0))

    keys = [key(i) for i in ids]
    return all(a < b for a, b in itertools.pairwise(keys)) and ids[-1].endswith(".end")


async def created_of(client: httpx.AsyncClient, run_id: str) -> float:
    for r in (await client.get("/v1/runs", params={"limit": 1000})).json():
        if r["run_id"] == run_id:
            return float(r["created"])
    raise AssertionError(run_id)


async def fan_out(url: str, tmp: Path, clients: int) -> None:
    plan = "1. gate()\n" + "\n".join(chains(4, 25, first=2, after=1))
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        run_id = (await c.post("/v1/runs", json={"plan": plan})).json()["run_id"]
        created = await created_of(c, run_id)
        tasks = [asyncio.create_task(sse_client(url, run_id)) for _ in range(clients)]
        for _ in range(1200):  # every client connected (the server's gauge), at most 60 s
            text = (await c.get("/metrics")).text
            if f"plait_event_stream_clients {clients}" in text:
                break
            await asyncio.sleep(0.05)
        else:
            raise SystemExit("the clients never all connected")
        opened = time.time()
        (tmp / "gate").touch()
        streams = await asyncio.gather(*tasks)
    ids = [[e[0] for e in s] for s in streams]
    same = all(x == ids[0] for x in ids)
    ordered = all(in_order(x) for x in ids)
    # Only events emitted after the gate opened were waited for live; the backlog each
    # client read on connecting is not a delay.
    lags = [d for s in streams for d in delays(s, created, since=opened)]
    print(f"1. fan-out: {clients} clients x {len(ids[0])} events of one run (101 tasks)")
    print("   (delays of the events emitted after the gate opened, all clients connected)")
    print(f"   every client got every event in order: {same and ordered}")
    print(
        f"   delay emit -> client: p50 {pct(lags, 0.5) * 1000:.1f} ms, "
        f"p99 {pct(lags, 0.99) * 1000:.1f} ms ({len(lags)} deliveries)"
    )


async def one_run(c: httpx.AsyncClient, url: str) -> tuple[float, list[float], list[str]]:
    start = time.perf_counter()
    run_id = (await c.post("/v1/runs", json={"plan": RUN_PLAN})).json()["run_id"]
    got = await sse_client(url, run_id)
    wall = time.perf_counter() - start
    return wall, delays(got[1:], await created_of(c, run_id)), [e[0] for e in got]


async def many_runs(url: str, runs: int, sequential: int) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        start = time.perf_counter()
        results = await asyncio.gather(*(one_run(c, url) for _ in range(runs)))
        wall = time.perf_counter() - start
        ordered = all(in_order(ids) for _, _, ids in results)
        lags = [d for _, run_lags, _ in results for d in run_lags]
        print(f"2. {runs} runs at once (20 tasks each, 4 chains of 5 x 10 ms): wall {wall:.2f} s")
        print(f"   every stream whole and in order: {ordered}")
        print(
            f"   delay emit -> client: p50 {pct(lags, 0.5) * 1000:.1f} ms, "
            f"p99 {pct(lags, 0.99) * 1000:.1f} ms"
        )
        one = [(await one_run(c, url))[0] for _ in range(sequential)]
    return statistics.median(one)


def exec_runs(tmp: Path, n: int) -> tuple[float, float]:
    plan = tmp / "run.plan"
    plan.write_text(RUN_PLAN)
    walls, elapsed = [], []
    for i in range(n):
        start = time.perf_counter()
        done = subprocess.run(
            [*PLAIT, "exec", str(plan), "--tools", str(tmp / "tools.py"), "--json",
             "--store", f"sqlite:///{tmp / 'exec.db'}", "--run-id", f"e{i}"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        walls.append(time.perf_counter() - start)
        elapsed.append(json.loads(done.stdout)["elapsed"])
    return statistics.median(walls), statistics.median(elapsed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--sequential", type=int, default=10)
    ap.add_argument("--exec", dest="execs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="plait-serve-bench-") as name:
        tmp = Path(name)
        (tmp / "tools.py").write_text(TOOLS)
        proc, url = start_server(tmp)
        try:
            asyncio.run(fan_out(url, tmp, args.clients))
            per_run = asyncio.run(many_runs(url, args.runs, args.sequential))
        finally:
            proc.terminate()
            proc.wait(60)
        wall, elapsed = exec_runs(tmp, args.execs)
    print("3. one run at a time, the same 20-task plan (medians):")
    print(f"   through the server, POST -> run_finished at the client: {per_run * 1000:.1f} ms")
    print(f"   plait exec: the run's own elapsed {elapsed * 1000:.1f} ms, process {wall:.2f} s")
    print(
        f"   server overhead per run: {(per_run - elapsed) * 1000:+.1f} ms over the run itself "
        f"({per_run / elapsed:.2f}x); {wall / per_run:.1f}x faster than a plait exec process"
    )


if __name__ == "__main__":
    main()
