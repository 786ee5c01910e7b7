"""OpenAI-compatible routes: models, completions (also under Copilot's engines path), chat."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from .. import openai_wire as wire
from ..errors import ERROR_RESPONSES
from ..protocol import ChatCompletionResponse, ChatRequest, CompletionRequest, CompletionResponse, ModelCard, ModelList
from ..serving import Runtime, handle
from ..sse import DONE, SSE_EVENT_SCHEMA

router = APIRouter()


def _generation_responses(model: type) -> dict[int | str, dict[str, Any]]:
    """A 200 that is JSON (`model`), or an event stream when the request says "stream": true."""
    return {200: {"model": model, "description": "the result, or its event stream with \"stream\": true",
                  "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}}}, **ERROR_RESPONSES}


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


@router.get("/v1/models")
async def list_models(request: Request) -> ModelList:
    runtime = _runtime(request)
    runtime.require_core()
    cards = []
    for core in runtime.cores:
        served = core.served
        roles = [role for role, owner in runtime.roles.items() if owner is core]
        cards.append(ModelCard(id=served.id, created=served.created, root=served.entry.repo,
                               max_model_len=served.max_model_len, roles=roles))
        cards += [ModelCard(id=name, created=served.created, root=name, max_model_len=served.max_model_len,
                            parent=served.id) for name in served.adapters]
    return ModelList(data=cards)


async def _completions(request: Request, body: CompletionRequest, ide: bool = False) -> Response:
    runtime = _runtime(request)
    return await handle(request, runtime, "completions", body.stream,
                        lambda core: wire.prepare_completion(core, body, ide, runtime.completion_code_stops),
                        wire.completion, wire.completion_events, DONE, user=body.user, model=body.model)


@router.post("/v1/completions", responses=_generation_responses(CompletionResponse))
async def completions(request: Request, body: CompletionRequest) -> Response:
    return await _completions(request, body)


@router.post("/v1/engines/{engine}/completions", responses=_generation_responses(CompletionResponse))
async def engine_completions(request: Request, engine: str, body: CompletionRequest) -> Response:
    """The path GitHub Copilot calls when pointed at a custom URL (as FauxPilot serves it); the engine
    name in the path is whatever the user configured, so it is not checked against the model."""
    del engine
    runtime = _runtime(request)
    if body.model is not None and not any(core.served.accepts(body.model) for core in runtime.cores):
        body = body.model_copy(update={"model": None})  # Copilot sends its own names: the completion role answers
    return await _completions(request, body, ide=True)


@router.post("/v1/chat/completions", responses=_generation_responses(ChatCompletionResponse))
async def chat_completions(request: Request, body: ChatRequest) -> Response:
    return await handle(request, _runtime(request), "chat", body.stream,
                        lambda core: wire.prepare_chat(core, body), wire.chat, wire.chat_events, DONE,
                        model=body.model, role="chat")
