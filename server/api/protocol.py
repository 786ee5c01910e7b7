"""What the endpoints' protocol models share: valid text, stop lists, OpenAI's sampling fields, codeserve's
fill-in-the-middle extensions, usage and the response helpers. Each endpoint's own models live beside it
(api/<endpoint>/protocol.py). Validation names the field that is wrong.

Unknown fields are refused (400 naming the field): a field accepted and ignored misleads the client. What IDE
clients send that changes nothing here is accepted by name, each with the reason (`accepted()`).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    WithJsonSchema,
    field_validator,
    model_serializer,
    model_validator,
)

from ..engine.base import StructuredOutput

MAX_N = 16  # choices per request; Copilot asks for 1 or 3
INT64 = {"ge": -(2**63), "le": 2**63 - 1}  # what engines' random generators take as a seed


def _no_lone_surrogates(text: str) -> str:
    """JSON may carry "\\ud800" alone; Python keeps it, tokenizers then fail (a 500). Refuse it here."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"contains a lone UTF-16 surrogate at character {exc.start}: not valid Unicode") from None
    return text


# Request text: any string that is valid Unicode.
Text = Annotated[str, AfterValidator(_no_lone_surrogates)]
MAX_STOP = 32  # Continue sends more than OpenAI's 4 stop strings


def _nullable_number(kind: str, **bounds: float) -> WithJsonSchema:
    """OpenAI marks sampling numbers nullable (null = default); the schema says so, the model stores the default."""
    return WithJsonSchema({"anyOf": [{"type": kind, **bounds}, {"type": "null"}]})


# A string, a list of strings, or null: what OpenAI accepts for `stop`. Normalised to a list.
_STOP_SCHEMA = WithJsonSchema({"anyOf": [
    {"type": "string", "minLength": 1},
    {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": MAX_STOP},
    {"type": "null"},
]})
Stop = Annotated[list[Annotated[Text, Field(min_length=1)]], Field(max_length=MAX_STOP), _STOP_SCHEMA,
                 BeforeValidator(lambda value: _stop_list(value))]


class _Request(BaseModel):
    # strict: a JSON string or boolean where a number is due is an error, not silently coerced; forbid: a field
    # this server does not know is a 400 naming it (api/errors.py words it), never silently dropped
    model_config = ConfigDict(extra="forbid", strict=True)


def accepted(why: str) -> Any:
    """A field clients send that changes nothing here: accepted (any value), with the reason in the schema."""
    return Field(None, description=f"accepted; changes nothing here: {why}", exclude=True)


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(strict=True, populate_by_name=True)
    name: str = "response"
    description: str | None = None
    schema_: JsonSchema = Field(default_factory=dict, alias="schema")
    strict: bool | None = Field(None, description="honoured always: the output is constrained to the schema")


class ResponseFormat(BaseModel):
    """OpenAI's response_format: text (no constraint), any JSON object, or JSON valid against a schema."""

    model_config = ConfigDict(strict=True)
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs 'json_schema' with the schema")
        return self


class StructuredOutputs(BaseModel):
    """vLLM's structured_outputs extension: exactly one constraint."""

    model_config = ConfigDict(extra="forbid", strict=True)
    json_: JsonSchema | None = Field(None, alias="json")
    regex: str | None = None
    choice: Annotated[list[str], Field(min_length=1)] | None = None
    grammar: str | None = None
    json_object: bool | None = None

    @model_validator(mode="after")
    def _one(self) -> StructuredOutputs:
        given = [name for name in ("json_", "regex", "choice", "grammar", "json_object")
                 if getattr(self, name) not in (None, False)]
        if len(given) != 1:
            raise ValueError("give exactly one of json, regex, choice, grammar, json_object")
        return self


def check_json_schema(schema: dict[str, Any]) -> None:
    """Valid JSON Schema (its 2020-12 meta-schema, which accepts the older drafts' keywords clients send)."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "the root"
        raise ValueError(f"not a valid JSON Schema at {where}: {exc.message}") from None


def _checked_schema(schema: dict[str, Any]) -> dict[str, Any]:
    check_json_schema(schema)
    return schema


# A JSON Schema a request sends (a tool's parameters, a response format): valid, or a 400 naming where it is not.
JsonSchema = Annotated[dict[str, Any], AfterValidator(_checked_schema)]
TOOL_NAME = r"^[a-zA-Z0-9_.:-]{1,128}$"  # OpenAI's [a-zA-Z0-9_-]{1,64}, plus MCP's namespacing (Copilot, Cline)


class FunctionSpec(BaseModel):
    """A function tool as OpenAI's APIs declare it (chat nests it under `function`, Responses flattens it)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: Annotated[str, Field(pattern=TOOL_NAME)]
    description: Text | None = None
    parameters: JsonSchema | None = None
    strict: bool | None = Field(None, description="arguments always follow the schema under tool_choice required "
                                                  "or a named function (constrained); under auto the model writes "
                                                  "them and the parser reads what it wrote")


def structured_output(response_format: ResponseFormat | None,
                      structured: StructuredOutputs | None) -> StructuredOutput | None:
    if structured is not None:
        kind = next(name for name in ("json", "regex", "choice", "grammar", "json_object")
                    if getattr(structured, "json_" if name == "json" else name) not in (None, False))
        return StructuredOutput(json_schema=structured.json_, json_object=bool(structured.json_object),
                                regex=structured.regex, grammar=structured.grammar,
                                choice=tuple(structured.choice) if structured.choice is not None else None,
                                param=f"structured_outputs.{kind}")
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return StructuredOutput(json_object=True, param="response_format")
    assert response_format.json_schema is not None
    return StructuredOutput(json_schema=response_format.json_schema.schema_, param="response_format.json_schema")


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True)
    include_usage: bool = False


