"""build_app: the FastAPI application over a Runtime. Every router is listed here."""

from __future__ import annotations

from fastapi import Depends, FastAPI

from .. import __version__
from . import errors
from .routes import llamacpp, openai, ops
from .serving import Runtime


def build_app(runtime: Runtime, public_ops: bool = True) -> FastAPI:
    app = FastAPI(title="codeserve", version=__version__,
                  description="OpenAI-compatible server for code models (completions with FIM, chat)")
    app.state.runtime = runtime
    errors.install(app)
    auth = [Depends(runtime.keys)]
    app.include_router(openai.router, dependencies=auth)
    app.include_router(llamacpp.router, dependencies=auth)
    app.include_router(ops.router, dependencies=[] if public_ops else auth, responses=errors.ERROR_RESPONSES)
    return app
