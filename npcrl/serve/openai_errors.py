"""Errors of the chat-completions endpoint, in the shape OpenAI clients parse:
``{"error": {"message", "type", "param", "code"}}`` with a matching HTTP status."""

from __future__ import annotations

from starlette.responses import JSONResponse


class ApiError(Exception):
    """A request the endpoint refuses; ``param`` names the request field at fault, when one is."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


def bad_field(param: str, problem: str, code: str = "invalid_value") -> ApiError:
    """A 400 naming the request field ``param``."""
    return ApiError(400, f"{param}: {problem}", param=param, code=code)
