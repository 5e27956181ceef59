"""Running the app: the listening socket (bound before the model loads, so that the port is known
at once), uvicorn, and the shutdown order: connections (their conversations end), then the writer."""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass

import uvicorn

from npcrl.errors import NpcrlError
from npcrl.serve.app import build_app
from npcrl.serve.state import ServerState

WS_MAX_BYTES = 1024 * 1024
"""frames up to this size are read and answered ``too_large`` (the protocol's limit is 64 KiB);
a larger one closes the connection (code 1009), so a client cannot make the server buffer more"""
SHUTDOWN_GRACE_S = 10
"""at shutdown, how long open connections get to finish before they are dropped"""


@dataclass(frozen=True)
class Listen:
    host: str
    port: int
    token: str | None = None


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (port 0: a free one)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        raise NpcrlError(f"cannot listen on {host}:{port} ({exc})") from None
    return sock


def url_of(host: str, sock: socket.socket) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{sock.getsockname()[1]}"


def uvicorn_server(state: ServerState, token: str | None = None) -> uvicorn.Server:
    """A uvicorn server of the app; it stops by itself if the model cannot be loaded."""
    config = uvicorn.Config(
        build_app(state, token),
        ws="websockets-sansio",
        ws_max_size=WS_MAX_BYTES,
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )
    server = uvicorn.Server(config)

    def stop(error: BaseException) -> None:
        server.should_exit = True

    state.on_load_failed = stop
    return server


def serve(state: ServerState, listen: Listen) -> int:
    """Serve until SIGINT or SIGTERM; prints ``npcrl serve: listening on URL`` first. Returns 0, or
    raises ``NpcrlError`` if the model could not be loaded."""
    sock = bind(listen.host, listen.port)
    server = uvicorn_server(state, listen.token)
    print(f"npcrl serve: listening on {url_of(listen.host, sock)}", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if state.load_error is not None:
        raise NpcrlError(f"cannot load the model: {type(state.load_error).__name__}: {state.load_error}")
    if not server.started:
        print("npcrl serve: the server did not start (see the messages above)", file=sys.stderr)
        return 1
    return 0
