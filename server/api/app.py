"""build_app: the FastAPI application over a Runtime. Every router and middleware is listed here."""

from __future__ import annotations

from fastapi import Depends, FastAPI

from .. import __version__
from ..settings import Settings
from . import errors
from .middleware import BodyLimit, ResponseAccounting
from .routes import llamacpp, openai, ops
from .serving import Runtime


def build_app(runtime: Runtime, settings: Settings) -> FastAPI:
    app = FastAPI(title="codeserve", version=__version__,
                  description="OpenAI-compatible server for code models (completions with FIM, chat)")
    app.state.runtime = runtime
    errors.install(app)
    auth = [Depends(runtime.keys)]
    app.include_router(openai.router, dependencies=auth)
    app.include_router(llamacpp.router, dependencies=auth)
    app.include_router(ops.probes, responses=errors.ERROR_RESPONSES)
    app.include_router(ops.router, dependencies=[] if settings.public_metrics else auth,
                       responses=errors.ERROR_RESPONSES)
    # Outermost last: the accounting sees the body cap's 413s; the cap runs before parsing and auth.
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_body_bytes)
    app.add_middleware(ResponseAccounting, metrics=runtime.metrics)
    return app
