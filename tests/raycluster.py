"""A real two-node Ray cluster on 127.0.0.1 for the tests: a head and a second node, each a
`ray start --block` process of its own, so the second can be killed whole (node loss).

`ray stop` is never used: it stops every Ray process on the machine, not just these.
Token authentication is on, with a token made for the cluster, as a real one would be.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START_TIMEOUT = 90.0


def loopback_only() -> bool:
    """Move this test process into a network namespace of its own with only loopback up.

    Every server the tests start (PostgreSQL, llama.cpp, a Ray cluster) is then reachable
    on 127.0.0.1 alone, and nothing a test does can reach another address. Ray needs it:
    it swaps 127.0.0.1 for the machine's own address unless loopback is all there is.
    Done at import, while the process still has one thread; needs root (CI runs as root).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if os.environ.get("PLAIT_TEST_NETNS") == "0" or libc.unshare(0x40000000) != 0:
        return False  # CLONE_NEWNET refused: tests run in the machine's namespace
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = 0x1 | 0x8 | 0x40  # IFF_UP | IFF_LOOPBACK | IFF_RUNNING
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags))  # SIOCSIFFLAGS
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """pid and every process below it, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    for pid in descendants(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


class RayCluster:
    def __init__(self, root: Path, *, head_cpus: int = 2, node_cpus: int = 2) -> None:
        self.root = root
        # Ray's sockets live under its temp dir and a socket path has at most 107 characters:
        # a short directory of its own, not one under pytest's ever-longer basetemp.
        self.temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
        self.head_cpus = head_cpus
        self.node_cpus = node_cpus
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(16),
            "RAY_USAGE_STATS_ENABLED": "0",
            # Notice a dead node in ~2 s, not ~15 s: the node-loss test waits on it.
            "RAY_health_check_period_ms": "500",
            "RAY_health_check_failure_threshold": "4",
        }
        self.env.pop("RAY_ADDRESS", None)
        self.head: subprocess.Popen[bytes] | None = None
        self.node: subprocess.Popen[bytes] | None = None
        self.nodes_started = 0

    def driver_env(self) -> dict[str, str]:
        """What a driver process needs to join this cluster."""
        keys = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_USAGE_STATS_ENABLED")
        return {"RAY_ADDRESS": self.address, **{k: self.env[k] for k in keys}}

    def _ray(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - kept by the process
        return subprocess.Popen(
            [
                ray,
                "start",
                "--block",
                "--node-ip-address=127.0.0.1",
                "--disable-usage-stats",
                f"--dashboard-agent-listen-port={free_port()}",
                *args,
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.head = self._ray(
            "head",
            "--head",
            f"--port={self.port}",
            f"--num-cpus={self.head_cpus}",
            f"--ray-client-server-port={free_port()}",
            "--include-dashboard=false",
            f"--temp-dir={self.temp}",
            '--resources={"plait_head": 1}',
        )
        self._wait(1)
        self.add_node()

    def add_node(self) -> None:
        """Start the second node ("node B": it has the custom resource plait_node_b)."""
        self.nodes_started += 1
        self.node = self._ray(
            f"node{self.nodes_started}",
            f"--address={self.address}",
            f"--num-cpus={self.node_cpus}",
            '--resources={"plait_node_b": 1}',
        )
        self._wait(2)

    def kill_node(self) -> None:
        """SIGKILL node B's raylet, workers and all: a machine lost, not a clean stop."""
        assert self.node is not None
        kill_tree(self.node)
        self.node = None

    def _wait(self, alive: int) -> None:
        """Until `alive` nodes are up, asking the cluster from a throwaway process."""
        probe = (
            "import ray; ray.init(logging_level='ERROR');"
            "print(sum(1 for n in ray.nodes() if n['Alive']))"
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for proc in (self.head, self.node):
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"ray start exited {proc.returncode}: see {self.root}")
            out = subprocess.run(
                [sys.executable, "-c", probe],
                env={**self.env, "RAY_ADDRESS": self.address},
                capture_output=True,
                text=True,
                timeout=60,
            )
            count = out.stdout.strip()
            if out.returncode == 0 and count.isdigit() and int(count) >= alive:
                return
            time.sleep(0.5)
        raise RuntimeError(
            f"the Ray cluster did not come up in {START_TIMEOUT:g}s: see {self.root}"
        )

    def stop(self) -> None:
        procs = [p for p in (self.node, self.head) if p is not None]
        pids = [pid for p in procs for pid in descendants(p.pid)]
        for sig, grace in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(p.poll() is None for p in procs):
                time.sleep(0.1)
        self.node = self.head = None
        shutil.rmtree(self.temp, ignore_errors=True)
