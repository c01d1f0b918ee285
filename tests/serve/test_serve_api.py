"""The HTTP API of `plait serve`, used as a client would: httpx against the real server on
127.0.0.1 (issue 17, points 1-3)."""

from __future__ import annotations

import json
import socket
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest
from servesupport import PLAIT, Server, events, key, open_gate, ran, wait_for

PLAN = '1. add(1, 2)\n2. add($1, 10)\n3. echo("x")\n4. add($2, $1)\n'
GATED = '1. add(1, 2)\n2. gate("g")\n3. echo($2)\n'


def _start(client: httpx.Client, **body: object) -> str:
    response = client.post("/v1/runs", json=body)
    assert response.status_code == 201, response.text
    return response.json()["run_id"]  # type: ignore[no-any-return]


def test_plan_run_streams_every_event_once_in_order(server: Server, store_url: str) -> None:
    with server.client() as c:
        run_id = _start(c, plan=PLAN, run_id="plan-1")
        assert run_id == "plan-1"
        got = events(c, run_id)
        run = wait_for(c, run_id, lambda r: r["status"] != "running")
    names = [e["event"] for e in got]
    assert names[0] == "run_started" and names[-1] == "run_finished"
    assert names.count("task_added") == 4 and names.count("task_finished") == 4
    assert names.count("run_finished") == 1
    keys = [key(e["id"]) for e in got]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert got[-1]["id"].endswith(".end")
    final = got[-1]["data"]["result"]
    assert final["status"] == "done" and final["answer"] == "16"
    assert {t["id"]: t["result"] for t in final["tasks"]} == {1: 3, 2: 13, 3: "x", 4: 16}
    # GET /v1/runs/{id} is the object `plait show --json` prints for it.
    shown = subprocess.run(
        [*PLAIT, "show", run_id, "--store", store_url, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert run == json.loads(shown.stdout)


def test_last_event_id_resumes_exactly_live_and_from_the_store(server: Server) -> None:
    with server.client() as c:
        run_id = _start(c, plan=PLAN)
        whole = events(c, run_id)  # live
        ids = [e["id"] for e in whole]
        wait_for(c, run_id, lambda r: r["status"] != "running")  # from now on, the store's
        for cut in range(len(ids)):
            again = events(c, run_id, last_id=ids[cut])
            assert [e["id"] for e in again] == ids[cut + 1 :]
            assert [e["data"] for e in again[:-1]] == [e["data"] for e in whole[cut + 1 : -1]]
    # A restarted server reads the finished run from the store: the same ids, and after
    # the last one nothing at all.
    server.stop()
    server.start()
    with server.client() as c:
        assert [e["id"] for e in events(c, run_id)] == ids
        assert events(c, run_id, last_id=ids[-1]) == []
        assert [e["id"] for e in events(c, run_id, last_id=ids[3])] == ids[4:]


def test_a_question_run_streams_the_planner_and_reconnects_after_a_token(
    store_url: str, tmp_path: Path, serve_env: dict
) -> None:
    replies = tmp_path / "replies.json"
    plan = '1. gate("five")\n2. echo($1)\n3. join()\n<END_OF_PLAN>'
    replies.write_text(json.dumps([plan, "Thought: done.\nAction: Finish(5)"]))
    server = Server(store_url, serve_env, "--model", f"replay:{replies}").start()
    try:
        question_run(server, serve_env)
    finally:
        server.kill()


def question_run(server: Server, serve_env: dict) -> None:
    with server.client() as c:
        run_id = _start(c, question="what is 2 + 3?")
        # The gate holds the run live while the stream connects: it gets every event.
        got = events(c, run_id, until=lambda e: e["event"] == "task_started")
        open_gate(serve_env)
        got += events(c, run_id, last_id=got[-1]["id"])
        names = [e["event"] for e in got]
        assert "llm_started" in names and "llm_token" in names and "answered" in names
        tokens = "".join(e["data"]["text"] for e in got if e["event"] == "llm_token")
        head = '1. gate("five")\n2. echo($1)\n3. join()'
        assert head in tokens
        finished = [e["data"] for e in got if e["event"] == "llm_finished"]
        assert [f["role"] for f in finished] == ["planner", "joiner"]
        assert got[-1]["data"]["result"]["status"] == "done"
        # Cut at a token (an event the store does not record): the rest comes from the
        # log, each event once; the reply's whole text is in its llm_finished.
        token = next(e for e in got if e["event"] == "llm_token")
        wait_for(c, run_id, lambda r: r["status"] != "running")  # from now on, the store's
        rest = events(c, run_id, last_id=token["id"])
        assert rest and all(key(e["id"]) > key(token["id"]) for e in rest)
        assert len({e["id"] for e in rest}) == len(rest)
        assert head in next(e for e in rest if e["event"] == "llm_finished")["data"]["text"]
        assert rest[-1]["event"] == "run_finished"
        # Read from the store, an event is the one sent live: same id, same fields.
        live = {e["id"]: e for e in got}
        for e in rest[:-1]:
            assert live[e["id"]] == e


def test_bad_input_is_a_400_naming_what_and_nothing_runs(server: Server) -> None:
    with server.client() as c:
        bad = c.post("/v1/runs", json={"plan": "1. add(1, 2)\n2. nope($1)\n", "run_id": "bad"})
        assert bad.status_code == 400
        assert "line 2" in bad.json()["error"] and "nope" in bad.json()["error"]
        syntax = c.post("/v1/runs", json={"plan": '1. add(1, 2\n2. echo("x")'})
        assert syntax.status_code == 400 and "line 1" in syntax.json()["error"]
        assert c.post("/v1/runs", content=b"{not json").status_code == 400
        both = c.post("/v1/runs", json={"plan": PLAN, "question": "why?"})
        assert both.status_code == 400 and "exactly one" in both.json()["error"]
        model = c.post("/v1/runs", json={"question": "why?", "model": "nosuch:thing"})
        assert model.status_code == 400 and "nosuch" in model.json()["error"]
        assert c.get("/v1/runs/bad").status_code == 404
        assert c.get("/v1/runs").json() == []
        _start(c, plan=PLAN, run_id="taken")
        again = c.post("/v1/runs", json={"plan": PLAN, "run_id": "taken"})
        assert again.status_code == 409 and "taken" in again.json()["error"]
        for method, path in [
            ("GET", "/v1/runs/nope"),
            ("GET", "/v1/runs/nope/events"),
            ("POST", "/v1/runs/nope/cancel"),
            ("POST", "/v1/runs/nope/tasks"),
            ("DELETE", "/v1/runs/nope/tasks/1"),
            ("GET", "/v2/else"),
        ]:
            response = c.request(method, path)
            assert response.status_code == 404, (method, path)
            assert set(response.json()) == {"error"}


def test_list_runs_newest_first_with_limit_and_status(server: Server, serve_env: dict) -> None:
    with server.client() as c:
        for i in range(3):
            run_id = _start(c, plan=PLAN, run_id=f"r{i}")
            wait_for(c, run_id, lambda r: r["status"] == "done")
        _start(c, plan=GATED, run_id="gated")
        listed = c.get("/v1/runs").json()
        assert [r["run_id"] for r in listed] == ["gated", "r2", "r1", "r0"]
        assert [r["run_id"] for r in c.get("/v1/runs?limit=2").json()] == ["gated", "r2"]
        running = c.get("/v1/runs?status=running").json()
        assert [r["run_id"] for r in running] == ["gated"]
        assert c.get("/v1/runs/gated").json()["status"] == "running"
        assert [r["run_id"] for r in c.get("/v1/runs?status=done&limit=1").json()] == ["r2"]
        assert c.get("/v1/runs?limit=0").status_code == 400
        open_gate(serve_env)
        assert wait_for(c, "gated", lambda r: r["status"] != "running")["status"] == "done"


def test_cancel_a_run(server: Server) -> None:
    with server.client() as c:
        run_id = _start(c, plan=GATED)
        events(c, run_id, until=lambda e: e["event"] == "task_started" and e["data"]["id"] == 2)
        response = c.post(f"/v1/runs/{run_id}/cancel")
        assert response.status_code == 200
        final = events(c, run_id)[-1]
        assert final["event"] == "run_finished"
        assert final["data"]["result"]["status"] == "cancelled"
        assert c.get(f"/v1/runs/{run_id}").json()["status"] == "cancelled"
        again = c.post(f"/v1/runs/{run_id}/cancel")
        assert again.status_code == 409 and "not running" in again.json()["error"]


def test_live_edits_add_a_task_with_references_and_cancel_another(
    server: Server, serve_env: dict
) -> None:
    plan = '1. add(1, 2)\n2. gate("g")\n3. echo($2)\n4. add($1, 100)\n'
    with server.client() as c:
        run_id = _start(c, plan=plan)
        events(c, run_id, until=lambda e: e["event"] == "task_started" and e["data"]["id"] == 2)
        added = c.post(f"/v1/runs/{run_id}/tasks", json={"id": 7, "tool": "add", "args": ["$1", 5]})
        assert added.status_code == 201, added.text
        assert added.json()["task_id"] == 7
        chained = c.post(f"/v1/runs/{run_id}/tasks", json={"tool": "echo", "args": ["$2 and $7"]})
        assert chained.status_code == 201 and chained.json()["task_id"] == 8
        unknown = c.post(f"/v1/runs/{run_id}/tasks", json={"id": 9, "tool": "nope"})
        assert unknown.status_code == 400 and "nope" in unknown.json()["error"]
        dangling = c.post(
            f"/v1/runs/{run_id}/tasks", json={"id": 9, "tool": "echo", "args": ["$99"]}
        )
        assert dangling.status_code == 400 and "99" in dangling.json()["error"]
        twice = c.post(f"/v1/runs/{run_id}/tasks", json={"id": 7, "tool": "echo", "args": ["a"]})
        assert twice.status_code == 400 and "7" in twice.json()["error"]
        cancelled = c.delete(f"/v1/runs/{run_id}/tasks/3")
        assert cancelled.status_code == 200 and cancelled.json()["cancelled"] == [3]
        assert c.delete(f"/v1/runs/{run_id}/tasks/42").status_code == 404
        open_gate(serve_env)
        final = events(c, run_id)[-1]["data"]["result"]
    tasks = {t["id"]: t for t in final["tasks"]}
    assert tasks[7]["status"] == "done" and tasks[7]["result"] == 8
    assert tasks[8]["status"] == "done" and tasks[8]["result"] == "g and 8"
    assert tasks[3]["status"] == "cancelled"
    # A written plan needs every task: the cancelled one makes the run fail, and says so.
    assert final["status"] == "failed" and "3" in final["error"]


def test_metrics_in_prometheus_text_format(server: Server) -> None:
    with server.client() as c:
        run_id = _start(c, plan=PLAN)
        events(c, run_id)
        bad = _start(c, plan='1. boom("no")')
        events(c, bad)
        response = c.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for line in response.text.splitlines():
        if line.startswith("#"):
            assert line.split()[1] in ("HELP", "TYPE")
            continue
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    assert samples['plait_runs{status="done"}'] == 1
    assert samples['plait_runs{status="failed"}'] == 1
    assert samples["plait_tasks_started_total"] == 5
    assert samples['plait_tasks_finished_total{status="done"}'] == 4
    assert samples['plait_tasks_finished_total{status="failed"}'] == 1
    assert samples['plait_runs_finished_total{status="done"}'] == 1
    assert samples["plait_event_stream_clients"] == 0
    assert "plait_llm_calls_total" in samples and 'plait_llm_tokens_total{kind="prompt"}' in samples


def test_the_token_guards_every_route_but_healthz(store_url: str, serve_env: dict) -> None:
    token = "s3cret-token-value"
    server = Server(store_url, serve_env, "--token", token).start()
    try:
        with server.client() as c:
            assert c.get("/healthz").status_code == 200
            for path in ["/v1/runs", "/metrics", "/static/app.js"]:
                assert c.get(path).status_code == 401
                wrong = c.get(path, headers={"Authorization": "Bearer nope"})
                assert wrong.status_code == 401
                assert token not in wrong.text
            assert c.post("/v1/runs", json={"plan": PLAN}).status_code == 401
            page = c.get("/")
            assert page.status_code == 401 and "<form" in page.text and token not in page.text
            auth = {"Authorization": f"Bearer {token}"}
            run_id = c.post("/v1/runs", json={"plan": PLAN}, headers=auth).json()["run_id"]
            assert events(httpx.Client(base_url=server.url, headers=auth, timeout=60), run_id)
            assert c.get("/metrics", headers=auth).status_code == 200
            # The page's login form sets a cookie the page (and its streams) then carry.
            assert c.post("/login", data={"token": "wrong"}).status_code == 401
            login = c.post("/login", data={"token": token})
            assert login.status_code == 303
            assert c.get("/").status_code == 200 and "app.js" in c.get("/").text
            assert c.get(f"/v1/runs/{run_id}").status_code == 200
    finally:
        server.kill()
    assert token not in "".join(server.stderr)


def test_no_token_means_loopback_only(store_url: str, serve_env: dict) -> None:
    done = subprocess.run(
        [*PLAIT, "serve", "--tools", str(Server(store_url, serve_env).tools),
         "--store", store_url, "--host", "0.0.0.0", "--port", "0"],
        env=serve_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--token" in done.stderr and "0.0.0.0" in done.stderr


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def shared_store(request: pytest.FixtureRequest, store_url: str) -> str:
    if request.param == "sqlite":
        return store_url
    return str(request.getfixturevalue("postgres_url"))


def test_two_servers_on_one_store_never_run_one_run(shared_store: str, serve_env: dict) -> None:
    server = Server(shared_store, serve_env).start()
    try:
        _two_servers(server, shared_store, serve_env)
    finally:
        server.kill()


def _two_servers(server: Server, store_url: str, serve_env: dict) -> None:
    with server.client() as c:
        run_id = _start(c, plan=GATED, run_id=f"two-{uuid.uuid4().hex[:8]}")
        events(c, run_id, until=lambda e: e["event"] == "task_started" and e["data"]["id"] == 2)
    other = Server(store_url, serve_env).start()  # finds the run held by a live server
    try:
        with other.client() as c2:
            assert c2.get("/healthz").json()["runs"] == 0
            assert c2.get(f"/v1/runs/{run_id}").json()["status"] == "running"
            assert c2.post(f"/v1/runs/{run_id}/cancel").status_code == 409
            open_gate(serve_env)
            # Its stream follows the store the first server writes, to the end.
            got = events(c2, run_id)
    finally:
        other.kill()
    assert got[-1]["event"] == "run_finished"
    assert got[-1]["data"]["result"]["status"] == "done"
    assert {pid for pid, _ in ran(serve_env, run_id)} == {server.proc.pid}  # type: ignore[union-attr]


def test_a_port_in_use_is_one_line_and_exit_2(store_url: str, serve_env: dict) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [*PLAIT, "serve", "--tools", str(Server(store_url, serve_env).tools),
             "--store", store_url, "--port", str(port)],
            env=serve_env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and f"127.0.0.1:{port}" in done.stderr
