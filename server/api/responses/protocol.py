"""OpenAI's /v1/responses request, its input items and its tools.

Shapes read from the `openai` SDK (openai/types/responses/response_create_params.py, response_input_item_param.py,
easy_input_message_param.py, response_function_tool_call_param.py, response_reasoning_item_param.py,
function_tool_param.py, response_text_config_param.py, response_includable.py) and from vLLM's implementation
(vllm/entrypoints/openai/responses/protocol.py, utils.py). As everywhere here, a field this server does not honour is
a 400 naming it; what clients send that changes nothing here is accepted by name, with the reason.

Input items and tools are kept as JSON objects by the request model and validated one by one (`items`, `tools`):
a mistake is then named `input.3.call_id` or `tools.0.type`, where a union's validation would name its own branches.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ...errors import InvalidRequest
from ..protocol import FunctionSpec, Text, _nullable_number, _Request, accepted, check_json_schema

# What `include` may ask for: only what changes nothing here. No reasoning model is served, so a response has no
# reasoning item whose encrypted content could be included (Codex CLI asks for it on every request).
INCLUDABLE = frozenset({"reasoning.encrypted_content"})
METADATA_PAIRS = 16  # OpenAI's limits on metadata: 16 pairs, keys of 64 characters, values of 512
TEXT_PARTS = ("input_text", "output_text")
M = TypeVar("M", bound=BaseModel)


class FunctionChoice(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["function"]
    name: Text


class TextFormat(BaseModel):
    """text: no constraint; json_object: any JSON object; json_schema: JSON valid against `schema`."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = Field(None, description="honoured always: the output is constrained to the schema")

    @model_validator(mode="after")
    def _schema(self) -> TextFormat:
        if self.type == "json_schema":
            if self.schema_ is None:
                raise ValueError("type 'json_schema' needs 'schema'")
            check_json_schema(self.schema_)
        elif self.schema_ is not None:
            raise ValueError(f"'schema' goes with type 'json_schema', not '{self.type}'")
        return self


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    format: TextFormat = Field(default_factory=lambda: TextFormat.model_validate({"type": "text"}))
    verbosity: Any = accepted("a length hint to OpenAI's GPT-5 models; the served model has no such control")


class ResponsesRequest(_Request):
    model: str | None = None
    input: Text | Annotated[list[dict[str, Any]], Field(min_length=1)] = Field(
        description="text (one user message) or items: message (roles user, system, developer, assistant; content "
                    "text or input_text / output_text parts), function_call, function_call_output, reasoning (from "
                    "another model: dropped unless it carries reasoning text, which is refused)")
    instructions: Text | None = Field(None, description="a system message first; not carried to a later turn")
    tools: list[dict[str, Any]] | None = Field(
        None, description="function tools ({type: function, name, description, parameters, strict}) only")
    tool_choice: Literal["auto", "none", "required"] | FunctionChoice = "auto"
    parallel_tool_calls: bool = True
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: Annotated[float, _nullable_number("number", minimum=0, maximum=2)] = Field(1.0, ge=0.0, le=2.0)
    top_p: Annotated[float, _nullable_number("number", exclusiveMinimum=0, maximum=1)] = Field(1.0, gt=0.0, le=1.0)
    stream: bool = False
    previous_response_id: str | None = Field(
        None, description="continue a stored response (kept in this replica's memory; CODESERVE_RESPONSES_STORE_*)")
    store: bool = Field(True, description="keep the response for previous_response_id and GET (OpenAI's default)")
    text: TextConfig | None = None
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = Field(
        None, description="up to 16 pairs, echoed and stored with the response")
    user: str | None = None
    include: list[str] | None = Field(
        None, description=f"only {', '.join(sorted(INCLUDABLE))}: no reasoning model is served, so nothing is added")
    truncation: Literal["disabled"] | None = Field(
        None, description="'disabled' only: a conversation over the context is a 400, never cut")
    reasoning: dict[str, Any] | None = Field(
        None, description="`effort` is passed to the chat template as `reasoning_effort`, as vLLM does (a reasoning "
                          "model's template acts on it, others do not read it); `summary` adds nothing: no reasoning "
                          "item is produced (Codex CLI sends both on every request)")

    def template_variables(self) -> dict[str, Any]:
        effort = (self.reasoning or {}).get("effort")
        return {"reasoning_effort": effort} if isinstance(effort, str) else {}
    prompt_cache_key: Any = accepted("the prefix cache is automatic")
    service_tier: Any = accepted("one tier")
    safety_identifier: Any = accepted("an end user's id, for OpenAI's abuse monitoring")
    stream_options: Any = accepted("OpenAI's `obfuscation` padding against a length side channel; none is added")
    max_tool_calls: Any = accepted("it limits OpenAI's built-in tools; none run here")

    @field_validator("temperature", "top_p", mode="before")
    @classmethod
    def _null_is_default(cls, value: Any, info: Any) -> Any:
        return cls.model_fields[info.field_name].default if value is None else value

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _tool_choice(cls, value: Any) -> Any:
        """One message naming `tool_choice` (a union's own errors would name its branches)."""
        if isinstance(value, dict) and value.get("type") == "function":
            try:
                return FunctionChoice.model_validate(value)
            except ValidationError:
                raise ValueError("a function is chosen as {\"type\": \"function\", \"name\": NAME}") from None
        if isinstance(value, dict):
            raise ValueError(f"{value.get('type')!r}: hosted tools run on OpenAI's servers; choose 'auto', 'none', "
                             "'required' or a function ({\"type\": \"function\", \"name\": NAME})")
        if value not in ("auto", "none", "required"):
            raise ValueError("'auto', 'none', 'required' or {\"type\": \"function\", \"name\": NAME}")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and (len(value) > METADATA_PAIRS or any(len(key) > 64 for key in value)):
            raise ValueError(f"at most {METADATA_PAIRS} pairs, keys of at most 64 characters")
        return value

    @field_validator("include")
    @classmethod
    def _include(cls, value: list[str] | None) -> list[str] | None:
        for entry in value or ():
            if entry not in INCLUDABLE:
                raise ValueError(f"'{entry}' cannot be included here (only {', '.join(sorted(INCLUDABLE))}, which "
                                 "adds nothing: no reasoning model is served)")
        return value

    @field_validator("truncation", mode="before")
    @classmethod
    def _truncation(cls, value: Any) -> Any:
        if value == "auto":
            raise ValueError("'auto' (dropping the conversation's first items to fit) is not done here: a "
                             "conversation over the context is a 400 context_length_exceeded; send 'disabled'")
        return value


