"""The life of one generation request, the same for every endpoint: readiness, validation, a request
slot, metrics, streaming, and cancellation when the client goes away."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..generation.core import Generator
from ..metrics import Metrics, RequestObserver
from .auth import KeyCheck
from .errors import ApiError, NotReady, sse_error
from .limits import Limiter

log = logging.getLogger(__name__)

P = TypeVar("P")
CLIENT_CLOSED = 499  # nginx's convention for "client closed request"; recorded in metrics only
DISCONNECT_POLL_S = 0.1


@dataclass
class Runtime:
    """What the routes share. Built by the entry point; the engine arrives when it has loaded."""

    limiter: Limiter
    keys: KeyCheck
    metrics: Metrics | None = None
    generator: Generator | None = None
    plan: dict[str, Any] | None = None
    status: str = "loading"  # loading | ready | failed | stopping
    detail: str = ""
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def require_generator(self) -> Generator:
        if self.generator is None or not self.ready:
            message = {"failed": f"the model failed to load: {self.detail}",
                       "stopping": "the server is shutting down"}.get(self.status, "the model is still loading")
            raise NotReady(message, headers={"Retry-After": "5"})
        return self.generator

    def observer(self, endpoint: str) -> RequestObserver:
        return RequestObserver(self.metrics, endpoint)


async def respond(request: Request, runtime: Runtime, endpoint: str, stream: bool,
                  prepare: Callable[[Generator], P],
                  run: Callable[[Generator, P, RequestObserver], Awaitable[Any]],
                  run_stream: Callable[[Generator, P, RequestObserver], AsyncIterator[str]]) -> Response:
    observer = runtime.observer(endpoint)
    try:
        gen = runtime.require_generator()
        prepared = prepare(gen)
        if stream:
            runtime.limiter.refuse_if_full()  # a 429 must come before the stream's 200 headers
            return StreamingResponse(_stream(runtime, gen, prepared, observer, run_stream),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        async with runtime.limiter.slot():
            observer.begin()
            result = await _unless_disconnected(request, run(gen, prepared, observer))
    except ApiError as error:
        observer.end(error.status)
        raise
    if result is _DISCONNECTED:
        observer.end(CLIENT_CLOSED, cancelled=True)
        return Response(status_code=CLIENT_CLOSED)
    observer.end(200)
    return JSONResponse(result)


_DISCONNECTED = object()


async def _unless_disconnected(request: Request, work: Awaitable[Any]) -> Any:
    """Run `work`, cancelling it (which aborts its engine requests) if the client disconnects."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                return _DISCONNECTED
    finally:
        if not task.done():  # this handler itself was cancelled
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _stream(runtime: Runtime, gen: Generator, prepared: P, observer: RequestObserver,
                  run_stream: Callable[[Generator, P, RequestObserver], AsyncIterator[str]]) -> AsyncIterator[str]:
    status, cancelled = 200, True
    try:
        async with runtime.limiter.slot():
            observer.begin()
            async for event in run_stream(gen, prepared, observer):
                yield event
        cancelled = False
    except ApiError as error:  # e.g. the queue filled between the check and the start
        status, cancelled = error.status, False
        yield sse_error(error)
    finally:
        observer.end(CLIENT_CLOSED if cancelled else observer.error_status or status, cancelled=cancelled)
