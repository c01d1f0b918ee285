"""Nothing lost across restarts (issue 17, point 4): kill `plait serve` with a real SIGKILL
mid-run, start it again on the same store, and the run resumes by itself, no task recorded
settled runs again, and a stream continues from the last id its client saw.

The run's gated tasks are running at the kill, as a handshake: the test reads the stream
until they started, and the store until the quick tasks before them are committed.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
from servesupport import Server, events, key, open_gate, ran, wait_for

PLAN = (
    '1. add(1, 2)\n2. add($1, 10)\n3. echo("a")\n'
    '4. gate("g1")\n5. gate("g2")\n6. add($2, 5)\n7. echo($4)\n8. echo($5)\n'
)


def _started(events_so_far: list[dict], task_ids: set[int]) -> bool:
    started = {e["data"]["id"] for e in events_so_far if e["event"] == "task_started"}
    return task_ids <= started


def _upto(check: Callable[[list[dict]], bool]) -> Callable[[dict], bool]:
    """An `until` for `events` that sees every event so far, not just the last."""
    got: list[dict] = []

    def until(e: dict) -> bool:
        got.append(e)
        return check(got)

    return until


def _settled(got: list[dict]) -> bool:
    return {1, 2, 3} <= {e["data"]["id"] for e in got if e["event"] == "task_finished"}


def _restarted(got: list[dict]) -> bool:
    resumed = [i for i, e in enumerate(got) if e["event"] == "run_started" and e["data"]["resumed"]]
    return bool(resumed) and _started(got[resumed[0] :], {4, 5})


def test_sigkill_mid_run_then_restart_resumes_and_the_stream_goes_on(
    server: Server, serve_env: dict
) -> None:
    seen: list[dict] = []
    with server.client() as c:
        run_id = c.post("/v1/runs", json={"plan": PLAN, "run_id": "k1"}).json()["run_id"]
        seen += events(c, run_id, until=_upto(lambda got: _started(got, {4, 5}) and _settled(got)))
        # The quick tasks are settled in the store (committed), the gated ones running.
        wait_for(c, run_id, lambda r: sum(t["status"] == "done" for t in r["tasks"]) >= 4)
        seen_ids = [e["id"] for e in seen]
    first_pid = server.proc.pid  # type: ignore[union-attr]
    server.kill()

    server.start()  # same store, same port
    with server.client() as c:
        # The resumed run starts the gated tasks again, before the gate opens.
        rest = events(c, run_id, last_id=seen_ids[-1], until=_upto(_restarted))
        open_gate(serve_env)
        rest += events(c, run_id, last_id=rest[-1]["id"])
        final = c.get(f"/v1/runs/{run_id}").json()
    everything = seen + rest
    keys = [key(e["id"]) for e in everything]
    assert keys == sorted(keys) and len(set(keys)) == len(keys), "an event twice or out of order"
    assert everything[-1]["event"] == "run_finished"
    assert any(e["event"] == "run_started" and e["data"]["resumed"] for e in rest)
    assert final["status"] == "done"
    assert {t["id"]: t["result"] for t in final["tasks"]} == {
        1: 3, 2: 13, 3: "a", 4: "g1", 5: "g2", 6: 18, 7: "g1", 8: "g2"
    }  # fmt: skip
    executions = ran(serve_env, run_id)
    settled_before = {e["data"]["id"] for e in seen if e["event"] == "task_finished"}
    assert settled_before >= {1, 2, 3}
    for pid, task_id in executions:
        if task_id in settled_before:
            assert pid == first_pid, f"task {task_id} settled before the kill ran again"
    assert {t for p, t in executions if p != first_pid} >= {4, 5}  # run again after it


def test_sigterm_leaves_runs_resumable_and_a_fresh_client_gets_the_whole_run(
    server: Server, serve_env: dict
) -> None:
    with server.client() as c:
        run_id = c.post("/v1/runs", json={"plan": PLAN}).json()["run_id"]
        events(c, run_id, until=lambda e: e["event"] == "task_started" and e["data"]["id"] == 5)
    assert server.stop() == 0
    open_gate(serve_env)
    server.start()
    with server.client() as c:
        got = events(c, run_id)  # from the first event: the store's, then the live ones
        final = got[-1]["data"]["result"]
        listed = httpx.get(f"{server.url}/v1/runs").json()
    keys = [key(e["id"]) for e in got]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert [e["data"]["resumed"] for e in got if e["event"] == "run_started"] == [False, True]
    second = next(i for i, e in enumerate(got) if e["event"] == "run_started" and i > 0)
    added = [e["data"]["task"]["id"] for e in got[:second] if e["event"] == "task_added"]
    assert sorted(added) == list(range(1, 9)), "each task added once by the first session"
    settled = {e["data"]["id"] for e in got[:second] if e["event"] == "task_finished"}
    again = {e["data"]["task"]["id"] for e in got[second:] if e["event"] == "task_added"}
    assert again and not again & settled, "the resumed session re-adds only unsettled tasks"
    assert final["status"] == "done"
    assert [r["status"] for r in listed if r["run_id"] == run_id] == ["done"]


def test_a_live_server_takes_over_the_runs_of_one_that_died(
    server: Server, store_url: str, serve_env: dict
) -> None:
    with server.client() as c:
        run_id = c.post("/v1/runs", json={"plan": PLAN}).json()["run_id"]
        events(c, run_id, until=_upto(lambda got: _started(got, {4, 5}) and _settled(got)))
        wait_for(c, run_id, lambda r: sum(t["status"] == "done" for t in r["tasks"]) >= 4)
    other = Server(store_url, serve_env).start()  # the run is held: it only watches
    try:
        with other.client() as c2:
            assert c2.get("/healthz").json()["runs"] == 0
            first_pid = server.proc.pid  # type: ignore[union-attr]
            server.kill()
            # Within a few seconds the other server finds the run nobody holds, and its
            # stream (following the store so far) goes on with the resumed session.
            got = events(c2, run_id, until=_upto(_restarted))
            open_gate(serve_env)
            got += events(c2, run_id, last_id=got[-1]["id"])
            final = c2.get(f"/v1/runs/{run_id}").json()
    finally:
        other.kill()
    keys = [key(e["id"]) for e in got]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert final["status"] == "done"
    pids = {pid for pid, _ in ran(serve_env, run_id)}
    assert pids == {first_pid, other.proc.pid}  # type: ignore[union-attr]
    for pid, task_id in ran(serve_env, run_id):
        assert task_id not in {1, 2, 3} or pid == first_pid
