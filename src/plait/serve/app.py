"""The HTTP face of `plait serve`: a Starlette app over the run manager, and its auth.

Routes (JSON everywhere; an error is `{"error": "one line"}` with its status code):

    POST   /v1/runs                        start a run: {"plan"} or {"question", "model",
                                           "max_replans"}, optional "run_id" -> 201
    GET    /v1/runs                        newest first; ?limit=&status=
    GET    /v1/runs/{id}                   the run's `--json` object (status running meanwhile)
    GET    /v1/runs/{id}/events            text/event-stream; Last-Event-ID resumes
    POST   /v1/runs/{id}/cancel            cancel the run
    POST   /v1/runs/{id}/tasks             a live edit: one task in the JSON plan form; its
                                           id, if not given, above any the run's plan or
                                           planner may write (`EditIds`) -> 201 {task_id}
    DELETE /v1/runs/{id}/tasks/{task_id}   cancel that task and what depends on it
    GET    /healthz, /metrics              liveness; Prometheus text
    GET    /                               the live page (static files under static/)

Auth: with a token, every route but /healthz needs `Authorization: Bearer TOKEN` or the
page's cookie (set by its login form: a digest of the token, never the token itself;
`Secure` when the page came over HTTPS), compared in constant time; the token is never
logged or echoed. A client that gave a wrong token `Lockout.ATTEMPTS` times within
`Lockout.WINDOW` seconds is answered 429 (with Retry-After) until the oldest leaves it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import itertools
import json
import logging
import re
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

import plait
from plait.agent.loop import PLANNER_IDS
from plait.agent.loop import edit_floor as plan_floor
from plait.agent.parse import MAX_TASK_ID
from plait.errors import PlaitError, PlanError
from plait.runs.session import logged_task_ids
from plait.stores.base import RunExists

from . import loopback
from .runs import LiveRun, RunManager, key_text, parse_key

log = logging.getLogger("plait.serve")
COOKIE = "plait_token"
KEEPALIVE_SECONDS = 15.0  # a comment line on an idle stream, so proxies keep it open
MAX_BODY = 8 * 1024 * 1024
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_TASK_ID = re.compile(r"[0-9]{1,18}")
STATUSES = ("running", "done", "failed", "cancelled", "interrupted")  # a run's, as listed
SETTLED = ("done", "failed", "skipped", "cancelled")  # a task's, once it will not run
STATIC = files("plait.serve").joinpath("static")


# Model specs a client may name: they reach a server over the network, never a file here.
CLIENT_MODEL_SCHEMES = ("openai", "ollama")


def check_model(spec: str, own: str) -> None:
    """A model a client asks for: the server's own `--model`, the embedded `local`, or an
    `openai:`/`ollama:` spec. Specs that read a file on the server (`local:/path`,
    `replay:FILE`) are refused: a client must not make the server open its files (nor learn
    which exist from the error)."""
    scheme, _, rest = spec.partition(":")
    if spec == own or spec == "local" or (scheme in CLIENT_MODEL_SCHEMES and rest):
        return
    raise Failure(
        400,
        f'"model": {spec[:60]!r} is not allowed from a client: use the server\'s own --model, '
        '"local", or an openai:/ollama: spec',
    )


class Failure(Exception):
    """A request that cannot be done: its status code and one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status)


