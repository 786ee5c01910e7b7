"""build_app: the FastAPI application over a Runtime. Every endpoint, router and middleware is listed here."""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI

from .. import __version__
from ..settings import Settings
from . import errors, models, ops
from .chat.serving import Chat
from .completions.serving import Completions, CopilotCompletions
from .embeddings.serving import Embeddings
from .endpoint import Endpoint
from .llamacpp.serving import Infill, LlamaCppCompletion
from .messages.serving import CountTokens, Messages
from .middleware import BodyLimit, ResponseAccounting
from .rerank.serving import Rerank
from .responses.serving import Responses
from .responses.store import ResponseStore
from .runtime import Runtime


def endpoints(settings: Settings) -> tuple[Endpoint, ...]:
    """The generation endpoints, one object each."""
    return (Completions(settings), CopilotCompletions(settings), Chat(), Infill(), LlamaCppCompletion(),
            Responses(ResponseStore(settings.responses_store_max, settings.responses_store_ttl_s)), Messages(),
            CountTokens(), Embeddings(settings), Rerank(settings))


def build_app(runtime: Runtime, settings: Settings) -> FastAPI:
    app = FastAPI(title="codeserve", version=__version__,
                  description="OpenAI-compatible server for code models (completions with FIM, chat)")
    app.state.runtime = runtime
    errors.install(app)
    generation = APIRouter()
    served = endpoints(settings)
    for endpoint in served:
        endpoint.mount(generation)
    auth = [Depends(runtime.keys)]
    app.include_router(generation, dependencies=auth)
    app.include_router(models.router, dependencies=auth, responses=errors.ERROR_RESPONSES)
    app.include_router(ops.probes, responses=errors.ERROR_RESPONSES)
    app.include_router(ops.router, dependencies=[] if settings.public_metrics else auth,
                       responses=errors.ERROR_RESPONSES)
    names = tuple(dict.fromkeys(endpoint.name for endpoint in served))
    if runtime.metrics is not None:
        runtime.metrics.count_endpoints(names)
    # Outermost last: the accounting sees the body cap's 413s; the cap runs before parsing and auth.
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_body_bytes)
    app.add_middleware(ResponseAccounting, metrics=runtime.metrics, counted=frozenset((*names, models.NAME)))
    return app
