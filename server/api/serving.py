"""The life of one generation request, the same for every endpoint (SGLang's serving base: validate ->
convert -> stream or not): readiness, preparation, a request slot, metrics, framing, and cancellation when
the client goes away. Every error of a generation request is caught here, once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask

from ..errors import EngineFailure, EngineUnavailable, ModelNotFound, ServeError
from ..generation.core import GenerationCore
from ..metrics import Metrics, RequestObserver
from ..planner.fleet import Fleet
from ..planner.plan import Plan
from . import sse
from .auth import KeyCheck
from .errors import RETRY_AFTER_S, NotReady, Superseded, status_of
from .limits import Limiter
from .supersession import Claim, Supersession

log = logging.getLogger(__name__)

Payload = BaseModel | dict[str, Any]
CLIENT_CLOSED = 499  # nginx's convention for "client closed request"; recorded in metrics only
OBSERVER_STATE = "codeserve_observer"  # request state key: the request's observer, read by the accounting


@dataclass
class Runtime:
    """What the routes share. Built by the entry point; the engine arrives when it has loaded."""

    limiter: Limiter
    keys: KeyCheck
    metrics: Metrics | None = None
    cores: tuple[GenerationCore, ...] = ()  # one per running engine, in start order (see serve())
    roles: dict[str, GenerationCore] = field(default_factory=dict)  # who answers a request that names no model
    plan: Plan | None = None  # as planned while loading; as it turned out once the engine runs
    fleet: Fleet | None = None  # every role's plan (CODESERVE_ROLE=completion,chat), the same way
    engine: dict[str, Any] = field(default_factory=dict)  # the running engine: name and the arguments it got
    status: str = "loading"  # loading | ready | failed | stopping
    detail: str = ""
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    supersession: Supersession | None = None  # None: CODESERVE_SUPERSEDE=false
    completion_code_stops: bool = False  # CODESERVE_COMPLETION_CODE_STOPS: the default on /v1/completions

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    @property
    def core(self) -> GenerationCore | None:
        """The first engine's generation (the only one unless several roles run on separate engines)."""
        return self.cores[0] if self.cores else None

    def serve(self, core: GenerationCore, roles: tuple[str, ...] = ("completion", "chat")) -> None:
        """Add a loaded engine's generation; requests that name no model go to it for `roles` (the first engine
        added takes every role no later one claims)."""
        self.cores = (*self.cores, core)
        for role in roles:
            self.roles[role] = core

    def check_engine(self) -> str | None:
        """Why an engine can no longer serve, or None; one dead engine turns the server 'failed' (the process is
        restarted whole: a half-served fleet would send a role's requests nowhere)."""
        if self.cores and self.status in ("ready", "stopping"):
            for core in self.cores:
                reason = core.engine.dead()
                if reason is not None:
                    self.status, self.detail = "failed", reason if len(self.cores) == 1 else \
                        f"{core.served.id}: {reason}"
                    if self.metrics is not None:
                        self.metrics.ready.set(0)
                    break
        return self.detail if self.status == "failed" else None

    def require_core(self, model: str | None = None, role: str = "completion") -> GenerationCore:
        """The generation that serves `model` (any engine's), or `role`'s when the request names none."""
        if self.check_engine() is not None and self.cores:
            raise EngineUnavailable(f"the engine is gone: {self.detail}; the server is restarting",
                                    headers={"Retry-After": str(RETRY_AFTER_S)})
        if not self.cores or not self.ready:
            message = {"failed": f"the model failed to load: {self.detail}",
                       "stopping": "the server is shutting down"}.get(self.status, "the model is still loading")
            raise NotReady(message, headers={"Retry-After": str(RETRY_AFTER_S)})
        if model:
            for core in self.cores:
                if core.served.accepts(model):
                    return core
            served = ", ".join(f"'{core.served.id}'" for core in self.cores)
            raise ModelNotFound(f"the model '{model}' does not exist; this server serves {served}", param="model")
        return self.roles.get(role, self.cores[0])

    def observer(self, endpoint: str) -> RequestObserver:
        return RequestObserver(self.metrics, endpoint)


class Prepared(Protocol):
    @property
    def sequences(self) -> int:
        """Sequences the request runs at once (prompts x n): what it takes from the limiter."""
        ...


P = TypeVar("P", bound=Prepared)


async def handle(request: Request, runtime: Runtime, endpoint: str, stream: bool,
                 prepare: Callable[[GenerationCore], P],
                 collect: Callable[[GenerationCore, P, RequestObserver], Awaitable[Payload | list[Any]]],
                 events: Callable[[GenerationCore, P, RequestObserver], AsyncIterator[Payload]],
                 done_event: str | None, user: str | None = None, slot: int | None = None,
                 model: str | None = None, role: str = "completion") -> Response:
    """Serve one generation request; `done_event` ends a successful stream (OpenAI's [DONE], or None).
    `user` / `slot` name the request's owner for supersession (api/supersession.py). `model` picks the engine;
    a request naming none goes to `role`'s."""
    observer = runtime.observer(endpoint)
    request.scope.setdefault("state", {})[OBSERVER_STATE] = observer  # the response accounting reads its status
    claim: Claim | None = None
    release: Callable[[], None] | None = None
    try:
        core = runtime.require_core(model, role)
        observer.model = core.served.adapter(model) or core.served.id
        # Tokenizing a long prompt takes a CPU for a while: never on the event loop, which serves every stream.
        prepared = await asyncio.to_thread(prepare, core)
        sequences = prepared.sequences
        if runtime.supersession is not None:  # only a valid request takes its owner's place
            claim = runtime.supersession.claim(request, user, slot)
        release = _once(lambda: _release(runtime, claim))
        # The slot is taken before any 200 goes out (a full server answers 429, also to streams); a client
        # that leaves while queued gives up its place, as does one superseded while queued.
        if await _unless_disconnected(request, runtime.limiter.acquire(sequences), claim) is _DISCONNECTED:
            observer.end(CLIENT_CLOSED, cancelled=True)
            return Response(status_code=CLIENT_CLOSED)
        release = _once(lambda: _release(runtime, claim, sequences))
        observer.begin()
        if stream:
            payloads = _until_superseded(events(core, prepared, observer), claim)
            response = StreamingResponse(_stream(observer, payloads, done_event, release),
                                         media_type="text/event-stream", background=BackgroundTask(release),
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            release = None  # the stream owns the slot now
            return response
        result = await _unless_disconnected(request, collect(core, prepared, observer), claim)
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


async def _stream(observer: RequestObserver, payloads: AsyncIterator[Payload], done_event: str | None,
                  release: Callable[[], None]) -> AsyncIterator[str]:
    """Starlette cancels this generator when the client disconnects; the engine request is aborted then.
    The slot is released here, or by the response's background task if the stream never started."""
    status, cancelled, superseded = 200, True, False
    try:
        async for payload in payloads:
            yield sse.event(payload)
        if done_event is not None:
            yield done_event
        cancelled = False
    except ServeError as error:  # mid-stream: the 200 is out, so the error goes as an event
        status, cancelled, superseded = status_of(error), False, isinstance(error, Superseded)
        yield sse.error_event(error)
    except Exception:
        log.exception("a stream failed")
        status, cancelled = 500, False
        yield sse.error_event(EngineFailure("internal error while streaming; the server log has the details"))
    finally:
        release()
        observer.end(CLIENT_CLOSED if cancelled else status, cancelled=cancelled, superseded=superseded)