class Lockout:
    """Wrong tokens by client address: after `ATTEMPTS` within `WINDOW` seconds, a client
    waits until the oldest of them leaves the window, so guessing the token online runs
    at `ATTEMPTS` a `WINDOW` at most. While it waits, every credential it gives is refused
    unread, the right one too (else the refusals would tell a guess apart). A wrong value
    given again counts once: it tells a guesser nothing, and a page still holding the
    cookie of a token since changed sends it on every poll and reload. Behind a proxy
    the address is the proxy's unless $FORWARDED_ALLOW_IPS names it (serve/__init__.py)."""

    ATTEMPTS = 10
    WINDOW = 60.0
    CLIENTS = 10_000  # addresses remembered at most, the least recent forgotten first

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        # Per client: (when, a digest of the wrong value or None) of its recent failures.
        self._failed: OrderedDict[str, deque[tuple[float, bytes | None]]] = OrderedDict()

    def _recent(self, client: str) -> deque[tuple[float, bytes | None]]:
        failed = self._failed.get(client)
        if failed is None:
            return deque()
        while failed and failed[0][0] <= self.clock() - self.WINDOW:
            failed.popleft()
        return failed

    def wait(self, client: str) -> float:
        """Seconds `client` must still wait before its credentials are read (0: none)."""
        failed = self._recent(client)
        if len(failed) < self.ATTEMPTS:
            return 0.0
        return failed[0][0] + self.WINDOW - self.clock()

    def failed(self, client: str, given: bytes | None = None) -> None:
        """`client` gave a wrong token: `given`, the credential as sent (None: unknown, so
        never the same as an earlier one)."""
        mark = None if given is None else hashlib.blake2b(given, digest_size=16).digest()
        if mark is None or all(m != mark for _, m in self._recent(client)):
            self._failed.setdefault(client, deque(maxlen=self.ATTEMPTS))
            self._failed[client].append((self.clock(), mark))
        self._failed.move_to_end(client)
        while len(self._failed) > self.CLIENTS:
            self._failed.popitem(last=False)

    def refusal(self, client: str) -> Response | None:
        """The 429 for `client` while it must wait, else None."""
        wait = self.wait(client)
        if wait <= 0:
            return None
        response = _error(429, f"too many wrong tokens: try again in {wait:.0f} s")
        response.headers["Retry-After"] = str(max(1, round(wait)))
        return response


def _client(scope: Scope) -> str:
    """Who a request counts against: its address; an IPv6 one's /64 (one host is handed
    2**64 addresses: each would be a fresh client), an IPv4-mapped one's IPv4 address."""
    client = scope.get("client")
    if not client:
        return ""
    host = str(client[0])
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host  # not an address (a test client, a unix socket): as it is
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return host


class TokenAuth:
    """Pure ASGI middleware: the bearer token (or the page's cookie) on every route but
    /healthz and the login form. Streams pass through untouched."""

    def __init__(self, app: ASGIApp, token: str | None, lockout: Lockout | None = None) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.cookie = cookie_value(token).encode() if token else None
        self.lockout = lockout or Lockout()

    def offered(self, scope: Scope) -> bool:
        """Whether the request carries a credential at all (a bearer header or the cookie)."""
        request = Request(scope)
        return "authorization" in request.headers or COOKIE in request.cookies

    def given(self, scope: Scope) -> bytes:
        """The credentials a request carries, as sent (the bearer header's token, the cookie)."""
        request = Request(scope)
        header = request.headers.get("authorization", "").encode("latin-1")
        scheme, _, token = header.partition(b" ")
        bearer = token.strip() if scheme.lower() == b"bearer" else header
        return bearer + b"\0" + _raw(request.cookies.get(COOKIE, ""))

    def allowed(self, scope: Scope) -> bool:
        if self.token is None:
            return True
        request = Request(scope)
        # Header values arrive as latin-1 text: back to the bytes the client sent (UTF-8).
        header = request.headers.get("authorization", "").encode("latin-1")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token):
            return True
        cookie = request.cookies.get(COOKIE)
        assert self.cookie is not None
        return cookie is not None and hmac.compare_digest(_raw(cookie), self.cookie)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/healthz":
            await self.app(scope, receive, send)
            return
        if self.token is None and (refused := _other_site(scope)):
            await _error(403, refused)(scope, receive, send)
            return
        if scope["path"] == "/login":
            await self.app(scope, receive, send)
            return
        client, offered = _client(scope), self.token is not None and self.offered(scope)
        if offered and (waiting := self.lockout.refusal(client)) is not None:
            await waiting(scope, receive, send)
            return
        if self.allowed(scope):
            await self.app(scope, receive, send)
            return
        if offered:
            self.lockout.failed(client, self.given(scope))
        response: Response
        if scope["path"] == "/" and scope["method"] == "GET":
            response = HTMLResponse(_login_page(), status_code=401)
        else:
            response = _error(401, "missing or wrong bearer token")
        response.headers["WWW-Authenticate"] = "Bearer"
        await response(scope, receive, send)


