"""The rerank request and response as Jina's and Cohere's APIs define them and vLLM serves them
(vllm/entrypoints/pooling/scoring/protocol.py, 0.32: RerankRequest, RerankResponse): what Continue's rerank role
sends (core/llm/llms/Vllm.ts and its openai-adapters: {model, query, documents} to `{apiBase}rerank`, reading
results[].index and relevance_score)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from ..embeddings.protocol import MAX_INPUTS, Truncation
from ..protocol import _Request


class DocumentIn(_Request):
    text: str  # Jina's and Cohere's object form of a document


class RerankRequest(Truncation):
    model: str | None = None
    query: Annotated[str, Field(min_length=1)]
    documents: Annotated[list[str | DocumentIn], Field(min_length=1, max_length=MAX_INPUTS)]
    top_n: int | None = Field(None, ge=0, description="the best n results; 0 or absent: all (vLLM's 0, Cohere's null)")
    return_documents: bool = True  # Jina's default and vLLM's shape; Cohere's clients send false to save bytes
    user: str | None = None

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class DocumentOut(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    document: DocumentOut | None = None
    relevance_score: float


class RerankUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(BaseModel):
    id: str
    model: str
    usage: RerankUsage
    results: list[RerankResult]
