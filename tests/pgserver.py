"""Start and stop a throwaway PostgreSQL server on loopback (tests).

    initdb -D <data> -U plait -A trust -E UTF8 --locale=C --no-sync
    postgres -D <data> -h 127.0.0.1 -p <free> -k <sockdir> -F -c max_connections=100

`postgres` runs as our own child (not daemonized by pg_ctl), so it is always stopped: SIGINT
(postgres's "fast" shutdown, which also disconnects clients that are still open), then
SIGKILL on timeout; the data directory is removed afterwards. PostgreSQL refuses to run as
root, so as root initdb and postgres run as the `postgres` system user (Debian's package
creates it), in a directory under /tmp that user owns.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

USER = "plait"  # the superuser initdb creates; trust auth, no password
RUN_AS = "postgres"  # the system user initdb and postgres run as when we are root
PG_TOOLS = ("initdb", "pg_ctl", "postgres")
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
# A unix socket path must fit in 107 bytes: workdir + "/plait-pg-XXXXXXXX/sock/.s.PGSQL.NNNNN".
MAX_WORKDIR = 60


def _has_tools(bindir: Path) -> bool:
    return all((bindir / tool).is_file() for tool in PG_TOOLS)


def _version_key(bindir: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", bindir.parent.name))


def find_pg_bin() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres (PATH, else the newest Debian one)."""
    on_path = shutil.which("pg_ctl")
    if on_path:
        bindir = Path(on_path).resolve().parent
        if _has_tools(bindir):
            return bindir
    debian = [d for d in Path("/usr/lib/postgresql").glob("*/bin") if _has_tools(d)]
    return max(debian, key=_version_key) if debian else None


def _run_as() -> pwd.struct_passwd | None:
    """The user to run the server as: `postgres` when we are root, else None (ourselves)."""
    if os.geteuid() != 0:
        return None
    return pwd.getpwnam(RUN_AS)


def missing_postgres() -> str | None:
    """Why the server cannot start here (binaries, psycopg or the system user missing), or None."""
    if find_pg_bin() is None:
        return (
            "PostgreSQL server not installed (initdb/pg_ctl/postgres): apt-get install postgresql"
        )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not importable: pip install 'psycopg[binary]>=3.2'"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(RUN_AS)
        except KeyError:
            return f"running as root and there is no {RUN_AS!r} user to run PostgreSQL as"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _popen_kwargs(user: pwd.struct_passwd | None, cwd: Path) -> dict[str, Any]:
    """Run a child in `cwd`, as `user` when given (dropping root's groups, with its HOME)."""
    env = os.environ.copy()
    if user is None:
        return {"cwd": cwd, "env": env}
    env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
    return {"cwd": cwd, "env": env, "user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _tail(log: Path, chars: int = 2000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError as e:
        return f"(no log: {e})"


def _ready(bindir: Path, port: int) -> bool:
    """Whether the server accepts connections (pg_isready, else a psycopg connect)."""
    isready = bindir / "pg_isready"
    if isready.is_file():
        cmd = [str(isready), "-q", "-h", "127.0.0.1", "-p", str(port), "-U", USER,
               "-d", "postgres", "-t", "2"]  # fmt: skip
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, check=False).returncode == 0
    import psycopg

    try:
        psycopg.connect(f"postgresql://{USER}@127.0.0.1:{port}/postgres", connect_timeout=2).close()
    except psycopg.OperationalError:
        return False
    return True


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)  # fast shutdown; SIGTERM ("smart") waits for clients
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@contextlib.contextmanager
def postgres_server(workdir: Path) -> Iterator[str]:
    """initdb a fresh cluster, run `postgres` on a free loopback port; yield its URL.

    The URL is `postgresql://plait@127.0.0.1:PORT/postgres` (trust auth, no password). The
    server log is `workdir/<name>.log`; the cluster lives in a `plait-pg-*` directory under
    workdir (under /tmp when running as root, so the `postgres` user can reach it), which is
    removed when the block exits, also on failure.
    """
    bindir = find_pg_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found")
    user = _run_as()
    workdir.mkdir(parents=True, exist_ok=True)
    # As root, workdir (pytest's is 0o700) may be out of the postgres user's reach; a long
    # path would not fit the unix socket's name.
    under = workdir if user is None and len(str(workdir)) <= MAX_WORKDIR else None
    base = Path(tempfile.mkdtemp(prefix="plait-pg-", dir=under))
    log = workdir / f"{base.name}.log"
    try:
        base.chmod(0o755)
        data, sockdir = base / "data", base / "sock"
        sockdir.mkdir(mode=0o755)
        if user is not None:
            for d in (base, sockdir):
                os.chown(d, user.pw_uid, user.pw_gid)
        kwargs = _popen_kwargs(user, base)
        initdb = [str(bindir / "initdb"), "-D", str(data), "-U", USER, "-A", "trust",
                  "-E", "UTF8", "--locale=C", "--no-sync"]  # fmt: skip
        with log.open("wb") as out:
            done = subprocess.run(initdb, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, check=False, **kwargs)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"initdb exited with {done.returncode}:\n{_tail(log)}")

        port = free_port()
        cmd = [str(bindir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
               "-k", str(sockdir), "-F", "-c", "max_connections=100"]  # fmt: skip
        with log.open("ab") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, **kwargs)  # fmt: skip
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while not _ready(bindir, port):
                if proc.poll() is not None:
                    raise RuntimeError(f"postgres exited with {proc.returncode}:\n{_tail(log)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"postgres not ready after {READY_TIMEOUT:.0f}s:\n{_tail(log)}"
                    )
                time.sleep(0.1)
            yield f"postgresql://{USER}@127.0.0.1:{port}/postgres"
        finally:
            _stop(proc)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def new_database(url: str, prefix: str) -> str:
    """A new, empty database on the server of `url` (a name from `prefix`), and its URL:
    for a test that needs a store of its own, not the session's shared one."""
    import uuid

    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + "/" + name
