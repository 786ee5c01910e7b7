"""Tool calling, engine-neutral and wire-neutral: the tools a chat offers, the choice the client made, and a reader
that turns one choice's generated text into plain text and tool calls as it streams. Every API that calls tools
(chat completions, Responses, Messages) converts its request into these and its answer out of them.

Status: the types below are the interface; the reader and the prompt rendering are being written (issue 24).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class Tool:
    """A function the model may call: its name, what it does, and its arguments' JSON Schema."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass(frozen=True)
class ToolChoice:
    """auto: the model decides; none: no call; required: at least one call; named: a call of `name`."""

    mode: Literal["auto", "none", "required", "named"] = "auto"
    name: str | None = None
    parallel: bool = True  # several calls in one answer allowed


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text of an object


@dataclass(frozen=True)
class TextPiece:
    """Text of the answer that is not a tool call."""

    text: str


@dataclass(frozen=True)
class CallStart:
    """A tool call begins: its index among the answer's calls, its id and the function's name."""

    index: int
    id: str
    name: str


@dataclass(frozen=True)
class CallArguments:
    """More of call `index`'s arguments (JSON text; the pieces of one call concatenate to its arguments)."""

    index: int
    text: str


ReaderEvent = TextPiece | CallStart | CallArguments
