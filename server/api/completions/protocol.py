"""OpenAI's /v1/completions request and response, with codeserve's fill-in-the-middle extensions."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from ...fim.fit import Truncation
from ..protocol import MAX_N, FinishReason, Text, Usage, _Infill, _OmitsNone, _Sampling, accepted


class CompletionRequest(_Sampling, _Infill):
    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=64)] | Annotated[
        list[int], Field(min_length=1)]
    suffix: Text | None = None  # Tabby's vllm backend sends null: same as absent
    max_tokens: int | None = Field(16, ge=0)  # OpenAI's default for completions
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5)
    best_of: int | None = Field(None, ge=1, le=MAX_N)
    # What GitHub Copilot sends beside the prompt (its language, the repository's name, annotations wanted)
    extra: Any = accepted("Copilot's language and indentation hints; the cleaner reads the code itself")
    nwo: Any = accepted("Copilot's repository name (owner/name); `repo_name` is this server's field for it")
    code_annotations: Any = accepted("Copilot's request for code-reference annotations, which it computes itself")

    @model_validator(mode="after")
    def _checks(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of other than n is not supported; leave it unset")
        if self.suffix and self.echo:
            raise ValueError("echo cannot be combined with suffix")
        return self

    def prompts(self) -> list[str | list[int]]:
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and isinstance(self.prompt[0], int):
            return [list(self.prompt)]
        return list(self.prompt)  # type: ignore[arg-type]


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None


class CompletionResponse(_OmitsNone):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    truncation: Truncation | None = None  # only when the prompt was trimmed to fit
    _omit_if_none = ("truncation",)


class CompletionChunk(_OmitsNone):
    """One streamed event; the last one (with stream_options.include_usage) has no choices and the usage."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    truncation: Truncation | None = None  # on the first event, when the prompt was trimmed to fit
    _omit_if_none = ("usage", "truncation")


