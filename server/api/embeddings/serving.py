"""POST /v1/embeddings: OpenAI's embeddings through the embedding role's engine (Roo Code's codebase index, Continue's
embed role, Tabby's openai/embedding backend).

Roo Code's openai-compatible embedder (src/services/code-index/embedders/openai-compatible.ts) sends {input: [...],
model, encoding_format: "base64", dimensions?} with `api-key` and Bearer headers; the openai SDK asks for base64 by
default and decodes float32; Tabby (crates/http-api-bindings/src/embedding/openai.rs) posts {input: [one text],
model} to `{api_endpoint}/embeddings` with a Bearer key and reads data[0].embedding as floats."""

from __future__ import annotations

import base64
import struct
import uuid
from typing import cast

from ...engine.base import Pooler, SamplingSettings
from ...errors import ContextLengthExceeded, InvalidRequest
from ...generation.core import Prepared, Prompt
from ...generation.served import Target
from ...metrics import RequestObserver
from ...settings import Settings
from ..endpoint import Endpoint, Job
from .protocol import Embedding, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage, Truncation


def pooler(target: Target) -> Pooler:
    return cast(Pooler, target.core.engine)


def bounded(count: int, most: int, param: str) -> None:
    """A batch within CODESERVE_MAX_EMBEDDING_INPUTS, or a 400 naming the field."""
    if count > most:
        raise InvalidRequest(f"{param} has {count} items; at most {most} per request "
                             f"(CODESERVE_MAX_EMBEDDING_INPUTS): send them in batches", param=param)


def truncated(ids: list[int], limit: int, body: Truncation, param: str) -> list[int]:
    """The input within the model's limit: as it is, cut as the request asks (truncate_prompt_tokens), or a 400
    naming it."""
    keep = limit if body.truncate_prompt_tokens in (None, -1) else min(limit, body.truncate_prompt_tokens or limit)
    if len(ids) <= keep:
        return ids
    if body.truncate_prompt_tokens is None:
        raise ContextLengthExceeded(
            f"{param} has {len(ids)} tokens; the model takes at most {limit} (CODESERVE_MAX_INPUT_TOKENS, or the "
            f"model's own limit): shorten it, or send truncate_prompt_tokens=-1 to cut it", param=param)
    return ids[:keep] if body.truncation_side == "right" else ids[-keep:]


def encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


class Embeddings(Endpoint[EmbeddingRequest]):
    """OpenAI's embeddings: one vector per input (a string, strings, token ids), `float` or `base64`, cut to
    `dimensions` where the model has Matryoshka widths; an input over the model's limit is a 400 naming its index
    unless `truncate_prompt_tokens` asks to cut it."""

    name = "embeddings"
    paths = ("/v1/embeddings", "/embeddings")
    request = EmbeddingRequest
    response_model = EmbeddingResponse

    def __init__(self, settings: Settings):
        self.max_inputs = settings.max_embedding_inputs

    def convert(self, target: Target, body: EmbeddingRequest) -> Job[EmbeddingRequest]:
        inputs = body.inputs()
        bounded(len(inputs), self.max_inputs, "input")
        entry = target.core.served.entry
        if body.dimensions is not None and entry.retrieval is not None:
            problem = entry.retrieval.dimensions_problem(body.dimensions)
            if problem:
                raise InvalidRequest(f"dimensions={body.dimensions}: {problem}", param="dimensions")
        engine, limit = pooler(target), target.core.served.max_model_len
        several = not isinstance(body.input, str) and not isinstance(body.input[0], int)
        prompts = []
        for index, item in enumerate(inputs):
            param = f"input[{index}]" if several else "input"
            ids = engine.tokenize(item) if isinstance(item, str) else item
            if isinstance(item, list) and max(item) >= engine.vocab_size:
                raise InvalidRequest(f"{param} holds token id {max(item)}; the model's ids run from 0 to "
                                     f"{engine.vocab_size - 1}", param=param)
            prompts.append(Prompt(truncated(ids, limit, body, param)))
        return Job(f"embd-{uuid.uuid4().hex}", body, target, Prepared(tuple(prompts), SamplingSettings(max_tokens=0)))

    def slots(self, job: Job[EmbeddingRequest]) -> int:
        return 1  # one batch through the forward pass, however many inputs: one slot of the limiter

    async def respond(self, job: Job[EmbeddingRequest], observer: RequestObserver) -> EmbeddingResponse:
        body = job.body
        dimensions = body.dimensions
        entry = job.target.core.served.entry
        if entry.retrieval is not None and dimensions == entry.retrieval.dimensions:
            dimensions = None  # the full width: nothing to cut
        vectors = await pooler(job.target).embed([p.token_ids for p in job.prepared.prompts], dimensions, job.id)
        tokens = job.prepared.prompt_tokens
        observer.prompt_tokens(tokens)
        return EmbeddingResponse(data=[Embedding(index=i, embedding=encode(v, body.encoding_format))
                                       for i, v in enumerate(vectors)],
                                 model=job.model, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens))
