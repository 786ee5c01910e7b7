"""llama.cpp-compatible routes for llama.vscode / llama.vim (/infill) and llama.cpp clients (/completion)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from .. import llamacpp_wire as wire
from ..errors import ERROR_RESPONSES
from ..protocol import LlamaCppRequest
from ..serving import Runtime, handle
from ..sse import SSE_EVENT_SCHEMA

router = APIRouter()

# llama.cpp's result object (or an array of them with n_cmpl > 1); its fields are selectable by the client.
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "llama.cpp's result object, an array of them (n_cmpl > 1), or its event stream",
          "content": {"application/json": {"schema": {"anyOf": [{"type": "object"}, {"type": "array"}]}},
                      "text/event-stream": {"schema": SSE_EVENT_SCHEMA}}},
    **ERROR_RESPONSES,
}


async def _llamacpp(request: Request, body: LlamaCppRequest, infill: bool) -> Response:
    runtime: Runtime = request.app.state.runtime
    # llama.cpp's server ignores `model` (one model per server): a name we serve picks its engine, any other name
    # is ignored as llama.cpp would, and the completion role answers.
    named = (body.model_extra or {}).get("model")
    model = named if isinstance(named, str) and any(core.served.accepts(named) for core in runtime.cores) else None
    return await handle(request, runtime, "infill" if infill else "llamacpp_completion", body.stream,
                        lambda core: wire.prepare(core, body, infill), wire.collect, wire.events, None,
                        slot=body.id_slot, model=model)


@router.post("/infill", responses=RESPONSES)
async def infill(request: Request, body: LlamaCppRequest) -> Response:
    return await _llamacpp(request, body, infill=True)


@router.post("/completion", responses=RESPONSES)
async def completion(request: Request, body: LlamaCppRequest) -> Response:
    return await _llamacpp(request, body, infill=False)
