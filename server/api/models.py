"""GET /v1/models: the served models (and LoRA adapters over them) with their context."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from .runtime import Runtime

router = APIRouter()
NAME = "models"  # as metrics count it


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "codeserve"
    root: str
    max_model_len: int  # Continue's vllm provider reads it
    roles: list[str] = Field(default_factory=list)  # completion / chat: what a request naming no model gets here
    parent: str | None = None  # a LoRA adapter: the model it runs over (as vLLM's server lists them)
    capabilities: dict[str, Any] = Field(default_factory=dict, description="what the running model does: "
                                         "fill_in_the_middle (its FIM format or null), tool_calls (native through "
                                         "its template, or generic), tool_parser, structured_output")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


@router.get("/v1/models", name=NAME)
async def list_models(request: Request) -> ModelList:
    runtime: Runtime = request.app.state.runtime
    runtime.require_ready()
    cards = []
    for core in runtime.cores:
        served = core.served
        roles = [role for role, owner in runtime.roles.items() if owner is core]
        cards.append(ModelCard(id=served.id, created=served.created, root=served.entry.repo,
                               max_model_len=served.max_model_len, roles=roles, capabilities=core.capabilities()))
        cards += [ModelCard(id=name, created=served.created, root=name, max_model_len=served.max_model_len,
                            parent=served.id) for name in served.adapters]
    return ModelList(data=cards)
