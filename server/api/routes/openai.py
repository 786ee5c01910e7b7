"""OpenAI-compatible routes: models, completions (also under Copilot's engines path), chat."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ...generation import openai as gen_openai
from ..protocol import ChatRequest, CompletionRequest
from ..serving import Runtime, respond

router = APIRouter()


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    gen = _runtime(request).require_generator()
    served = gen.served
    return {"object": "list", "data": [{
        "id": served.id, "object": "model", "created": served.created, "owned_by": "codeserve",
        "root": served.entry.repo, "max_model_len": served.max_model_len,
    }]}


async def _completions(request: Request, body: CompletionRequest) -> Response:
    return await respond(request, _runtime(request), "completions", body.stream,
                         lambda gen: gen_openai.prepare_completion(gen, body),
                         gen_openai.completion, gen_openai.completion_stream)


@router.post("/v1/completions")
async def completions(request: Request, body: CompletionRequest) -> Response:
    return await _completions(request, body)


@router.post("/v1/engines/{engine}/completions")
async def engine_completions(request: Request, engine: str, body: CompletionRequest) -> Response:
    """The path GitHub Copilot calls when pointed at a custom URL (as FauxPilot serves it); the engine
    name in the path is whatever the user configured, so it is not checked against the model."""
    del engine
    if body.model is not None and not _runtime(request).require_generator().served.accepts(body.model):
        body = body.model_copy(update={"model": None})
    return await _completions(request, body)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, body: ChatRequest) -> Response:
    return await respond(request, _runtime(request), "chat", body.stream,
                         lambda gen: gen_openai.prepare_chat(gen, body), gen_openai.chat, gen_openai.chat_stream)
