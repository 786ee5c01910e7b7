"""HTTP's view of errors: each ServeError class -> status and OpenAI's error type, in one table, and the
handlers that answer them. An error's shape is its API's: OpenAI's {"error": {"message", "type", "param", "code"}}
by default; an endpoint of another API (Anthropic's Messages) names its own ErrorShape, and every error answered on
its routes takes it, decided here once from the route the request came in on (shape_of)."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from ..errors import (
    ContextLengthExceeded,
    EngineFailure,
    EngineUnavailable,
    InvalidRequest,
    ModelNotFound,
    ServeError,
)

# What a client told "not now" (429 at capacity, 503 while loading) should wait before retrying: requests
# finish within seconds, and a load shows progress on /ready, so a short, single hint serves both.
RETRY_AFTER_S = 1

__all__ = ["ContextLengthExceeded", "EngineFailure", "EngineUnavailable", "InvalidRequest", "ModelNotFound",
           "ServeError"]


class Unauthorized(ServeError):
    code = "invalid_api_key"


class NotFound(ServeError):
    """A route or resource that does not exist (not a model: that is ModelNotFound)."""


class RateLimited(ServeError):
    code = "rate_limit_exceeded"


class NotReady(ServeError):
    code = "model_loading"


class PayloadTooLarge(ServeError):
    code = "request_too_large"


class Superseded(ServeError):
    """A newer completion from the same user or id_slot took this one's place (api/supersession.py)."""

    code = "request_superseded"


# Most specific class first; the first match wins. Types are OpenAI's.
_HTTP: tuple[tuple[type[ServeError], int, str], ...] = (
    (InvalidRequest, 400, "invalid_request_error"),
    (PayloadTooLarge, 413, "invalid_request_error"),
    (Superseded, 409, "invalid_request_error"),
    (Unauthorized, 401, "invalid_request_error"),
    (ModelNotFound, 404, "invalid_request_error"),
    (NotFound, 404, "invalid_request_error"),
    (RateLimited, 429, "rate_limit_error"),
    (NotReady, 503, "server_error"),
    (EngineUnavailable, 503, "server_error"),
    (EngineFailure, 500, "server_error"),
    (ServeError, 500, "server_error"),
)


def status_of(error: ServeError) -> int:
    return next(status for kind, status, _ in _HTTP if isinstance(error, kind))


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """OpenAI's error shape, documented in the OpenAPI schema for every error status."""

    error: ErrorDetail


_STATUS_TEXT = ((400, "invalid request (the message names the field)"), (401, "missing or invalid API key"),
                (404, "unknown model or route"), (413, "request body over the cap"),
                (429, "server at capacity; see Retry-After"),
                (500, "engine failure"), (503, "model loading, engine gone or server stopping"))


class ErrorShape:
    """How an API writes an error: its body for a status, the name of the SSE event that carries it mid-stream
    (api/sse.py frames it), and the model that documents it. This one is OpenAI's; an endpoint of another API sets
    its own as Endpoint.error_shape."""

    model: ClassVar[type[BaseModel]] = ErrorBody
    event_name: ClassVar[str | None] = None  # the SSE `event:` of an error mid-stream (OpenAI's has none)

    def body(self, error: ServeError, status: int) -> dict[str, Any]:
        kind = next(kind for cls, _, kind in _HTTP if isinstance(error, cls))
        return {"error": {"message": error.message, "type": kind, "param": error.param, "code": error.code}}

    def responses(self) -> dict[int | str, dict[str, Any]]:
        """The error statuses as the OpenAPI document describes them."""
        return {status: {"model": self.model, "description": text} for status, text in _STATUS_TEXT}


OPENAI = ErrorShape()
ERROR_RESPONSES = OPENAI.responses()
SHAPE_ATTRIBUTE = "error_shape"  # Endpoint.mount sets it on its route function: its API's ErrorShape


def route_of(scope: Scope) -> BaseRoute | None:
    """The route a request came in on: the router's match, or the first route that matches where a middleware
    answers before routing (the body cap); None where none does (a 404)."""
    route = scope.get("route")
    if route is None:
        routes = getattr(getattr(scope.get("app"), "router", None), "routes", ())
        route = next((r for r in routes if r.matches(scope)[0] != Match.NONE), None)
    return route


def shape_of(scope: Scope) -> ErrorShape:
    """The error shape of the API the request came in on: its endpoint's, OpenAI's for every other route."""
    shape = getattr(getattr(route_of(scope), "endpoint", None), SHAPE_ATTRIBUTE, OPENAI)
    return shape if isinstance(shape, ErrorShape) else OPENAI


# pydantic names the union member it tried in `loc` ("str", "list[str]", "function-after[...]"), and a tagged
# union's member by its tag, which the protocols write with a space ("text block"): not a field
_UNION_TAG = re.compile(r"^(str|int|float|bool|list\[.*\]|function-\w+\[.*\]|constrained-\w+|\w+ \w+)$")


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body" and not (isinstance(p, str) and _UNION_TAG.match(p))]
    return ".".join(parts) if parts else "body"


def validation_error(exc: RequestValidationError) -> InvalidRequest:
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return InvalidRequest(f"malformed JSON body: {first.get('ctx', {}).get('error', first['msg'])}")
    field = _field(tuple(first.get("loc", ())))
    more = f" (and {len(exc.errors()) - 1} more problems)" if len(exc.errors()) > 1 else ""
    if first.get("type") == "extra_forbidden":
        return InvalidRequest(f"'{field}' is not supported by this server; remove it (codeserve refuses a field "
                              f"rather than ignore it){more}", param=field, code="unsupported_field")
    return InvalidRequest(f"invalid value for '{field}': {first['msg']}{more}", param=field)


def error_response(error: ServeError, shape: ErrorShape = OPENAI, status: int | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    status = status or status_of(error)
    return JSONResponse(shape.body(error, status), status_code=status, headers=headers or error.headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return error_response(exc, shape_of(request.scope))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc), shape_of(request.scope))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error: ServeError = InvalidRequest(str(exc.detail))
        if exc.status_code == 404:
            error = NotFound(str(exc.detail), code="not_found")
        elif exc.status_code == 413:  # the body cap (middleware.BodyLimit), hit while FastAPI read the body
            error = PayloadTooLarge(str(exc.detail), param="body")
        # e.g. 405's Allow header
        return error_response(error, shape_of(request.scope), exc.status_code, dict(exc.headers or {}))
    # Anything else is answered (500) and logged by middleware.ResponseAccounting, which, unlike Starlette's
    # outermost error middleware, does not re-raise and so keeps the client's keep-alive connection.
