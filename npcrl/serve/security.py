"""Who may talk to the server: loopback by default, a bearer token for anything else, and a
per-connection rate limit."""

from __future__ import annotations

import hmac
import ipaddress
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from npcrl.errors import NpcrlError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]

UNAUTHORIZED_CLOSE = 1008
"""WebSocket close code "policy violation": sent after the ``unauthorized`` error"""


def is_loopback(host: str) -> bool:
    """True for a host only this machine can reach: ``localhost`` or a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token: anyone on the network could
    otherwise talk to the NPCs and write to the play log."""
    if token is not None and not token:
        raise NpcrlError("--token must not be empty")
    if not is_loopback(host) and token is None:
        raise NpcrlError(
            f"--host {host} is reachable from other machines: give --token T too (clients then send "
            "'Authorization: Bearer T' or '?token=T'), or keep the default --host 127.0.0.1"
        )


def presented_token(scope: Scope) -> str | None:
    """The token a request carries: ``Authorization: Bearer T`` or the ``token`` query parameter."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
    tokens = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    return tokens[0] if tokens else None


class TokenGuard:
    """ASGI middleware: with a token set, every HTTP request and WebSocket must carry it. A refused
    HTTP request gets 401; a refused WebSocket is accepted, told ``unauthorized`` and closed, so a
    browser client can show why."""

    def __init__(self, app: Asgi, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or scope["type"] not in ("http", "websocket") or self._allowed(scope):
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            await _refuse_http(send)
        else:
            await _refuse_websocket(receive, send)

    def _allowed(self, scope: Scope) -> bool:
        given = presented_token(scope)
        assert self.token is not None
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())


UNAUTHORIZED = {"code": "unauthorized", "message": "missing or wrong token (send 'Authorization: Bearer T')"}


async def _refuse_http(send: Send) -> None:
    body = json.dumps({"error": {**UNAUTHORIZED, "type": "unauthorized"}}).encode()
    headers = [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _refuse_websocket(receive: Receive, send: Send) -> None:
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": json.dumps({"type": "error", **UNAUTHORIZED})})
    await send({"type": "websocket.close", "code": UNAUTHORIZED_CLOSE})


class RateLimiter:
    """A token bucket: ``rate`` messages a second on average, bursts of up to ``burst``."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._last = clock()

    def allow(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
