"""The Transformers engine's per-request state and the hooks it gives generate(): a logits processor keeping each
step's logprobs, one applying OpenAI's penalties, and a stopping criterion ending rows one by one (or the whole
batch, to yield to waiting requests)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .base import Delta, SamplingSettings, TokenLogprob


@dataclass
class Row:
    index: int
    tokens: list[int] = field(default_factory=list)
    emitted: str = ""  # text already sent
    finish: str | None = None


@dataclass
class Request:
    rid: str
    prompt: list[int]
    sampling: SamplingSettings
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[Delta | BaseException | None]
    rows: list[Row]
    aborted: bool = False

    def key(self, decoder_start: object) -> tuple[Any, ...]:
        s = self.sampling
        # rows of one generate() share sampling settings and decoder start; a seeded request runs alone (one
        # generator per call)
        return (s.temperature == 0, s.temperature, s.top_p, s.top_k, s.min_p, s.repetition_penalty,
                s.presence_penalty, s.frequency_penalty, s.seed,
                self.rid if s.seed is not None else None, decoder_start)

    def pending(self) -> int:
        """Rows still to generate (all n at first; fewer once some finished before a preemption)."""
        return sum(row.finish is None for row in self.rows)

    def send(self, item: Delta | BaseException | None) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)


class Logprobs:
    """Each step's log-probabilities of every row, from the raw logits (vLLM's default: before penalties,
    temperature and top-p), kept until the streamer reads the sampled token's and the top ones."""

    def __init__(self) -> None:
        self.last: Any = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        self.last = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def entry(self, index: int, token: int, top: int, text: Callable[[int], str]) -> TokenLogprob:
        values = self.last[index]
        ranked: dict[str, float] = {}
        if top:
            best = values.topk(top)
            ranked = {text(i): v for i, v in zip(best.indices.tolist(), best.values.tolist(), strict=True)}
        chosen = text(token)
        ranked.setdefault(chosen, float(values[token]))  # the sampled token is always listed, as vLLM does
        return TokenLogprob(chosen, float(values[token]), ranked)


class StopRows:
    """Ends each row on its own (finished or aborted); generate() stops when every row has, or early, every row
    at once, when `waiting()` says requests wait and the batch has run `slice_steps` steps (preempted)."""

    def __init__(self, rows: list[tuple[Request, Row]], waiting: Callable[[], bool] | None, slice_steps: int):
        self.rows, self.waiting, self.slice_steps, self.steps, self.preempted = rows, waiting, slice_steps, 0, False

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        self.steps += 1
        if self.waiting is not None and self.steps >= self.slice_steps and self.waiting():
            self.preempted = True
            return torch.ones(len(self.rows), dtype=torch.bool, device=input_ids.device)
        done = [row.finish is not None or request.aborted for request, row in self.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class Penalties:
    """OpenAI's presence and frequency penalties over each row's generated tokens (generate() has neither): its own
    record, which spans a preemption (the input ids then hold them as prompt)."""

    def __init__(self, sampling: SamplingSettings, rows: list[tuple[Request, Row]]):
        self.presence, self.frequency, self.rows = sampling.presence_penalty, sampling.frequency_penalty, rows

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        counts = torch.zeros_like(scores)
        for index, (_, row) in enumerate(self.rows):
            if row.tokens:
                tokens = torch.tensor(row.tokens, device=scores.device)
                counts[index].scatter_add_(0, tokens, torch.ones_like(tokens, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)
