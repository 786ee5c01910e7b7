"""An endpoint of the API as one object (SGLang's serving base: validate -> convert -> stream or not; vLLM's
per-endpoint router, protocol and serving side by side). A subclass names its paths and metrics name, its
request model, how a request becomes a generation job, and its blocking and streamed answers; this base serves
the life of every request the same way: the served model resolved once, preparation off the event loop, a
supersession claim, a limiter slot, metrics, framing, and cancellation when the client goes away. Every error
of a generation request is caught here, once.

Adding an endpoint: its module (or folder) with an Endpoint subclass, and its line in app.py's ENDPOINTS.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask

from ..engine.base import SamplingSettings
from ..errors import EngineFailure, InvalidRequest, ServeError
from ..generation.core import Prepared
from ..generation.served import Target
from ..metrics import RequestObserver
from ..roles import Role, role_of_endpoint
from . import sse
from .errors import OPENAI, SHAPE_ATTRIBUTE, ErrorShape, Superseded, status_of
from .runtime import Runtime
from .supersession import Claim

log = logging.getLogger(__name__)

Payload = BaseModel | dict[str, Any]
CLIENT_CLOSED = 499  # nginx's convention for "client closed request"; recorded in metrics only
OBSERVER_STATE = "codeserve_observer"  # request state key: the request's observer, read by the accounting
Body = TypeVar("Body", bound=BaseModel)


@dataclass(frozen=True)
class Job(Generic[Body]):
    """A validated request, ready to run: everything that can fail with a 400 has been checked."""

    id: str
    body: Body
    target: Target
    prepared: Prepared  # the prompts and the sampling, checked
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def sampling(self) -> SamplingSettings:
        return self.prepared.sampling

    @property
    def sequences(self) -> int:
        """Sequences the request runs at once (prompts x n): what it takes from the limiter."""
        return len(self.prepared.prompts) * self.sampling.n

    @property
    def model(self) -> str:
        return self.target.model


class Endpoint(Generic[Body]):
    name: ClassVar[str]  # as metrics and the access accounting name it
    paths: ClassVar[tuple[str, ...]]
    request: ClassVar[type[BaseModel]]
    foreign_model_names: ClassVar[bool] = False  # an unknown `model` is the client's label, not a 404
    done_event: ClassVar[str | None] = None  # ends a successful stream (OpenAI's [DONE])
    path_params: ClassVar[tuple[str, ...]] = ()  # in the path, documented, not used
    # The 200 in the OpenAPI document: its JSON (a model, or a "content" schema) and the event stream beside it.
    response_model: ClassVar[type[BaseModel] | None] = None
    response_doc: ClassVar[dict[str, Any]] = {}
    # Every error answered on its paths, before a stream and in one, takes its API's shape (api/errors.py).
    error_shape: ClassVar[ErrorShape] = OPENAI
    generates: ClassVar[bool] = True  # False: answered from the prepared prompt alone, without an engine slot

    # ---- what each endpoint says -----------------------------------------------------------------
    @property
    def role(self) -> Role:
        """Whose engine answers a request that names no model (server/roles.py's table)."""
        return role_of_endpoint(self.name)

    def model_name(self, body: Body) -> str | None:
        return getattr(body, "model", None)

    def streams(self, body: Body) -> bool:
        return bool(getattr(body, "stream", False))

    def owner(self, body: Body) -> tuple[str | None, int | None]:
        """Who the request belongs to for supersession: OpenAI's `user`, or llama.cpp's `id_slot`."""
        return None, None

    def slots(self, job: Job[Body]) -> int:
        """What the request takes from the limiter: its sequences (none for an answer without the engine)."""
        return job.sequences if self.generates else 0

    def convert(self, target: Target, body: Body) -> Job[Body]:
        """The request as a generation job; raises the 400s. Runs off the event loop (it tokenizes)."""
        raise NotImplementedError

    async def respond(self, job: Job[Body], observer: RequestObserver) -> Payload | list[Any]:
        raise NotImplementedError

    def events(self, job: Job[Body], observer: RequestObserver) -> AsyncIterator[Payload]:
        raise InvalidRequest(f"{self.paths[0]} does not stream", param="stream")

    def frame(self, payload: Payload) -> str:
        """One streamed payload as SSE text: a `data:` line (OpenAI's chat and completions)."""
        return sse.event(payload)

    def stream_error(self, error: ServeError) -> str:
        """What reports an error once the stream's 200 is out: its error shape's body as an event (OpenAI's: a
        `data:` line)."""
        return sse.error_event(error, self.error_shape)

    # ---- the same for every endpoint -------------------------------------------------------------
    def mount(self, router: APIRouter) -> None:
        async def route(request: Request, body: Any, **_: str) -> Response:
            return await self.serve(request, body)

        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        route.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter("request", kind, annotation=Request),
             inspect.Parameter("body", kind, annotation=self.request),
             *(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=str) for name in self.path_params)],
            return_annotation=Response)
        setattr(route, SHAPE_ATTRIBUTE, self.error_shape)  # how the error handlers find this API's shape
        ok = {"description": "the result, or its event stream with \"stream\": true", **self.response_doc}
        if self.response_model is not None:
            ok["model"] = self.response_model
        ok["content"] = {**ok.get("content", {}), "text/event-stream": {"schema": sse.SSE_EVENT_SCHEMA}}
        responses: dict[int | str, dict[str, Any]] = {200: ok, **self.error_shape.responses()}
        for path in self.paths:
            router.add_api_route(path, route, methods=["POST"], name=self.name, responses=responses,
                                 description=inspect.getdoc(self) or "", response_class=Response)

    async def serve(self, request: Request, body: Body) -> Response:
        runtime: Runtime = request.app.state.runtime
        observer = runtime.observer(self.name)
        request.scope.setdefault("state", {})[OBSERVER_STATE] = observer  # the response accounting reads its status
        claim: Claim | None = None
        release: Callable[[], None] | None = None
        try:
            target = runtime.resolve(self.model_name(body), self.role, self.foreign_model_names)
            observer.model = target.model
            # Tokenizing a long prompt takes a CPU for a while: never on the event loop, which serves every stream.
            job = await asyncio.to_thread(self.convert, target, body)
            sequences = self.slots(job)
            if runtime.supersession is not None:  # only a valid request takes its owner's place
                claim = runtime.supersession.claim(request, *self.owner(body))
            release = _once(lambda: _release(runtime, claim))
            # The slot is taken before any 200 goes out (a full server answers 429, also to streams); a client
            # that leaves while queued gives up its place, as does one superseded while queued.
            if sequences and await _unless_disconnected(request, runtime.limiter.acquire(sequences),
                                                         claim) is _DISCONNECTED:
                observer.end(CLIENT_CLOSED, cancelled=True)
                return Response(status_code=CLIENT_CLOSED)
            release = _once(lambda: _release(runtime, claim, sequences))
            observer.begin()
            if self.streams(body):
                payloads = _until_superseded(self.events(job, observer), claim)
                response = StreamingResponse(_stream(self, observer, payloads, release),
                                             media_type="text/event-stream", background=BackgroundTask(release),
                                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
                release = None  # the stream owns the slot now
                return response
            result = await _unless_disconnected(request, self.respond(job, observer), claim)
        except ServeError as error:
            observer.end(status_of(error), superseded=isinstance(error, Superseded))
            raise
        except BaseException:
            observer.end(500)
            raise
        finally:
            if release is not None:
                release()
        if result is _DISCONNECTED:
            observer.end(CLIENT_CLOSED, cancelled=True)
            return Response(status_code=CLIENT_CLOSED)
        observer.end(200)
        if isinstance(result, BaseModel):
            return Response(result.model_dump_json(), media_type="application/json")
        return JSONResponse(result)  # compact separators: llama.vim looks for `"content":"`


def _release(runtime: Runtime, claim: Claim | None, sequences: int = 0) -> None:
    """Give back what a request holds: its owner's place and its limiter slot (once acquired)."""
    if runtime.supersession is not None:
        runtime.supersession.release(claim)
    if sequences:
        runtime.limiter.release(sequences)


def _once(action: Callable[[], None]) -> Callable[[], None]:
    done = False

    def run() -> None:
        nonlocal done
        if not done:
            done = True
            action()

    return run


_DISCONNECTED = object()


async def _disconnect(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read, so nothing else arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request, work: Awaitable[Any], claim: Claim | None) -> Any:
    """Run `work`, cancelling it (which aborts its engine requests) if the client disconnects first, or
    raising Superseded if a newer request of the same owner arrives first."""
    task = asyncio.ensure_future(work)
    listener = asyncio.ensure_future(_disconnect(request))
    waiters = {task, listener}
    superseded = asyncio.ensure_future(claim.event.wait()) if claim is not None else None
    if superseded is not None:  # only requests with an owner wait on a third event
        waiters.add(superseded)
    try:
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        if superseded in done and claim is not None:
            raise claim.error()
        return _DISCONNECTED
    finally:
        for pending in waiters:
            pending.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


async def _until_superseded(payloads: AsyncIterator[Payload], claim: Claim | None) -> AsyncIterator[Payload]:
    """The stream's payloads until a newer request of the same owner arrives: then the pending step is
    cancelled (the generation's cleanup aborts its engine request) and Superseded is raised."""
    if claim is None:
        async for payload in payloads:
            yield payload
        return
    superseded = asyncio.ensure_future(claim.event.wait())
    step: asyncio.Future[Payload] | None = None
    try:
        while True:
            step = asyncio.ensure_future(anext(payloads))
            await asyncio.wait({step, superseded}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                raise claim.error()
            try:
                payload = step.result()
            except StopAsyncIteration:
                return
            yield payload
    finally:
        # However this ends (superseded, or the client left and Starlette cancelled the stream), the pending
        # step is cancelled first: that runs the generation's cleanup, which aborts its engine request.
        pending = [task for task in (superseded, step) if task is not None]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if isinstance(payloads, AsyncGenerator):
            await payloads.aclose()


async def _stream(endpoint: Endpoint[Any], observer: RequestObserver, payloads: AsyncIterator[Payload],
                  release: Callable[[], None]) -> AsyncIterator[str]:
    """Starlette cancels this generator when the client disconnects; the engine request is aborted then.
    The slot is released here, or by the response's background task if the stream never started."""
    status, cancelled, superseded = 200, True, False
    try:
        async for payload in payloads:
            yield endpoint.frame(payload)
        if endpoint.done_event is not None:
            yield endpoint.done_event
        cancelled = False
    except ServeError as error:  # mid-stream: the 200 is out, so the error goes as an event
        status, cancelled, superseded = status_of(error), False, isinstance(error, Superseded)
        if report := endpoint.stream_error(error):
            yield report
    except Exception:
        log.exception("a stream failed")
        status, cancelled = 500, False
        if report := endpoint.stream_error(EngineFailure("internal error while streaming; the server log has the "
                                                         "details")):
            yield report
    finally:
        release()
        observer.end(CLIENT_CLOSED if cancelled else status, cancelled=cancelled, superseded=superseded)
