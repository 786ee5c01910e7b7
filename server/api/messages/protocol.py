"""Anthropic's Messages API: the request of /v1/messages and /v1/messages/count_tokens, the `message` answer, the
named stream events, and Anthropic's error shape.

Shapes read from the `anthropic` SDK 2.15 (anthropic/types/: message_create_params.py, message_count_tokens_params.py,
text_block_param.py, tool_use_block_param.py, tool_result_block_param.py, tool_param.py, tool_choice_*_param.py,
thinking_config_*_param.py, metadata_param.py, message.py, usage.py, raw_message_*_event.py, raw_content_block_*.py,
text_delta.py, input_json_delta.py, message_tokens_count.py) and vLLM 0.32's own server
(vllm/entrypoints/anthropic/protocol.py, serving.py, api_router.py).

As everywhere here, a field this server does not know is a 400 naming it; what Claude Code sends that changes nothing
is accepted by name (`accepted()`): cache_control (the prefix cache is automatic) and metadata.user_id.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ...errors import ContextLengthExceeded, ServeError
from ..errors import ErrorShape
from ..protocol import MAX_STOP, Text, accepted, check_json_schema

CACHED = "prompt caching is automatic here (the engine's prefix cache)"
TOOL_NAME = r"^[a-zA-Z0-9_-]{1,128}$"  # Anthropic's tool names (tool_param.py); MCP tools read mcp__server__tool
# Blocks of Anthropic's API that this server refuses, and why (a 400 naming the block).
REFUSED_BLOCKS = {
    "image": "image blocks are not supported: the served model reads text only",
    "document": "document blocks are not supported: the served model reads text only",
    "search_result": "search_result blocks are not supported: send the results as text",
    "thinking": "thinking blocks are not supported: no reasoning model is served",
    "redacted_thinking": "redacted_thinking blocks are not supported: no reasoning model is served",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _as_blocks(value: Any) -> Any:
    """A string is shorthand for one text block (Anthropic's docs): made one here, so every error names a block."""
    return [{"type": "text", "text": value}] if isinstance(value, str) else value


def _tag(kinds: tuple[str, ...]) -> Any:
    """The discriminator of a block union: the member's tag ("<type> block": api/errors.py leaves such tags out of
    the field it names), "refused block" for a block this server refuses, None (an error) for any other."""
    def tag(value: Any) -> str | None:
        kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
        if not isinstance(kind, str):  # any JSON may come: a type that is no string is no block
            return None
        if kind in kinds:
            return f"{kind} block"
        return "refused block" if kind in REFUSED_BLOCKS else None

    known = ", ".join(kinds)
    return Discriminator(tag, custom_error_type="invalid_block",
                         custom_error_message=f"a content block's 'type' is one of: {known}")


class TextBlock(_Strict):
    type: Literal["text"]
    text: Text
    cache_control: Any = accepted(CACHED)


class ToolUseBlock(_Strict):
    """A call the assistant made, in the history."""

    type: Literal["tool_use"]
    id: Annotated[str, Field(min_length=1)]
    name: Annotated[str, Field(min_length=1)]
    input: dict[str, Any]
    cache_control: Any = accepted(CACHED)


class RefusedBlock(BaseModel):
    """Image, document, search_result and thinking blocks: refused with a 400 naming the block and why."""

    model_config = ConfigDict(extra="allow")
    type: str

    @model_validator(mode="before")
    @classmethod
    def _refuse(cls, value: Any) -> Any:
        kind = str(value.get("type")) if isinstance(value, dict) else ""
        raise ValueError(REFUSED_BLOCKS.get(kind, f"{kind} blocks are not supported"))


ResultPart = Annotated[Annotated[TextBlock, Tag("text block")] | Annotated[RefusedBlock, Tag("refused block")],
                       _tag(("text",))]
ResultContent = Annotated[list[ResultPart], BeforeValidator(_as_blocks, json_schema_input_type=str | list[ResultPart])]


class ToolResultBlock(_Strict):
    """What a call returned, in a user message."""

    type: Literal["tool_result"]
    tool_use_id: Annotated[str, Field(min_length=1)]
    content: ResultContent = Field(default_factory=list)
    is_error: bool = Field(False, description="the result says so to the model (its text follows 'Error: ')")
    cache_control: Any = accepted(CACHED)


Block = Annotated[Annotated[TextBlock, Tag("text block")] | Annotated[ToolUseBlock, Tag("tool_use block")]
                  | Annotated[ToolResultBlock, Tag("tool_result block")]
                  | Annotated[RefusedBlock, Tag("refused block")], _tag(("text", "tool_use", "tool_result"))]
Content = Annotated[list[Block], BeforeValidator(_as_blocks, json_schema_input_type=str | list[Block])]
SystemPrompt = Annotated[list[TextBlock], BeforeValidator(_as_blocks, json_schema_input_type=str | list[TextBlock])]


class InputMessage(_Strict):
    role: Literal["user", "assistant", "system"] = Field(
        description="system: an instruction in the conversation (Claude Code's reminders), text blocks only")
    content: Content


class ToolDef(_Strict):
    type: Literal["custom"] | None = Field(None, description="client tools only: Anthropic's server tools (web "
                                                             "search, code execution) do not run here")
    name: Annotated[str, Field(pattern=TOOL_NAME)]
    description: Text = ""
    input_schema: dict[str, Any]
    cache_control: Any = accepted(CACHED)

    @field_validator("input_schema")
    @classmethod
    def _object_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        if schema.get("type") != "object":
            raise ValueError("a tool's input_schema describes its input object: its 'type' is \"object\"")
        check_json_schema(schema)
        return schema


class ToolChoiceIn(_Strict):
    type: Literal["auto", "any", "tool", "none"] = Field(
        description="auto: the model decides; any: it calls a tool; tool: it calls `name`; none: it calls none")
    name: str | None = None
    disable_parallel_tool_use: bool | None = Field(None, description="true: at most one call (one, for any/tool)")

    @model_validator(mode="after")
    def _fits_type(self) -> ToolChoiceIn:
        if (self.type == "tool") != (self.name is not None):
            raise ValueError("'name' goes with type 'tool', and only with it")
        if self.type == "none" and self.disable_parallel_tool_use is not None:
            raise ValueError("'disable_parallel_tool_use' does not apply to type 'none'")
        return self


class Thinking(_Strict):
    """Extended thinking: only {"type": "disabled"}, since no reasoning model is served."""

    type: Literal["disabled"]

    @model_validator(mode="before")
    @classmethod
    def _disabled_only(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("type") != "disabled":
            raise ValueError(f"extended thinking (type {value.get('type')!r}) is not available: the served model "
                             "does not reason; send {\"type\": \"disabled\"} or leave 'thinking' out")
        return value


class Metadata(_Strict):
    user_id: Any = accepted("an end user's id, for Anthropic's abuse monitoring; nothing here is per user")


class _Conversation(_Strict):
    """What /v1/messages and its count_tokens share: the prompt the model gets."""

    model: str | None = None
    system: SystemPrompt = Field(default_factory=list, description="a string or text blocks; a block that begins "
                                 "'x-anthropic-billing-header' (Claude Code's, new each request) is left out")
    messages: Annotated[list[InputMessage], Field(min_length=1)]
    tools: list[ToolDef] = Field(default_factory=list)
    tool_choice: ToolChoiceIn | None = Field(None, description="default: auto")
    thinking: Thinking | None = None
    cache_control: Any = accepted(CACHED)

    @field_validator("tools")
    @classmethod
    def _named_once(cls, tools: list[ToolDef]) -> list[ToolDef]:
        names = [tool.name for tool in tools]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise ValueError(f"tools.{index}.name '{name}' repeats tools.{names.index(name)}.name")
        return tools

    @field_validator("tool_choice")
    @classmethod
    def _names_a_tool_sent(cls, choice: ToolChoiceIn | None, info: ValidationInfo) -> ToolChoiceIn | None:
        if choice is None or "tools" not in info.data:  # no tools: their own error is the one to report
            return choice
        names = [tool.name for tool in info.data["tools"]]
        if choice.type in ("any", "tool") and not names:
            raise ValueError(f"type '{choice.type}' needs tools")
        if choice.type == "tool" and choice.name not in names:
            raise ValueError(f"tool_choice.name '{choice.name}' is not among the tools sent ({', '.join(names)})")
        return choice


class MessagesRequest(_Conversation):
    max_tokens: int = Field(ge=0, description="required, as in Anthropic's API; clamped to what the context leaves")
    stop_sequences: Annotated[list[Annotated[Text, Field(min_length=1)]], Field(max_length=MAX_STOP)] = Field(
        default_factory=list)
    temperature: float = Field(1.0, ge=0.0, le=1.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, description="0: every token")
    stream: bool = Field(False, description="decides streaming (Claude Code sends Accept: application/json)")
    metadata: Metadata | None = None


class CountTokensRequest(_Conversation):
    """The prompt a /v1/messages request with these fields would give the model."""


# ---- responses ----------------------------------------------------------------------------------
StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int


class TextOut(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ToolUseOut(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


ContentOut = Annotated[TextOut | ToolUseOut, Field(discriminator="type")]


class MessageOut(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ContentOut]
    stop_reason: StopReason | None
    stop_sequence: str | None = None
    usage: Usage


class TokenCount(BaseModel):
    input_tokens: int


class MessageStart(BaseModel):
    type: Literal["message_start"] = "message_start"
    message: MessageOut


class BlockStart(BaseModel):
    type: Literal["content_block_start"] = "content_block_start"
    index: int
    content_block: ContentOut


class TextDelta(BaseModel):
    type: Literal["text_delta"] = "text_delta"
    text: str


class InputJsonDelta(BaseModel):
    type: Literal["input_json_delta"] = "input_json_delta"
    partial_json: str


class BlockDelta(BaseModel):
    type: Literal["content_block_delta"] = "content_block_delta"
    index: int
    delta: Annotated[TextDelta | InputJsonDelta, Field(discriminator="type")]


class BlockStop(BaseModel):
    type: Literal["content_block_stop"] = "content_block_stop"
    index: int


class Stop(BaseModel):
    stop_reason: StopReason
    stop_sequence: str | None = None


class OutputUsage(BaseModel):
    output_tokens: int


class MessageDelta(BaseModel):
    type: Literal["message_delta"] = "message_delta"
    delta: Stop
    usage: OutputUsage


class MessageStop(BaseModel):
    type: Literal["message_stop"] = "message_stop"


StreamEvent = MessageStart | BlockStart | BlockDelta | BlockStop | MessageDelta | MessageStop


# ---- errors -------------------------------------------------------------------------------------
class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicErrorBody(BaseModel):
    """Anthropic's error shape: every error on the Messages routes, before a stream or as its `error` event."""

    type: Literal["error"] = "error"
    error: AnthropicErrorDetail


# Anthropic's error types by status (its API's errors page; the SDK's exceptions follow the status). 503 (loading,
# engine gone) is Anthropic's overloaded_error, which its API sends as 529: the status stays the server's own.
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
          413: "request_too_large", 429: "rate_limit_error", 500: "api_error", 503: "overloaded_error"}


class AnthropicErrors(ErrorShape):
    model: ClassVar[type[BaseModel]] = AnthropicErrorBody
    event_name: ClassVar[str | None] = "error"

    def body(self, error: ServeError, status: int) -> dict[str, Any]:
        kind = _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        message = error.message
        if isinstance(error, ContextLengthExceeded):  # Anthropic's words ("prompt is too long: N tokens > M
            message = f"prompt is too long: {message}"  # maximum"), which its clients look for to compact
        return {"type": "error", "error": {"type": kind, "message": message}}
