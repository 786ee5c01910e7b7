"""llama.cpp-compatible routes for llama.vscode / llama.vim (/infill) and llama.cpp clients (/completion)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ...generation import llamacpp
from ..protocol import LlamaCppRequest
from ..serving import Runtime, respond

router = APIRouter()


async def _respond(request: Request, body: LlamaCppRequest, infill: bool) -> Response:
    runtime: Runtime = request.app.state.runtime
    return await respond(request, runtime, "infill" if infill else "llamacpp_completion", body.stream,
                         lambda gen: llamacpp.prepare(gen, body, infill), llamacpp.respond, llamacpp.stream)


@router.post("/infill")
async def infill(request: Request, body: LlamaCppRequest) -> Response:
    return await _respond(request, body, infill=True)


@router.post("/completion")
async def completion(request: Request, body: LlamaCppRequest) -> Response:
    return await _respond(request, body, infill=False)
