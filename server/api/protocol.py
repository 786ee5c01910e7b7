"""What the endpoints' protocol models share: valid text, stop lists, OpenAI's sampling fields, codeserve's
fill-in-the-middle extensions, usage and the response helpers. Each endpoint's own models live beside it
(api/<endpoint>/protocol.py). Validation names the field that is wrong.

Unknown fields are tolerated: IDE clients send extras (Copilot's `extra`, `nwo`, `code_annotations`).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

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
)

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
    # strict: a JSON string or boolean where a number is due is an error, not silently coerced
    model_config = ConfigDict(extra="allow", strict=True)


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


