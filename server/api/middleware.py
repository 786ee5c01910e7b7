"""Two pure ASGI middlewares around the app: a cap on request bodies, and the accounting of every response.

BodyLimit enforces the cap while the body is read: before JSON parsing and before authentication, so
neither a huge body nor a flood of them can hold the event loop or the memory (a 50 MB prompt took RSS from
63 MB to 2.5 GB before it existed). ResponseAccounting counts every API response by endpoint and status in
one place, and keeps an unexpected exception from closing the client's keep-alive connection.
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import EngineFailure
from ..metrics import Metrics, RequestObserver
from .endpoint import OBSERVER_STATE
from .errors import PayloadTooLarge, error_response, route_of, shape_of

log = logging.getLogger(__name__)


def endpoint_of(scope: Scope, counted: frozenset[str]) -> str | None:
    """The endpoint a response counts under: the name of the route that matched (the endpoint objects name
    theirs), "other" where none did (a 404). Probes, scrapes and docs are not counted: a 503 from /ready while
    the model loads is not a failed request, and scrapes would drown the request rate."""
    route = route_of(scope)
    if route is None:
        return "other"
    name = getattr(route, "name", None)
    return name if name in counted else None


class BodyLimit:
    """413 when Content-Length says too much, or as soon as the bytes read pass the cap."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def error(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"the request body exceeds {self.max_bytes} bytes (CODESERVE_MAX_REQUEST_BODY_BYTES)"
                               "; send less context", param="body")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            # the unread body is discarded, unparsed
            await error_response(self.error(), shape_of(scope))(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI lets an HTTPException from the body read through (anything else becomes a 400);
                    # the app's handler answers it in the route's error shape with this status.
                    raise HTTPException(413, self.error().message)
            return message

        await self.app(scope, counted, send)


class ResponseAccounting:
    """Counts each response once, by endpoint and final status: what was sent, or what the request's observer
    says it became (a stream's in-band error, 499 when the client left)."""

    def __init__(self, app: ASGIApp, metrics: Metrics | None, counted: frozenset[str]):
        self.app = app
        self.metrics = metrics
        self.counted = counted  # the endpoints' names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent: int | None = None

        async def tracked(message: Message) -> None:
            nonlocal sent
            if message["type"] == "http.response.start":
                sent = int(message["status"])
            await send(message)

        scope.setdefault("state", {})
        try:
            await self.app(scope, receive, tracked)
        except Exception:
            # Answered here rather than re-raised: Starlette's outermost error middleware would answer too, but
            # re-raise, and uvicorn would then close the client's keep-alive connection.
            log.exception("unhandled error on %s", scope.get("path"))
            if sent is None:
                await error_response(EngineFailure("internal error; the server log has the details"),
                                     shape_of(scope))(scope, receive, tracked)
        observer = scope["state"].get(OBSERVER_STATE)
        final = observer.status if isinstance(observer, RequestObserver) and observer.status else sent
        endpoint = endpoint_of(scope, self.counted)
        if self.metrics is not None and endpoint is not None and final is not None:
            self.metrics.count_response(endpoint, final)
