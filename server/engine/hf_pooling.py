"""The retrieval engine on Transformers: embedding models and cross-encoder rerankers run by their own forward pass
(the planner's choice on the CPU, planner/choose.py). It serves behind the Pooler protocol (engine/base.py):
one worker thread runs one batch at a time, padded to its longest input; what it computes is what
sentence-transformers computes from the same weights (pooling over the attention mask, L2 normalisation after the
Matryoshka cut) and, for a reranker, the one-label classifier's logit through a sigmoid, as vLLM's pooler does.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from ..errors import EngineFailure, EngineUnavailable, InvalidRequest
from ..planner.launch import Launch
from .base import Delta, PairTokens, SamplingSettings
from .chat import TokenizerChat
from .tokenizer import tokenizer_facts

log = logging.getLogger(__name__)
# Inputs x tokens one forward pass takes: a batch of 64 chunks of 256 tokens (the IDE indexers' batches) in one go.
MAX_BATCH_TOKENS = 16384


class TransformersPooler(TokenizerChat):
    name = "transformers"

    def __init__(self, model: Any, tokenizer: Any, launch: Launch):
        import torch

        self._torch = torch
        self._model = model
        self._tokenizer = tokenizer
        self.launch = launch
        self.model_id = launch.served_name
        limit = getattr(model.config, "max_position_embeddings", None)
        self.max_model_len = min(launch.max_model_len, limit) if limit else launch.max_model_len
        facts = tokenizer_facts(tokenizer)
        self.vocab_size, self.max_token_chars, self.special_tokens = (facts.vocab_size, facts.max_token_chars,
                                                                      facts.special_tokens)
        pad = tokenizer.pad_token_id
        pad = pad if pad is not None else getattr(model.config, "pad_token_id", None)
        self._pad = pad if pad is not None else (tokenizer.eos_token_id or 0)
        self._lock = threading.Lock()  # one forward pass at a time: the CPU's cores are the batch's
        self._running = 0
        self._death: str | None = None

    @classmethod
    def start(cls, launch: Launch, overrides: dict[str, Any] | None = None) -> TransformersPooler:
        del overrides  # CODESERVE_ENGINE_ARGS are vLLM's arguments
        import torch
        from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

        from .base import EngineStartError

        auto = AutoModelForSequenceClassification if launch.pooling == "score" else AutoModel
        try:
            tokenizer = AutoTokenizer.from_pretrained(launch.model, trust_remote_code=launch.trust_remote_code)
            model = auto.from_pretrained(launch.model, dtype=getattr(torch, launch.dtype),
                                         trust_remote_code=launch.trust_remote_code)
        except (OSError, ValueError) as exc:
            raise EngineStartError(f"Transformers could not load {launch.model}: {exc}") from exc
        model.eval()
        if launch.device == "cuda":
            model.to("cuda")
        return cls(model, tokenizer, launch)

    # ---- the Pooler protocol ----------------------------------------------------------------------------------
    async def embed(self, inputs: list[list[int]], dimensions: int | None, request_id: str) -> list[list[float]]:
        return await self._run(self._embed, inputs, dimensions, request_id=request_id)

    def pair(self, query: str, document: str) -> PairTokens:
        encoded = self._tokenizer(text=query, text_pair=document, add_special_tokens=True)
        types = encoded.get("token_type_ids")
        return PairTokens(list(encoded["input_ids"]), list(types) if types is not None else None)

    async def score(self, pairs: list[PairTokens], request_id: str) -> list[float]:
        return await self._run(self._score, pairs, request_id=request_id)

    # ---- the Engine protocol, as far as a pooling model goes -------------------------------------------------
    async def generate(self, prompt: str | list[int], sampling: SamplingSettings,
                       request_id: str) -> Any:
        raise InvalidRequest(f"'{self.model_id}' is a {self.launch.pooling} model: it generates no text",
                             param="model")
        yield Delta(0, "", 0, None)  # pragma: no cover - makes this an async generator

    async def abort(self, request_id: str) -> None:
        return None  # a batch runs to its end: a forward pass cannot be stopped halfway

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def check(self, sampling: SamplingSettings) -> None:
        return None

    def num_unfinished_requests(self) -> int:
        return self._running

    def dead(self) -> str | None:
        return self._death

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "args": {"model": self.launch.model, "pooling": self.launch.pooling,
                                            "pooling_type": self.launch.pooling_type, "dtype": self.launch.dtype},
                "max_model_len": self.max_model_len}

    async def shutdown(self) -> None:
        self._death = "the Transformers retrieval engine stopped"

    # ---- work ---------------------------------------------------------------------------------------------------
    async def _run(self, work: Any, *args: Any, request_id: str) -> Any:
        if self._death is not None:
            raise EngineUnavailable(self._death)
        self._running += 1
        try:
            return await asyncio.to_thread(self._locked, work, *args)
        except (InvalidRequest, EngineUnavailable):
            raise
        except Exception as exc:
            log.exception("request %s failed", request_id)
            raise EngineFailure(f"the engine failed on request {request_id}") from exc
        finally:
            self._running -= 1

    def _locked(self, work: Any, *args: Any) -> Any:
        with self._lock, self._torch.inference_mode():
            return work(*args)

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        """Indices in batches of at most MAX_BATCH_TOKENS padded tokens, inputs of like length together."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        batches: list[list[int]] = [[]]
        for index in order:
            if batches[-1] and (len(batches[-1]) + 1) * lengths[index] > MAX_BATCH_TOKENS:
                batches.append([])
            batches[-1].append(index)
        return batches

    def _tensors(self, rows: list[list[int]], types: list[list[int]] | None = None) -> dict[str, Any]:
        torch = self._torch
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):  # right padding: position ids stay those of the input alone
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        tensors = {"input_ids": ids, "attention_mask": mask}
        if types is not None:
            segment = torch.zeros((len(rows), width), dtype=torch.long)
            for i, row in enumerate(types):
                segment[i, :len(row)] = torch.tensor(row)
            tensors["token_type_ids"] = segment
        device = next(self._model.parameters()).device
        return {k: v.to(device) for k, v in tensors.items()}

    def _embed(self, inputs: list[list[int]], dimensions: int | None) -> list[list[float]]:
        torch = self._torch
        out: list[list[float]] = [[] for _ in inputs]
        for batch in self._batches([len(i) for i in inputs]):
            tensors = self._tensors([inputs[i] for i in batch])
            states = self._model(**tensors).last_hidden_state.float()
            mask = tensors["attention_mask"]
            if self.launch.pooling_type == "mean":
                weights = mask.unsqueeze(-1).to(states.dtype)
                vectors = (states * weights).sum(1) / weights.sum(1).clamp(min=1)
            elif self.launch.pooling_type == "last":
                vectors = states[torch.arange(len(batch)), mask.sum(1) - 1]
            else:
                vectors = states[:, 0]
            if dimensions is not None:
                vectors = vectors[:, :dimensions]
            if self.launch.pooling_normalize:
                vectors = torch.nn.functional.normalize(vectors, dim=-1)
            for row, index in enumerate(batch):
                out[index] = vectors[row].tolist()
        return out

    def _score(self, pairs: list[PairTokens]) -> list[float]:
        out = [0.0] * len(pairs)
        for batch in self._batches([len(p.token_ids) for p in pairs]):
            chosen = [pairs[i] for i in batch]
            types = [p.token_type_ids for p in chosen]
            tensors = self._tensors([p.token_ids for p in chosen],
                                    [t for t in types if t is not None] if all(t is not None for t in types) else None)
            logits = self._model(**tensors).logits.float()
            scores = self._torch.sigmoid(logits[:, 0])
            for row, index in enumerate(batch):
                out[index] = float(scores[row])
        return out
