"""OpenAI's /v1/embeddings request and response (OpenAI's API reference, "Create embeddings"), with vLLM's
truncation fields (vllm/entrypoints/pooling/base/protocol.py, 0.32: truncate_prompt_tokens, truncation_side)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from ..protocol import _Request

# The most inputs the schema takes at all; CODESERVE_MAX_EMBEDDING_INPUTS (default 2048, OpenAI's) is the limit a
# request meets first, checked with the setting's name (serving.py).
MAX_INPUTS = 100_000
NonEmpty = Annotated[str, Field(min_length=1)]
Tokens = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class Truncation(_Request):
    # vLLM's: -1 truncates to the model's limit, k to k tokens; None refuses an input over the limit (a 400 naming it)
    truncate_prompt_tokens: int | None = Field(None, ge=-1)
    truncation_side: Literal["left", "right"] = Field(
        "right", description="'right' keeps the first tokens, 'left' the last (vLLM's meaning)")


class EmbeddingRequest(Truncation):
    model: str | None = None
    # a string, strings, token ids, or lists of token ids (OpenAI's four shapes)
    input: NonEmpty | Annotated[list[NonEmpty], Field(min_length=1, max_length=MAX_INPUTS)] | Tokens | Annotated[
        list[Tokens], Field(min_length=1, max_length=MAX_INPUTS)]
    encoding_format: Literal["float", "base64"] = "float"  # base64: little-endian float32 bytes (what the SDK decodes)
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    def inputs(self) -> list[str | list[int]]:
        if isinstance(self.input, str):
            return [self.input]
        if isinstance(self.input[0], int):
            return [list(self.input)]
        return list(self.input)


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
