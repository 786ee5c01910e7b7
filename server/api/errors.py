"""One exception tree, one handler: every error leaves as OpenAI's {"error": {...}} shape."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """OpenAI's error shape, documented in the OpenAPI schema for every error status."""

    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in ((400, "invalid request (the message names the field)"), (401, "missing or invalid API key"),
                         (404, "unknown model or route"), (429, "server at capacity; see Retry-After"),
                         (500, "engine failure"), (503, "model loading or server stopping"))
}


# Generation routes answer JSON, or an SSE stream when the request says "stream": true.
GENERATION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the result, or its event stream",
          "content": {"application/json": {}, "text/event-stream": {}}},
    **ERROR_RESPONSES,
}


class ApiError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(ApiError):
    status = 400
    type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class Unauthorized(ApiError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class NotFound(ApiError):
    status = 404
    type = "invalid_request_error"


class ModelNotFound(NotFound):
    code = "model_not_found"


class RateLimited(ApiError):
    status = 429
    type = "rate_limit_error"  # what OpenAI sends with 429
    code = "rate_limit_exceeded"


class NotReady(ApiError):
    status = 503
    type = "server_error"
    code = "model_loading"


class EngineFailure(ApiError):
    status = 500
    type = "server_error"
    code = "engine_error"


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) if parts else "body"


def validation_error(exc: RequestValidationError) -> InvalidRequest:
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return InvalidRequest(f"malformed JSON body: {first.get('ctx', {}).get('error', first['msg'])}")
    field = _field(tuple(first.get("loc", ())))
    more = f" (and {len(exc.errors()) - 1} more problems)" if len(exc.errors()) > 1 else ""
    return InvalidRequest(f"invalid value for '{field}': {first['msg']}{more}", param=field)


def sse_error(error: ApiError) -> str:
    """An error after streaming began: an SSE event carrying the same body (the stream then ends)."""
    return f"data: {json.dumps(error.body())}\n\n"


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        error = validation_error(exc)
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = NotFound if exc.status_code == 404 else InvalidRequest
        error = kind(str(exc.detail), code="not_found" if exc.status_code == 404 else None)
        return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)  # e.g. 405's Allow

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        error = EngineFailure(f"internal error: {type(exc).__name__}")
        return JSONResponse(error.body(), status_code=500)
