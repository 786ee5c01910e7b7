"""What OpenAI's endpoints share beyond their protocol models: sampling from the request's fields, and usage."""

from __future__ import annotations

from typing import Any

from ..engine.base import SamplingSettings
from ..generation.served import Target
from .endpoint import Job
from .protocol import Usage, _Sampling


def sampling(body: _Sampling, target: Target, logprobs: int | None) -> SamplingSettings:
    """The request's sampling; generation clamps max_tokens to the context (GenerationCore.prepare)."""
    return SamplingSettings(temperature=body.temperature, top_p=body.top_p, n=body.n, stop=tuple(body.stop),
                            seed=body.seed, presence_penalty=body.presence_penalty,
                            frequency_penalty=body.frequency_penalty, logprobs=logprobs, adapter=target.adapter,
                            **body.extra_sampling())


def usage(job: Job[Any], completion_tokens: int) -> Usage:
    """OpenAI's accounting: prompts once each, completion tokens summed over every returned choice."""
    prompt = job.prepared.prompt_tokens
    return Usage(prompt_tokens=prompt, completion_tokens=completion_tokens, total_tokens=prompt + completion_tokens)
