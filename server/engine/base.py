"""The Engine protocol: what generation needs from an inference engine, and nothing more.

An engine raises server.errors' EngineUnavailable when its process is gone (nothing it was given will finish,
nothing new will run) and EngineFailure when it failed on one request; generation words both for the client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class EngineStartError(RuntimeError):
    """The engine could not start (out of memory, missing weights, bad arguments)."""

    def __init__(self, message: str, out_of_memory: bool = False):
        super().__init__(message)
        self.out_of_memory = out_of_memory


@dataclass(frozen=True)
class SamplingSettings:
    """Engine-agnostic sampling parameters, already validated by the protocol layer."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: Sequence[str] = ()
    stop_token_ids: Sequence[int] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None
    adapter: str | None = None  # the LoRA adapter (by its served name) that generates, or the base model


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Delta:
    """New output of one of the request's n sequences since its previous Delta."""

    index: int
    text: str
    token_count: int  # tokens this delta adds
    finish_reason: str | None  # "stop" | "length" | None while running
    logprobs: tuple[TokenLogprob, ...] = ()
    # A copy of another choice's tokens, made by the adapter rather than generated (greedy n > 1): usage
    # counts it, as OpenAI counts every returned choice; metrics of the engine's work do not.
    copied: bool = False


class Engine(Protocol):
    model_id: str
    max_model_len: int
    vocab_size: int  # token ids run from 0 to vocab_size - 1
    max_token_chars: int  # the longest text one token stands for: len(text) / this bounds the token count
    special_tokens: frozenset[str]  # the tokenizer's special tokens (template markers), as text

    def generate(self, prompt: str | list[int], sampling: SamplingSettings, request_id: str) -> AsyncIterator[Delta]:
        """Yield deltas until every sequence finished. Cancelling the iteration aborts the request."""
        ...

    async def abort(self, request_id: str) -> None: ...

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids as the engine would make them (BOS included where the model adds one)."""
        ...

    def chat_prompt(self, messages: list[dict[str, str]], template: str | None = None) -> str:
        """The model's chat template (or `template` over it) applied, ready for generation; ChatTemplateError
        (engine/chat.py) where the model has none or the template refuses the messages."""
        ...

    def num_unfinished_requests(self) -> int: ...

    def dead(self) -> str | None:
        """Why the engine can no longer serve (its process exited), or None while it can."""
        ...

    def describe(self) -> dict[str, Any]:
        """What runs, as the engine sees it: {"name", "args", "max_model_len"} (published on /v1/plan)."""
        ...

    async def shutdown(self) -> None: ...
