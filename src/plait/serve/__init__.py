"""`plait serve`: runs over HTTP, their events as resumable server-sent event streams, and a
live page that draws them. Needs `plait[serve]` (Starlette and uvicorn).

One process, one event loop, many runs at once. The server is a client of the run store
like the CLI: a run it held when it was killed is resumed when it starts again on the same
store (the store's lease keeps two servers off one run), and a stream picks up from the
last event id its client saw. app.py has the routes, runs.py the runs and their streams,
metrics.py the counters, static/ the page (plain HTML, JS and CSS: no build step, no CDN).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys

import plait
from plait.errors import PlaitError
from plait.stores import redact_url

DEFAULT_PORT = 8321


def loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so the address (port 0: a free one) is known and
    printed before the server starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise PlaitError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(
    tools: tuple[str, ...] | str,
    model: str,
    store_url: str,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    token: str | None = None,
) -> int:
    """Run the server until SIGINT or SIGTERM; its runs are left resumable when it stops."""
    try:
        import uvicorn
    except ImportError:
        raise PlaitError("plait serve needs plait[serve]: pip install 'plait[serve]'") from None
    from .app import build_app
    from .metrics import Metrics
    from .runs import RunManager

    if token and (token != token.strip() or not token.isprintable()):
        raise PlaitError(
            "the token has spaces at an end or control characters: no client could send it"
            " in an Authorization header"
        )
    if not token and not loopback(host):
        raise PlaitError(
            f"--host {host} is not loopback: give --token (or $PLAIT_TOKEN) to listen there"
        )
    registry = plait.load_tools(tools)
    store = plait.open_store(store_url)
    manager = RunManager(store, registry, model, Metrics())
    app = build_app(manager, token or None)
    sock = bind(host, port)
    where = sock.getsockname()
    shown = f"[{where[0]}]" if ":" in where[0] else where[0]
    print(
        f"plait serve: http://{shown}:{where[1]}/  (store {redact_url(store_url)})", file=sys.stderr
    )
    sys.stderr.flush()
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=3,
        lifespan="on",
        # A client's X-Forwarded-For and -Proto are believed only from the addresses in
        # $FORWARDED_ALLOW_IPS (a proxy plait was told of); uvicorn's default believes any
        # process on 127.0.0.1, which could then name a fresh address for each token guess.
        proxy_headers="FORWARDED_ALLOW_IPS" in os.environ,
    )
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # uvicorn hands the SIGINT or SIGTERM it stopped on back to plait's handler
    finally:
        sock.close()
        store.close()
    return 0


__all__ = ["DEFAULT_PORT", "loopback", "serve"]
