"""POST /v1/rerank and /rerank: a query against documents through the rerank role's cross-encoder, answered in the
Jina/Cohere shape vLLM answers with (results sorted best first, each with its index and relevance_score)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from ...engine.base import PairTokens, SamplingSettings
from ...generation.core import Prepared, Prompt
from ...generation.served import Target
from ...metrics import RequestObserver
from ...settings import Settings
from ..embeddings.serving import bounded, pooler, truncated
from ..endpoint import Endpoint, Job
from .protocol import DocumentOut, RerankRequest, RerankResponse, RerankResult, RerankUsage


@dataclass(frozen=True)
class _Pairs(Prepared):
    pairs: tuple[PairTokens, ...] = ()


class Rerank(Endpoint[RerankRequest]):
    """Reranks `documents` by their relevance to `query` (a cross-encoder scores each pair, 0..1); the best
    `top_n` first, with the document's text unless `return_documents` is false. A pair over the model's limit is a
    400 naming the document unless `truncate_prompt_tokens` asks to cut it."""

    name = "rerank"
    paths = ("/v1/rerank", "/rerank")
    request = RerankRequest
    response_model = RerankResponse

    def __init__(self, settings: Settings):
        self.max_inputs = settings.max_embedding_inputs

    def convert(self, target: Target, body: RerankRequest) -> Job[RerankRequest]:
        texts = body.texts()
        bounded(len(texts), self.max_inputs, "documents")
        engine, limit = pooler(target), target.core.served.max_model_len
        pairs = []
        for index, text in enumerate(texts):
            pair = engine.pair(body.query, text)
            ids = truncated(pair.token_ids, limit, body, f"documents[{index}]")
            types = pair.token_type_ids
            if types is not None and len(ids) < len(types):  # cut as the ids were
                types = types[:len(ids)] if body.truncation_side == "right" else types[-len(ids):]
            pairs.append(PairTokens(ids, types))
        prepared = _Pairs(tuple(Prompt(p.token_ids) for p in pairs), SamplingSettings(max_tokens=0), pairs=tuple(pairs))
        return Job(f"rerank-{uuid.uuid4().hex}", body, target, prepared)

    def slots(self, job: Job[RerankRequest]) -> int:
        return 1

    async def respond(self, job: Job[RerankRequest], observer: RequestObserver) -> RerankResponse:
        body = job.body
        assert isinstance(job.prepared, _Pairs)
        scores = await pooler(job.target).score(list(job.prepared.pairs), job.id)
        texts = body.texts()
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        if body.top_n:
            order = order[:body.top_n]
        tokens = job.prepared.prompt_tokens
        observer.prompt_tokens(tokens)
        return RerankResponse(
            id=job.id, model=job.model, usage=RerankUsage(prompt_tokens=tokens, total_tokens=tokens),
            results=[RerankResult(index=i, relevance_score=scores[i],
                                  document=DocumentOut(text=texts[i]) if body.return_documents else None)
                     for i in order])