def _other_site(scope: Scope) -> str | None:
    """Why a request to a server without a token is refused, if it is: it must name this
    loopback server as its Host (a DNS name rebound to 127.0.0.1 does not), and come from
    its own page when a browser says where from (Origin). Else any web page open in the
    user's browser could start runs, and so run tools, on this machine."""
    headers = Headers(scope=scope)
    host = headers.get("host")
    if host is None:
        return None  # not from a browser: browsers always send Host
    name = host[1 : host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
    if not loopback(name):
        return (
            f"Host {_shown(host)!r} is not a loopback address: without --token, plait serve"
            " answers to 127.0.0.1, localhost or [::1] only"
        )
    origin = headers.get("origin")
    if origin is not None and origin != f"http://{host}":
        return (
            f"Origin {_shown(origin)!r} is another site: without --token, plait serve takes"
            " requests from its own page only"
        )
    return None


def cookie_value(token: str) -> str:
    """What the page's cookie holds: ASCII whatever the token's characters, and not the
    token (a cookie jar read elsewhere does not give away the bearer token)."""
    return hmac.new(token.encode(), b"plait serve page cookie", hashlib.sha256).hexdigest()


def _raw(text: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode()


def _login_page(wrong: bool = False) -> str:
    note = '<p class="wrong">That token is not right.</p>' if wrong else ""
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>plait · sign in</title><meta name="viewport" content="width=device-width">
<style>body{{font:15px system-ui,sans-serif;display:grid;place-items:center;height:90vh}}
form{{display:grid;gap:.6em}}.wrong{{color:#b00}}</style></head><body>
<form method="post" action="/login"><h1>plait</h1>{note}
<label>Token <input type="password" name="token" autocomplete="current-password" autofocus>
</label><button type="submit">Sign in</button></form></body></html>"""


async def _body(request: Request) -> bytes:
    """The request's body, refused (413) once it passes MAX_BODY: never held whole first."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise Failure(413, f"request body over {MAX_BODY} bytes")
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise Failure(413, f"request body over {MAX_BODY} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def _json_body(request: Request) -> Any:
    raw = await _body(request)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise Failure(400, f"request body is not JSON: {e}") from None
    except RecursionError:
        raise Failure(400, "request body is not JSON this server reads: nested too deep") from None


def _shown(text: str, most: int = 80) -> str:
    """An id from the request, as an error message shows it: printable and short."""
    text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= most else text[:most] + "…"


@dataclass(frozen=True, slots=True)
class EditIds:
    """What ids a run's live edits keep clear of: those at or below `floor`, the highest its
    own body may still give a task (agent/loop.py `edit_floor`: a written plan's highest,
    or a question's planner's range), and those its log holds from earlier sessions
    (`logged`), which a resumed graph may not hold again yet."""

    floor: int
    whose: str  # whose ids those at or below the floor are: "the plan's", "the planner's"
    logged: set[int]

    def next(self, ids: Collection[int]) -> int:
        """The id an edit without one of its own takes, given the graph's `ids`: the next
        above them all; past the 18 digits an id may have (an edit gave 999…9), the lowest
        free one above the floor."""
        top = max(self.floor, max(self.logged, default=0), max(ids, default=0)) + 1
        if top < MAX_TASK_ID:
            return top
        free = (i for i in itertools.count(self.floor + 1) if i not in ids)
        return next(i for i in free if i not in self.logged)

    def refused(self, given: int, ids: Collection[int]) -> str | None:
        """Why an edit may not take id `given` (not in the graph), if it may not."""
        if given == 0:  # the planner numbers from 1; a resume puts back edits above floor
            above = self.next(ids) - 1
            return f'task id 0 is no edit\'s to take: leave "id" out, or give one above {above}'
        if given in self.logged:
            return f'task id {given} was taken by an earlier session of this run: leave "id" out'
        if 0 < given <= self.floor:
            return (
                f'task id {given} is {self.whose} to give (ids 1 to {self.floor}): leave "id" out,'
                f" or give one above {self.next(ids) - 1}"
            )
        return None


def build_app(manager: RunManager, token: str | None, resume_on_start: bool = True) -> ASGIApp:
    """The ASGI app: routes over `manager`, behind the token check when there is one."""
    lockout = Lockout()  # one for the login form and the token check: guesses add up
    metrics = manager.metrics
    tools = manager.tools

    def live_run(run_id: str) -> LiveRun:
        live = manager.live.get(run_id)
        if live is None:
            raise Failure(409, f"run {_shown(run_id)} is not running in this server")
        return live

    def editable(run_id: str) -> LiveRun:
        live = live_run(run_id)
        if live.closing:  # its graph has closed: a task added now would never run
            raise Failure(409, f"run {run_id} is finishing: it takes no more edits")
        return live

    async def known(run_id: str) -> None:
        if (
            run_id not in manager.live
            and await asyncio.to_thread(manager.store.get, run_id) is None
        ):
            raise Failure(404, f"no run {_shown(run_id)}")

    def check_plan(plan: str) -> None:
        """Raise PlanError for a plan that cannot run. In a thread: a plan of 100,000 tasks
        takes seconds to check, and the loop has every other run and stream to serve."""
        for task in plait.parse_plan(plan, tools=tools):
            tools.prepare(task)

    async def create_run(request: Request) -> Response:
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise Failure(400, "the body must be a JSON object")
        extra = sorted(set(body) - {"plan", "question", "model", "max_replans", "run_id"})
        if extra:
            raise Failure(400, f"unknown field {extra[0]!r}")
        run_id = body.get("run_id")
        if run_id is not None and (not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id)):
            raise Failure(400, "run_id must be 1-128 letters, digits, '.', '_' or '-'")
        plan, question = body.get("plan"), body.get("question")
        if (plan is None) == (question is None):
            raise Failure(400, 'give exactly one of "plan" or "question"')
        try:
            if plan is not None:
                if not isinstance(plan, str):
                    raise Failure(400, '"plan" must be a string')
                await asyncio.to_thread(check_plan, plan)  # before anything runs
                live = await manager.start_plan(plan, run_id)
            else:
                model, replans = body.get("model"), body.get("max_replans", 2)
                if not isinstance(question, str) or not question.strip():
                    raise Failure(400, '"question" must be a non-empty string')
                if model is not None and not isinstance(model, str):
                    raise Failure(400, '"model" must be a string (a model spec)')
                if model is not None:
                    check_model(model, manager.model)
                if type(replans) is not int or replans < 0:
                    raise Failure(400, '"max_replans" must be an integer >= 0')
                live = await manager.start_question(question, model, replans, run_id)
        except PlanError as e:
            raise Failure(400, f"plan: {e}") from None
        except RunExists as e:
            raise Failure(409, str(e)) from None
        except PlaitError as e:
            raise Failure(400, str(e)) from None
        return JSONResponse({"run_id": live.run_id}, status_code=201)

    async def list_runs(request: Request) -> Response:
        try:
            limit = int(request.query_params.get("limit", "50"))
        except ValueError:
            raise Failure(400, "limit must be an integer") from None
        if not 1 <= limit <= 10_000:
            raise Failure(400, "limit must be 1 to 10000")
        status = request.query_params.get("status") or None
        if status is not None and status not in STATUSES:
            raise Failure(400, f"status {_shown(status)!r} is not one of {', '.join(STATUSES)}")
        return JSONResponse(await manager.runs(limit, status))

    async def get_run(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        data = await manager.result(run_id)
        if data is None:
            raise Failure(404, f"no run {_shown(run_id)}")
        return JSONResponse(data)

    async def events(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        await known(run_id)
        try:
            after = parse_key(request.headers.get("last-event-id"))
        except ValueError as e:
            raise Failure(400, str(e)) from None
        if after[0] > 0:
            newest = await manager.newest(run_id)
            if after[0] > newest:
                raise Failure(
                    400,
                    f"Last-Event-ID {key_text(after)} is past the end of run {_shown(run_id)}"
                    f" (its log has {newest} records): an id of another run?",
                )
        return StreamingResponse(
            _frames(manager, run_id, after),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def cancel_run(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        await known(run_id)
        live = live_run(run_id)
        status = await manager.cancel(live)
        if status != "cancelled":  # it ended on its own before the cancel reached it
            raise Failure(409, f"run {run_id} had already finished: {status}")
        return JSONResponse({"run_id": run_id, "status": "cancelled"})

    floors: weakref.WeakKeyDictionary[LiveRun, asyncio.Future[EditIds]]
    floors = weakref.WeakKeyDictionary()

    async def read_edit_ids(run_id: str) -> EditIds:
        info = await asyncio.to_thread(manager.store.get, run_id)
        written = info.source if info is not None and info.kind == "plan" else None
        try:
            floor = await asyncio.to_thread(plan_floor, written, tools)
        except PlanError:  # it ran, so it parsed: not with this server's tools, then
            floor = PLANNER_IDS
        logged = await asyncio.to_thread(logged_task_ids, manager.store, run_id)
        whose = "the planner's" if written is None else "the plan's"
        return EditIds(floor, whose, logged)

    async def edit_ids(live: LiveRun) -> EditIds:
        """What ids `live`'s edits must keep clear of. Read once a run, in threads: a plan
        of 100,000 tasks takes seconds to parse, and its log as long to read; edits that
        come while it is read wait for that one reading (not each its own)."""
        reading = floors.get(live)
        if reading is None:  # the run id only: a reading that held `live` would keep it
            reading = floors[live] = asyncio.ensure_future(read_edit_ids(live.run_id))
        try:
            return await asyncio.shield(reading)  # one edit's client gone stops no reading
        except Exception:
            if floors.get(live) is reading:  # failed: the next edit reads again
                del floors[live]
            raise

    async def add_task(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        await known(run_id)
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise Failure(400, "the body must be one task as a JSON object")
        kept = await edit_ids(live_run(run_id))
        # From here on nothing awaits: the id is picked and taken in one step of the loop.
        live = editable(run_id)
        scheduler = live.scheduler
        if scheduler is None:
            raise Failure(409, f"run {run_id} has not started its graph yet")
        ids = scheduler.graph.nodes
        given = body.get("id")
        if "id" not in body:
            body = {"id": kept.next(ids), **body}
        elif type(given) is int and given in ids:
            raise Failure(400, f"task id {given} is already in run {run_id}'s graph")
        elif type(given) is int and (refused := kept.refused(given, ids)):
            raise Failure(409, refused)
        try:
            parsed = plait.parse_plan(json.dumps({"tasks": [body]}), ids, tools)
            if len(parsed) != 1:
                raise Failure(400, "the body must be one task, not a join")
            node = scheduler.add(parsed[0])
        except PlanError as e:
            raise Failure(400, f"task: {e}") from None
        except PlaitError as e:
            raise Failure(400, str(e)) from None
        return JSONResponse({"run_id": run_id, "task_id": node.task.id}, status_code=201)

    async def cancel_task(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        await known(run_id)
        live = editable(run_id)
        raw = request.path_params["task_id"]
        if not (_TASK_ID.fullmatch(raw)):
            raise Failure(400, f"task id {_shown(raw)!r} is not a number (0 to 18 digits)")
        node = live.scheduler.graph.nodes.get(int(raw)) if live.scheduler is not None else None
        if node is None:
            raise Failure(404, f"run {run_id} has no task {raw}")
        if node.status in SETTLED:
            raise Failure(409, f"task {raw} of run {run_id} has already settled: {node.status}")
        try:
            cancelled = live.scheduler.cancel(int(raw))  # type: ignore[union-attr]
        except PlanError as e:
            raise Failure(409, str(e)) from None
        return JSONResponse({"run_id": run_id, "cancelled": cancelled})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True, "runs": len(manager.live)})

    async def metrics_text(request: Request) -> Response:
        infos = await asyncio.to_thread(manager.store.runs, 10_000)
        by_status: dict[str, int] = {}
        for info in infos:
            state = "running" if info.id in manager.live else info.state
            by_status[state] = by_status.get(state, 0) + 1
        by_status.setdefault("running", 0)
        return PlainTextResponse(
            metrics.text(by_status), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    async def page(request: Request) -> Response:
        html = STATIC.joinpath("index.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers={"Cache-Control": "no-cache"})

    async def login(request: Request) -> Response:
        if token is None:
            return RedirectResponse("/", status_code=303)
        client = _client(request.scope)
        refused = lockout.refusal(client)
        if refused is not None:
            return refused
        form = parse_qs((await _body(request)).decode("utf-8", "replace"))
        given = (form.get("token") or [""])[0]
        if not hmac.compare_digest(given.encode(), token.encode()):
            lockout.failed(client, given.encode() + b"\0")  # as the same token by header
            return HTMLResponse(_login_page(wrong=True), status_code=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            COOKIE,
            cookie_value(token),
            httponly=True,
            samesite="strict",
            path="/",
            # Behind a TLS proxy uvicorn takes its X-Forwarded-Proto (only from the
            # addresses in $FORWARDED_ALLOW_IPS: serve/__init__.py): the scheme is https.
            secure=request.url.scheme == "https",
        )
        return response

    def guarded(handler: Any) -> Any:
        async def call(request: Request) -> Response:
            try:
                return await handler(request)  # type: ignore[no-any-return]
            except Failure as f:
                return _error(f.status, f.message)
            except Exception as e:  # a bug: one line in the log and to the client
                return await internal(request, e)

        return call

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if resume_on_start:
            await manager.resume_held()
        adopting = asyncio.create_task(manager.adopt())
        try:
            yield
        finally:
            adopting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await adopting
            await manager.stop_all()

    routes = [
        Route("/", guarded(page), methods=["GET"]),
        Route("/login", guarded(login), methods=["POST"]),
        Route("/healthz", guarded(healthz), methods=["GET"]),
        Route("/metrics", guarded(metrics_text), methods=["GET"]),
        Route("/v1/runs", guarded(create_run), methods=["POST"]),
        Route("/v1/runs", guarded(list_runs), methods=["GET"]),
        Route("/v1/runs/{run_id}", guarded(get_run), methods=["GET"]),
        Route("/v1/runs/{run_id}/events", guarded(events), methods=["GET"]),
        Route("/v1/runs/{run_id}/cancel", guarded(cancel_run), methods=["POST"]),
        Route("/v1/runs/{run_id}/tasks", guarded(add_task), methods=["POST"]),
        Route("/v1/runs/{run_id}/tasks/{task_id}", guarded(cancel_task), methods=["DELETE"]),
        Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        code = getattr(exc, "status_code", 404)
        detail = getattr(exc, "detail", "not found")
        return _error(code, f"{request.method} {request.url.path}: {detail}")

    async def internal(request: Request, exc: Exception) -> Response:
        log.error("%s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return _error(500, f"internal error ({type(exc).__name__}): see the server's log")

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: not_found, Exception: internal},
    )
    return TokenAuth(app, token, lockout)


async def _frames(manager: RunManager, run_id: str, after: tuple[int, int]) -> AsyncIterator[str]:
    """The stream's text: a retry hint, then each event's frame, with a comment line when
    idle for KEEPALIVE_SECONDS; ends after run_finished."""
    queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=1024)

    async def pump() -> None:
        try:
            async for batch in manager.stream(run_id, after):
                await queue.put("".join(sent.frame() for sent in batch))
        except KeyError:
            pass
        finally:
            await queue.put(None)

    manager.metrics.stream_clients += 1
    producer = asyncio.create_task(pump())
    try:
        yield "retry: 1000\n\n"
        while True:
            try:
                frame = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                yield ": keepalive\n\n"
                continue
            if frame is None:
                break
            frames = [frame]  # a client behind the run gets what is waiting in one write
            while not queue.empty() and len(frames) < 512:
                more = queue.get_nowait()
                if more is None:
                    yield "".join(frames)
                    return
                frames.append(more)
            yield "".join(frames)
    finally:
        manager.metrics.stream_clients -= 1
        producer.cancel()
        with contextlib.suppress(BaseException):
            await producer


__all__ = ["build_app"]
