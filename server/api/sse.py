"""Server-sent events, framed in one place: payload events, error events, OpenAI's [DONE]."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from ..errors import ServeError
from .errors import ErrorShape, status_of

DONE = "data: [DONE]\n\n"
# One event as the OpenAPI document describes a text/event-stream body: its `data` is a JSON payload
# (a chunk, an error body) or [DONE].
SSE_EVENT_SCHEMA: dict[str, Any] = {"type": "object", "required": ["data"],
                                    "properties": {"data": {"type": "string"}, "event": {"type": "string"}}}


def event(payload: BaseModel | dict[str, Any], name: str | None = None) -> str:
    """One event: `data: JSON`, after `event: NAME` where the API names its events (OpenAI's Responses, Anthropic's)."""
    data = payload.model_dump_json() if isinstance(payload, BaseModel) else json.dumps(payload, separators=(",", ":"))
    return (f"event: {name}\n" if name else "") + f"data: {data}\n\n"


def error_event(error: ServeError, shape: ErrorShape) -> str:
    """An error after the stream's 200 went out, in its API's shape: one event, after which the stream ends."""
    return event(shape.body(error, status_of(error)), shape.event_name)