def _stop_list(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return value


class _Sampling(_Request):
    model: str | None = None
    temperature: Annotated[float, _nullable_number("number", minimum=0, maximum=2)] = Field(1.0, ge=0.0, le=2.0)
    top_p: Annotated[float, _nullable_number("number", exclusiveMinimum=0, maximum=1)] = Field(1.0, gt=0.0, le=1.0)
    n: Annotated[int, _nullable_number("integer", minimum=1, maximum=MAX_N)] = Field(1, ge=1, le=MAX_N)
    stop: Stop = Field(default_factory=list)
    seed: Annotated[int, Field(**INT64)] | None = None
    presence_penalty: Annotated[float, _nullable_number("number", minimum=-2, maximum=2)] = Field(0.0, ge=-2, le=2)
    frequency_penalty: Annotated[float, _nullable_number("number", minimum=-2, maximum=2)] = Field(0.0, ge=-2, le=2)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        None, description="token id (as a string) -> bias added to its logit, -100..100 (OpenAI's)")
    response_format: ResponseFormat | None = None
    # vLLM's extra sampling parameters (its OpenAI server's names and meanings), each passed to the engine
    top_k: int | None = Field(None, ge=-1, description="sample from the k most likely tokens; 0 or -1: all")
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)
    min_tokens: int = Field(0, ge=0)
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    allowed_token_ids: Annotated[list[int], Field(min_length=1)] | None = None
    bad_words: list[str] | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    structured_outputs: StructuredOutputs | None = None
    # OpenAI's fields that ask nothing of generation
    metadata: Any = accepted("OpenAI stores it with a stored completion; nothing is stored here")
    store: Any = accepted("nothing is stored here (OpenAI's distillation store)")
    service_tier: Any = accepted("one tier")
    prompt_cache_key: Any = accepted("the prefix cache is automatic")
    safety_identifier: Any = accepted("an end user's id, for OpenAI's abuse monitoring")

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if not key.isdigit():
                raise ValueError(f"keys are token ids as strings, got {key!r}")
        return value

    @model_validator(mode="after")
    def _one_constraint(self) -> _Sampling:
        if self.structured_outputs is not None and self.response_format not in (None,) and \
                self.response_format.type != "text":
            raise ValueError("give response_format or structured_outputs, not both")
        return self

    def extra_sampling(self) -> dict[str, Any]:
        """vLLM's extras as SamplingSettings' fields (unset ones keep SamplingSettings' defaults)."""
        given = {"top_k": self.top_k, "min_p": self.min_p, "repetition_penalty": self.repetition_penalty}
        return {**{k: v for k, v in given.items() if v is not None},
                "min_tokens": self.min_tokens, "ignore_eos": self.ignore_eos,
                "logit_bias": tuple((int(k), v) for k, v in (self.logit_bias or {}).items()),
                "stop_token_ids": tuple(self.stop_token_ids or ()),
                "allowed_token_ids": tuple(self.allowed_token_ids) if self.allowed_token_ids is not None else None,
                "bad_words": tuple(self.bad_words or ()), "skip_special_tokens": self.skip_special_tokens,
                "spaces_between_special_tokens": self.spaces_between_special_tokens,
                "include_stop_str_in_output": self.include_stop_str_in_output,
                "structured": structured_output(self.response_format, self.structured_outputs)}

    @field_validator("temperature", "top_p", "presence_penalty", "frequency_penalty", "n", mode="before")
    @classmethod
    def _null_is_default(cls, value: Any, info: Any) -> Any:
        if value is None:
            return cls.model_fields[info.field_name].default
        return value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class InputExtra(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    filename: Text = ""
    text: Text = ""


class _Infill(BaseModel):
    """codeserve's fill-in-the-middle extensions, shared by /v1/completions and /infill."""

    input_extra: list[InputExtra] = Field(
        default_factory=list, description="other files for context (llama.cpp's input_extra), written in the "
                                          "model family's repository format where it has one")
    filename: Text = Field("", description="the edited file's path, where the repository format has a place for it")
    repo_name: Text | None = Field(None, description="the repository's name, for the repository format's header")
    code_stops: bool | None = Field(
        None, description="end at the end of the line (cursor mid-line), on a dedent below the cursor's block, or "
                          "after closing a bracket opened before the cursor; default: on for /infill and the "
                          "Copilot route, CODESERVE_COMPLETION_CODE_STOPS for /v1/completions")
    fit_context: bool | None = Field(
        None, description="trim other files, then the far prefix, then the far suffix (whole lines) to fit the "
                          "context instead of answering 400; default: on for /infill and the Copilot route")

    def infill_extras(self) -> tuple[tuple[str, str], ...]:
        return tuple((chunk.filename, chunk.text) for chunk in self.input_extra if chunk.text)


# ---- responses (OpenAI's shapes; they describe the 200 bodies in the OpenAPI document) -------------
# "stop" | "length" from generation; vLLM may also report "abort" or "error": a string, so none becomes a 500.
FinishReason = str


class _OmitsNone(BaseModel):
    """Leaves out the listed fields when they are None, as OpenAI does (a chunk's `usage`, a delta's `role`)."""

    _omit_if_none: ClassVar[tuple[str, ...]] = ()

    # No return annotation on purpose: with one, pydantic replaces the model's JSON schema by the annotation's.
    @model_serializer(mode="wrap")
    def _omit(self, handler: SerializerFunctionWrapHandler):
        data = handler(self)
        return {k: v for k, v in data.items() if not (v is None and k in self._omit_if_none)}


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


