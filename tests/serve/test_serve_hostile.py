"""`plait serve` attacked as a hostile client would: input that once made a 500, a body read
whole before its size was checked, ids that are not ids, a token with odd characters, and a
SIGKILL between an event reaching a client and its record reaching the store.

Each test here failed before the fix it guards."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import threading
import time
from typing import Any

import httpx
from servesupport import PLAIT, TOOLS, WAIT, Server, events, key, open_gate, ran, wait_for

from plait.serve.app import Lockout

PLAN = "1. add(1, 2)\n2. add($1, 10)\n"
GATED = '1. gate("g")\n2. echo($1)\n'


def _start(client: httpx.Client, **body: object) -> str:
    response = client.post("/v1/runs", json=body)
    assert response.status_code == 201, response.text
    return response.json()["run_id"]  # type: ignore[no-any-return]


def _one_line_error(response: httpx.Response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error, str) and "\n" not in error
    for word in words:
        assert word in error, error
    return error


def test_input_that_made_a_500_is_a_400_naming_what(server: Server) -> None:
    with server.client() as c:
        deep = c.post("/v1/runs", content=b"[" * 100_000 + b"]" * 100_000)
        _one_line_error(deep, 400, "nested too deep")
        run_id = _start(c, plan=PLAN)
        wait_for(c, run_id, lambda r: r["status"] != "running")
        _one_line_error(c.get("/v1/runs?status=bogus"), 400, "bogus", "running", "interrupted")
        assert [r["run_id"] for r in c.get("/v1/runs?status=done").json()] == [run_id]
        _one_line_error(c.get(f"/v1/runs/{'a' * 10_000}"), 404, "…")
        whole = events(c, run_id)
        assert whole[-1]["event"] == "run_finished"
    assert "Traceback" not in "".join(server.stderr)


def test_a_delete_names_a_task_by_its_ascii_number_and_not_a_settled_one(
    server: Server, serve_env: dict
) -> None:
    plan = '1. add(1, 2)\n2. gate("g")\n3. echo($2)\n4. add($1, 1)\n5. gate("h")'
    with server.client() as c:
        run_id = _start(c, plan=plan)
        wait_for(c, run_id, lambda r: any(t["status"] == "done" for t in r["tasks"]))
        base = f"/v1/runs/{run_id}/tasks"
        _one_line_error(c.delete(f"{base}/{'9' * 5000}"), 400, "not a number")
        # "٣" is a digit to str.isdigit and 3 to int(): not a task id in a URL.
        _one_line_error(c.delete(f"{base}/%D9%A3"), 400, "not a number")
        _one_line_error(c.delete(f"{base}/1"), 409, "task 1", "settled", "done")
        cancelled = c.delete(f"{base}/2")
        assert cancelled.status_code == 200 and cancelled.json()["cancelled"] == [2, 3]
        _one_line_error(c.delete(f"{base}/2"), 409, "task 2", "cancelled")
        open_gate(serve_env)  # task 5 kept the run going until now
        run = wait_for(c, run_id, lambda r: r["status"] != "running")
    assert {t["id"]: t["status"] for t in run["tasks"]} == {
        1: "done", 2: "cancelled", 3: "cancelled", 4: "done", 5: "done"
    }  # fmt: skip
    assert "Traceback" not in "".join(server.stderr)


def test_last_event_id_not_an_id_or_past_the_end_is_a_400(server: Server) -> None:
    with server.client() as c:
        run_id = _start(c, plan=PLAN)
        wait_for(c, run_id, lambda r: r["status"] != "running")
        whole = events(c, run_id)
        last = whole[-1]["id"]  # S.end
        for garbage in ["garbage", "-1", "1.-1", "1" * 19, "7.x"]:
            response = c.get(f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": garbage})
            _one_line_error(response, 400, "Last-Event-ID", "not an event id")
        past = str(key(last)[0] + 1)
        response = c.get(f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": past})
        _one_line_error(response, 400, f"Last-Event-ID {past}", "past the end")
        assert events(c, run_id, last_id=last) == []  # its own last id: nothing more
        assert events(c, run_id, last_id="") == whole  # empty: from the start


def _raw_post(server: Server, head: str, chunks: list[bytes]) -> bytes:
    """POST over a bare socket (so the test decides what is sent); the response's bytes."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=WAIT) as sock:
        sock.sendall(head.encode())
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except OSError:
            pass  # the server answered and closed before the rest: what is being tested
        out = b""
        while b"\r\n\r\n" not in out or not out.rstrip().endswith(b"}"):
            more = sock.recv(65536)
            if not more:
                break
            out += more
        return out


