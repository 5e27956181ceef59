"""The server's web application: ``/health``, the WebSocket ``/v1/ws`` and, when present, the
chat-completions routes, behind the token guard."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from npcrl.serve.protocol import PROTOCOL
from npcrl.serve.security import TokenGuard
from npcrl.serve.session import WsSession
from npcrl.serve.state import ServerState

OPENAI_MODULE = "npcrl.serve.openai_compat"


def build_app(state: ServerState, token: str | None = None) -> Starlette:
    """The app serving ``state``. Its lifespan starts loading the model and, at shutdown (after
    uvicorn has closed every connection, which ends their conversations), closes the state."""

    async def health(request: Request) -> JSONResponse:
        return JSONResponse(health_body(state))

    async def websocket(ws: WebSocket) -> None:
        await WsSession(state, ws).run()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.start()
        try:
            yield
        finally:
            state.close()

    routes: list[BaseRoute] = [Route("/health", health, methods=["GET"]), WebSocketRoute("/v1/ws", websocket)]
    routes += optional_routes(state)
    return Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(TokenGuard, token=token)])


def health_body(state: ServerState) -> dict[str, object]:
    """Never waits: what a launcher polls until the server is ready."""
    return {
        "status": "ready" if state.ready else "loading",
        "bundle_id": state.bundle_id,
        "protocol": PROTOCOL,
        "conversations": state.conversations,
    }


def optional_routes(state: ServerState) -> list[BaseRoute]:
    """The chat-completions routes, if this installation has them."""
    if importlib.util.find_spec(OPENAI_MODULE) is None:
        return []
    module = importlib.import_module(OPENAI_MODULE)
    return list(module.openai_routes(state))
