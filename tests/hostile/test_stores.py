"""Hostile stores, through a real `plait` process: no store at all, a store in a directory
nobody may write, a corrupted file, a path that is a directory, and store URLs carrying
passwords in every form libpq accepts.

For each: the exit code, one line on stderr, the store left as it was (nothing created,
nothing changed), and no password in any output.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .plaitproc import one_line, one_object, plait

TOOLS = """
import plait

@plait.tool
async def echo(text: str) -> str:
    return text
"""
PLAN = '1. echo("a")\n2. echo("$1 b")\n'
SECRET = "Pw-s3cret-XYZ"


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    tools = tmp_path / "tools.py"
    tools.write_text(TOOLS)
    plan = tmp_path / "p.plan"
    plan.write_text(PLAN)
    return tools, plan


def tree(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under root: its mode and, for files, its bytes."""
    return {
        str(p.relative_to(root)): (p.stat().st_mode, p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """Nobody may create a file in `directory` for a while: as root (who ignores modes) with
    the immutable attribute, else with mode 0555."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None:
            pytest.skip("as root, a read-only directory needs chattr")
        made = subprocess.run(["chattr", "+i", str(directory)], capture_output=True)
        if made.returncode != 0:
            pytest.skip(f"chattr +i is not supported here: {made.stderr.decode().strip()}")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
    else:
        mode = directory.stat().st_mode
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(mode)


def test_runs_and_show_create_nothing_where_no_store_is(tmp_path):
    missing = tmp_path / "nowhere" / "runs.db"
    url = f"sqlite:///{missing}"
    code, out, err = plait("runs", "--store", url)
    assert (code, out) == (0, "")
    assert one_line(err) == f"no runs in {url}"
    code, out, err = plait("runs", "--store", url, "--json")
    assert (code, out) == (0, "[]\n")  # --json is one array, empty here
    code, out, err = plait("show", "R", "--store", url)
    assert (code, out) == (2, "")
    assert one_line(err) == f"plait: no run R in {url}"
    assert not missing.parent.exists()


def test_the_default_store_is_not_created_by_reading_it(tmp_path):
    data = tmp_path / "xdg-data"
    env = {"XDG_DATA_HOME": str(data), "PLAIT_STORE": ""}
    code, _, err = plait("runs", extra_env=env)
    assert code == 0 and one_line(err).startswith("no runs in sqlite:///")
    code, _, err = plait("show", "R", extra_env=env)
    assert code == 2 and one_line(err).startswith("plait: no run R in sqlite:///")
    assert not data.exists()


def test_runs_and_show_read_a_store_in_a_read_only_directory(tmp_path, files):
    tools, plan = files
    home = tmp_path / "store"
    home.mkdir()
    url = f"sqlite:///{home / 'runs.db'}"
    code, _, err = plait("exec", plan, "--tools", tools, "--store", url, "--run-id", "R")
    assert code == 0, err
    before = tree(home)
    with read_only(home):
        code, out, err = plait("runs", "--store", url)
        assert code == 0, err
        assert out.splitlines()[1].split()[:2] == ["R", "done"]
        code, out, err = plait("show", "R", "--store", url, "--json")
        assert code == 0, err
        result = one_object(out)
        assert [t["result"] for t in result["tasks"]] == ["a", "a b"]
    assert tree(home) == before


def test_a_corrupted_store_is_one_line_exit_2_and_left_as_it_was(tmp_path, files):
    tools, plan = files
    path = tmp_path / "runs.db"
    path.write_bytes(b"not a database, whatever the name says\n" * 200)
    before = tree(tmp_path)
    url = f"sqlite:///{path}"
    for argv in (
        ("exec", plan, "--tools", tools, "--store", url),
        ("runs", "--store", url),
        ("show", "R", "--store", url),
    ):
        code, out, err = plait(*argv)
        assert (code, out) == (2, ""), err
        line = one_line(err)
        assert line.startswith(f"plait: cannot open {url}") or line.startswith(f"plait: {url}")
        assert "file is not a database" in line
    assert tree(tmp_path) == before


def test_a_store_path_that_is_a_directory_is_one_line_exit_2(tmp_path, files):
    tools, plan = files
    (tmp_path / "runs.db").mkdir()
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    for argv in (
        ("exec", plan, "--tools", tools, "--store", url),
        ("runs", "--store", url),
    ):
        code, out, err = plait(*argv)
        assert (code, out) == (2, ""), err
        assert one_line(err).startswith(f"plait: cannot open {url}")
    assert list((tmp_path / "runs.db").iterdir()) == []


def test_a_new_store_is_private_to_its_user(tmp_path, files):
    tools, plan = files
    tmp_path.chmod(0o755)
    path = tmp_path / "new" / "dir" / "runs.db"
    code, _, err = plait("exec", plan, "--tools", tools, "--store", f"sqlite:///{path}")
    assert code == 0, err
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert path.parent.parent.stat().st_mode & 0o777 == 0o700
    assert tmp_path.stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://plait:{SECRET}@127.0.0.1/db",
        f"postgresql+psycopg://plait@127.0.0.1/db?password={SECRET}",
        f"host=127.0.0.1 user=plait password={SECRET} dbname=db",
        f"host=127.0.0.1 password = '{SECRET} quoted' dbname=db",
        f"postgres:plait:{SECRET}@127.0.0.1/db",
    ],
)
def test_an_unknown_store_url_never_shows_its_password(tmp_path, files, url):
    tools, plan = files
    for argv in (
        ("exec", plan, "--tools", tools, "--store", url),
        ("runs", "--store", url),
        ("show", "R", "--store", url),
    ):
        code, out, err = plait(*argv)
        assert code == 2
        assert "unknown store URL" in one_line(err)
        assert SECRET not in out + err
    code, out, err = plait("runs", extra_env={"PLAIT_STORE": url})
    assert code == 2 and SECRET not in out + err


@pytest.mark.postgres
def test_a_postgres_password_never_shows_in_any_output(postgres_url, tmp_path, files):
    tools, plan = files
    host = postgres_url.split("@", 1)[1]  # 127.0.0.1:PORT/postgres; trust auth: any password
    run_id = f"pw-{os.getpid()}-{tmp_path.name}"
    for n, url in enumerate(
        (f"postgresql://plait:{SECRET}@{host}", f"postgresql://plait@{host}?password={SECRET}")
    ):
        outputs = []
        code, out, err = plait("exec", plan, "--tools", tools, "--store", url, "--run-id",
                               run_id, "--json")  # fmt: skip
        outputs.append(out + err)
        assert code == (0 if n == 0 else 2)  # the second URL names the same run
        code, out, err = plait("exec", plan, "--tools", tools, "--store", url, "--run-id", run_id)
        assert code == 2 and "already exists" in one_line(err)
        assert "postgresql://plait" in one_line(err)  # the store is named, without its password
        outputs.append(out + err)
        for argv in (("runs",), ("show", run_id), ("show", "no-such-run")):
            code, out, err = plait(*argv, "--store", url)
            outputs.append(out + err)
        assert all(SECRET not in text for text in outputs), outputs
    port = host.split(":")[1].split("/")[0]
    for url in (
        f"postgresql://plait:{SECRET}@127.0.0.1:1/postgres",
        f"postgresql://plait:{SECRET}@127.0.0.1:{port}x/postgres?password={SECRET}",
    ):
        code, out, err = plait("runs", "--store", url)
        assert code == 2
        assert "postgresql://plait:***@127.0.0.1" in one_line(err)
        assert SECRET not in out + err