def test_a_body_over_the_limit_is_refused_before_it_is_read_whole(server: Server) -> None:
    # Declared too big: refused on its Content-Length, before any of it is sent.
    declared = _raw_post(
        server,
        "POST /v1/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {1 << 40}\r\n\r\n",
        [],
    )
    assert declared.startswith(b"HTTP/1.1 413"), declared[:200]
    assert b"request body over" in declared
    # Chunked, no length: refused once past the limit, however much more would come.
    chunk = b"a" * (1 << 20)
    frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    streamed = _raw_post(
        server,
        "POST /v1/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n",
        [frame] * 12,
    )
    assert streamed.startswith(b"HTTP/1.1 413"), streamed[:200]
    with server.client() as c:
        assert c.get("/healthz").json()["ok"] is True


def test_a_token_with_odd_characters_works_by_header_and_by_cookie(
    store_url: str, serve_env: dict
) -> None:
    token = 'tøken "✓" <b>&amp;'
    server = Server(store_url, serve_env, "--token", token).start()
    try:
        with server.client() as c:
            right = {"Authorization": b"Bearer " + token.encode()}
            wrong = {"Authorization": b"Bearer " + token[:-1].encode()}
            assert c.get("/v1/runs", headers=right).status_code == 200  # type: ignore[arg-type]
            assert c.get("/v1/runs", headers=wrong).status_code == 401  # type: ignore[arg-type]
            assert c.post("/login", data={"token": token[:-1]}).status_code == 401
            assert c.post("/login", data={"token": token}).status_code == 303
            assert c.get("/v1/runs").status_code == 200  # by the login's cookie
            assert token not in c.get("/").text
    finally:
        server.kill()
    assert token not in "".join(server.stderr)


class _Reader(threading.Thread):
    """Reads a run's event stream into `got` until it ends or the server dies."""

    def __init__(self, url: str, run_id: str) -> None:
        super().__init__(daemon=True)
        self.url, self.run_id = url, run_id
        self.got: list[dict[str, Any]] = []

    def run(self) -> None:
        frame: dict[str, Any] = {}
        try:
            with httpx.stream("GET", f"{self.url}/v1/runs/{self.run_id}/events", timeout=WAIT) as r:
                for line in r.iter_lines():
                    if not line:
                        if "data" in frame:
                            frame["data"] = json.loads(frame["data"])
                            self.got.append(frame)
                        frame = {}
                    elif not line.startswith(":"):
                        field, _, value = line.partition(":")
                        frame[field] = value.removeprefix(" ")
        except httpx.HTTPError:
            pass  # killed mid-stream

    def saw(self, event: str, task_id: int) -> bool:
        return any(e["event"] == event and e["data"].get("id") == task_id for e in self.got)