# ---- input items ---------------------------------------------------------------------------------------
class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    id: Any = accepted("an item's id names it in OpenAI's store; the model reads what the item says")
    status: Any = accepted("the item's state when it was produced; the model reads what the item says")


class Message(_Item):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: Text | list[dict[str, Any]]
    phase: Any = accepted("OpenAI's label for an assistant message (commentary or final answer)")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["input_text", "output_text"]
    text: Text
    annotations: Any = accepted("citations OpenAI's hosted tools attached to an earlier answer")
    logprobs: Any = accepted("an earlier answer's token probabilities")
    prompt_cache_breakpoint: Any = accepted("the prefix cache is automatic")


class FunctionCall(_Item):
    type: Literal["function_call"]
    call_id: Text
    name: Text
    arguments: Text


class FunctionCallOutput(_Item):
    type: Literal["function_call_output"]
    call_id: Text
    output: Text | list[dict[str, Any]]


class ReasoningSummary(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["summary_text"]
    text: Text


class Reasoning(_Item):
    type: Literal["reasoning"]
    summary: list[ReasoningSummary] = Field(default_factory=list)
    content: list[dict[str, Any]] | None = None
    encrypted_content: str | None = None

    @property
    def reasoning_text(self) -> str:
        return "".join(str(part.get("text", "")) for part in self.content or ())


Item = Message | FunctionCall | FunctionCallOutput | Reasoning
_ITEMS: dict[str, type[Item]] = {"message": Message, "function_call": FunctionCall,
                                 "function_call_output": FunctionCallOutput, "reasoning": Reasoning}


def items(body: ResponsesRequest) -> list[Item]:
    """The request's input as items (text is one user message); 400 naming `input.N...` for one that cannot be read."""
    if isinstance(body.input, str):
        return [Message(role="user", content=body.input)]
    parsed: list[Item] = []
    for i, raw in enumerate(body.input):
        kind = raw.get("type", "message" if "role" in raw else None)
        model = _ITEMS.get(kind) if isinstance(kind, str) else None
        if model is None:
            raise InvalidRequest(
                f"input item {i} has type {kind!r}; this server reads {', '.join(_ITEMS)} items (hosted tools' "
                "items and item references belong to OpenAI's servers)", param=f"input.{i}.type")
        item = _validate(model, raw, f"input.{i}")
        if isinstance(item, Reasoning) and item.reasoning_text:
            raise InvalidRequest(
                "a reasoning item with reasoning text cannot be replayed: no reasoning model is served here, so no "
                "template has a place for it (a summary or encrypted content alone is dropped)",
                param=f"input.{i}.content")
        parsed.append(item)
    return parsed


def text_of(content: str | list[dict[str, Any]], param: str) -> str:
    """A message's or a tool output's text: the string, or its text parts joined."""
    if isinstance(content, str):
        return content
    texts = []
    for j, raw in enumerate(content):
        if raw.get("type") not in TEXT_PARTS:
            raise InvalidRequest(f"content part {j} has type {raw.get('type')!r}; this server serves a text model: "
                                 f"send {' or '.join(TEXT_PARTS)} parts", param=f"{param}.{j}.type")
        texts.append(_validate(TextPart, raw, f"{param}.{j}").text)
    return "".join(texts)


# ---- tools ---------------------------------------------------------------------------------------------
class FunctionTool(FunctionSpec):
    type: Literal["function"]


def tools(body: ResponsesRequest) -> list[FunctionTool]:
    """The request's tools; 400 naming `tools.N.type` for a tool that runs on OpenAI's servers (web_search, ...)."""
    found: list[FunctionTool] = []
    for i, raw in enumerate(body.tools or ()):
        if raw.get("type") != "function":
            raise InvalidRequest(f"tool {i} has type {raw.get('type')!r}: hosted tools run on OpenAI's servers; this "
                                 "server offers the client's own function tools only", param=f"tools.{i}.type")
        found.append(_validate(FunctionTool, raw, f"tools.{i}"))
    names = [tool.name for tool in found]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate is not None:
        raise InvalidRequest(f"two tools are named '{duplicate}'", param=f"tools.{names.index(duplicate)}.name")
    return found


def _validate(model: type[M], raw: dict[str, Any], where: str) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        # pydantic names the branch of a union it tried ("str", "list[...]"): not a field
        field = ".".join([where, *(str(p) for p in first["loc"] if not (p == "str" or "[" in str(p)))])
        if first["type"] == "extra_forbidden":
            raise InvalidRequest(f"'{field}' is not supported by this server; remove it (codeserve refuses a field "
                                 "rather than ignore it)", param=field, code="unsupported_field") from None
        raise InvalidRequest(f"invalid value for '{field}': {first['msg']}", param=field) from None
