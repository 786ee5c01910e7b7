"""OpenAI's /v1/chat/completions request and response, tool calls included (the history shapes agent clients send:
assistant `tool_calls` with content "", " " or null, `tool` results, `reasoning_content`, text-part arrays)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..protocol import FinishReason, FunctionSpec, Text, Usage, _OmitsNone, _Sampling, accepted


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: Text
    cache_control: Any = accepted("prompt caching is automatic (the engine's prefix cache)")


class FunctionCallIn(_Strict):
    name: str
    arguments: str


class ToolCallIn(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Text | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    reasoning_content: Any = accepted("a reasoning model's thoughts of an earlier turn: not part of the prompt, "
                                      "as vLLM renders history")
    reasoning: Any = accepted("the same, under the name newer clients use")

    @model_validator(mode="after")
    def _tool_result_names_its_call(self) -> ChatMessage:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def as_message(self) -> dict[str, Any]:
        """The engine-neutral chat message (generation/tools.py's shape)."""
        message: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.name:
            message["name"] = self.name
        if self.tool_calls:
            message["tool_calls"] = [{"id": c.id, "type": "function", "function": {
                "name": c.function.name, "arguments": c.function.arguments}} for c in self.tool_calls]
        if self.tool_call_id:
            message["tool_call_id"] = self.tool_call_id
        return message


class ChatTool(_Strict):
    type: Literal["function"]
    function: FunctionSpec


class FunctionName(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: FunctionName


class ChatRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    tools: list[ChatTool] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = Field(
        None, description="default: auto when tools are sent (what Continue, Cline and Zed mean by leaving it out)")
    parallel_tool_calls: bool | None = None
    reasoning_effort: str | None = Field(None, description="passed to the chat template as `reasoning_effort`, as "
                                                           "vLLM does: a reasoning model's template acts on it, "
                                                           "others do not read it (Cline, Roo Code and Zed send it)")
    chat_template_kwargs: dict[str, Any] | None = Field(None, description="vLLM's: more variables for the chat "
                                                                          "template (e.g. enable_thinking)")

    def template_variables(self) -> dict[str, Any]:
        given = {"reasoning_effort": self.reasoning_effort} if self.reasoning_effort is not None else {}
        return {**(self.chat_template_kwargs or {}), **given}
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprobOut]


class FunctionCallOut(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantMessage(_OmitsNone):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = None
    _omit_if_none = ("tool_calls",)


class FunctionDelta(_OmitsNone):
    name: str | None = None
    arguments: str | None = None
    _omit_if_none = ("name",)


class ToolCallDelta(_OmitsNone):
    """A streamed call: the first delta of each carries its id, type and name; the rest only argument text."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDelta
    _omit_if_none = ("id", "type")


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(_OmitsNone):
    _omit_if_none = ("role", "content", "tool_calls")
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(_OmitsNone):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    _omit_if_none = ("usage",)