def _poll(check: Any, most: float) -> bool:
    deadline = time.monotonic() + most
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_no_client_sees_an_event_the_store_lost_to_a_sigkill(
    server: Server, store_url: str, serve_env: dict
) -> None:
    """The run log commits on its own thread every few ms. Events sent before their records
    were committed, then lost to a SIGKILL, had ids the resumed session gives to other
    records: the client, reconnecting from them, took those for what it had seen."""
    with server.client() as c:
        run_id = _start(c, plan=GATED, run_id="lost")
    reader = _Reader(server.url, run_id)
    reader.start()
    assert _poll(lambda: reader.saw("task_started", 1), WAIT)
    # The store takes no commit now: task 1 finishing and task 2 running are not recorded.
    db = sqlite3.connect(store_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        open_gate(serve_env)
        assert _poll(lambda: 2 in {t for _, t in ran(serve_env, run_id)}, WAIT)
        # Unfixed, the stream sends task 2's events at once: give it the chance (bounded).
        _poll(lambda: reader.saw("task_finished", 2), 2.0)
        server.kill()
    finally:
        db.rollback()
        db.close()
    reader.join(WAIT)
    seen = reader.got
    assert not reader.saw("task_finished", 1), "an event whose record was never committed"

    server.start()
    with server.client() as c:
        rest = events(c, run_id, last_id=seen[-1]["id"]) if seen else events(c, run_id)
        fresh = events(c, run_id)  # the run as the store has it
        final = wait_for(c, run_id, lambda r: r["status"] != "running")
    assert [(e["id"], e["event"]) for e in seen + rest] == [(e["id"], e["event"]) for e in fresh]
    assert final["status"] == "done"
    assert {t["id"]: t["result"] for t in final["tasks"]} == {1: "g", 2: "g"}


def test_without_a_token_other_sites_and_rebound_host_names_are_refused(server: Server) -> None:
    """A page on any web site can POST to 127.0.0.1 (a no-cors text/plain request needs no
    preflight), and a DNS name rebound to 127.0.0.1 reads it as its own origin."""
    with server.client() as c:
        evil = c.post(
            "/v1/runs",
            content=json.dumps({"plan": 'echo("pwned")', "run_id": "csrf"}),
            headers={"Origin": "http://evil.example", "Content-Type": "text/plain"},
        )
        _one_line_error(evil, 403, "Origin", "evil.example")
        rebound = c.get("/v1/runs", headers={"Host": f"evil.example:{server.port}"})
        _one_line_error(rebound, 403, "Host", "not a loopback address")
        assert c.get("/", headers={"Host": "evil.example"}).status_code == 403
        assert c.get("/healthz", headers={"Host": "evil.example"}).status_code == 200
        assert c.get("/v1/runs/csrf").status_code == 404  # nothing ran
        own = {"Origin": server.url, "Content-Type": "text/plain"}
        mine = c.post("/v1/runs", content=json.dumps({"plan": PLAN}), headers=own)
        assert mine.status_code == 201, mine.text
        for host in [f"localhost:{server.port}", f"[::1]:{server.port}", "127.0.0.1"]:
            assert c.get("/v1/runs", headers={"Host": host}).status_code == 200, host


def test_a_token_no_client_could_send_is_refused_at_start(store_url: str, serve_env: dict) -> None:
    for token in [" padded ", "line\nbreak", "tab\tinside"]:
        done = subprocess.run(
            [*PLAIT, "serve", "--tools", str(TOOLS), "--store", store_url, "--port", "0"],
            env={**serve_env, "PLAIT_TOKEN": token}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and "token" in done.stderr
        assert token not in done.stderr


def test_a_client_cannot_name_a_model_that_reads_a_file_on_the_server(server: Server) -> None:
    with server.client() as c:
        for spec in ["replay:/etc/passwd", "local:/etc/passwd", "replay:/no/such/file"]:
            refused = c.post("/v1/runs", json={"question": "q", "model": spec})
            _one_line_error(refused, 400, "not allowed from a client", spec)
            assert "Expecting value" not in refused.text and "not found" not in refused.text
        assert c.get("/v1/runs").json() == []  # nothing was started


def test_guessing_the_token_is_held_back_and_a_browser_without_one_is_not(
    store_url: str, serve_env: dict
) -> None:
    # Ten wrong tokens (by header, by cookie, by the login form) in a minute, and the client
    # is answered 429 with Retry-After, the right token too; asking with no token (a page
    # reload) never counts; /healthz is never held back.
    token = "the-right-token"
    server = Server(store_url, serve_env, "--token", token).start()
    try:
        with server.client() as c:
            for _ in range(5):
                assert c.get("/").status_code == 401  # no credential: the login page
            for i in range(Lockout.ATTEMPTS):
                if i % 3 == 0:
                    wrong = c.get("/v1/runs", headers={"Authorization": f"Bearer guess{i}"})
                elif i % 3 == 1:
                    wrong = c.post("/login", data={"token": f"guess{i}"})
                else:
                    wrong = c.get("/v1/runs", headers={"Cookie": f"plait_token=guess{i}"})
                assert wrong.status_code == 401, i
            held = c.get("/v1/runs", headers={"Authorization": f"Bearer {token}"})
            assert held.status_code == 429 and int(held.headers["Retry-After"]) >= 1
            assert "too many wrong tokens" in held.json()["error"]
            assert c.post("/login", data={"token": token}).status_code == 429
            assert c.get("/healthz").status_code == 200
    finally:
        server.kill()
    assert token not in "".join(server.stderr)


def test_a_client_cannot_dodge_the_lockout_by_naming_another_address(
    store_url: str, serve_env: dict
) -> None:
    # uvicorn trusts X-Forwarded-For from 127.0.0.1 unless told otherwise, so any process on
    # the machine could give each guess a fresh "client" and guess without end. plait trusts
    # forwarding headers only when $FORWARDED_ALLOW_IPS says whose (README: behind a proxy).
    token = "the-right-token"
    env = {k: v for k, v in serve_env.items() if k != "FORWARDED_ALLOW_IPS"}
    server = Server(store_url, env, "--token", token).start()
    try:
        with server.client() as c:
            for i in range(Lockout.ATTEMPTS):
                wrong = c.get(
                    "/v1/runs",
                    headers={"Authorization": f"Bearer guess{i}", "X-Forwarded-For": f"10.9.0.{i}"},
                )
                assert wrong.status_code == 401, i
            held = c.get(
                "/v1/runs",
                headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": "10.9.1.1"},
            )
            assert held.status_code == 429
    finally:
        server.kill()
    # Told to trust the proxy on loopback, the forwarded address is the client (each its own).
    server = Server(store_url, {**env, "FORWARDED_ALLOW_IPS": "127.0.0.1"}, "--token", token)
    server.start()
    try:
        with server.client() as c:
            for i in range(Lockout.ATTEMPTS):
                headers = {"Authorization": f"Bearer guess{i}", "X-Forwarded-For": "10.9.0.1"}
                assert c.get("/v1/runs", headers=headers).status_code == 401
            headers = {"Authorization": f"Bearer {token}", "X-Forwarded-For": "10.9.0.2"}
            assert c.get("/v1/runs", headers=headers).status_code == 200
            headers["X-Forwarded-For"] = "10.9.0.1"
            assert c.get("/v1/runs", headers=headers).status_code == 429
    finally:
        server.kill()
