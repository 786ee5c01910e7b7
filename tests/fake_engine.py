"""A deterministic engine for contract tests: no model, same protocol as server/engine/base.py.

It 'generates' words from a fixed vocabulary chosen by the prompt, one per step, honours max_tokens,
stop strings, n and seeds, can be slowed per token (to test cancellation), and records every prompt
it received so tests can check exactly what the server sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from server.engine.base import Delta, EngineError, SamplingSettings, TokenLogprob

WORDS = ("return", " x", " +", " 1", "\n", "    ", "if", " y", ":", " pass", " print", "(", ")", " None")
_TOKEN = re.compile(r"<[^<>\s]+>|\s+|\w+|[^\w\s]")


@dataclass
class FakeEngine:
    model_id: str = "fake-coder"
    max_model_len: int = 2048
    token_delay_s: float = 0.0
    eos_after: int | None = None  # finish with "stop" after this many tokens (like an EOS)
    fail_after: int | None = None  # raise EngineError after this many tokens (mid-stream failure)
    prompts: list[str | list[int]] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    _running: set[str] = field(default_factory=set)
    _completed: set[str] = field(default_factory=set)

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [int(hashlib.blake2b(t.encode(), digest_size=3).hexdigest(), 16) for t in _TOKEN.findall(text)]

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        turns = "".join(f"<|{m['role']}|>{m['content']}\n" for m in messages)
        return turns + "<|assistant|>"

    def num_unfinished_requests(self) -> int:
        return len(self._running)

    def describe(self) -> dict[str, Any]:
        return {"name": "fake", "args": {"model": self.model_id}, "max_model_len": self.max_model_len}

    async def abort(self, request_id: str) -> None:
        """Records aborts of requests that did not complete (a cancelled generator already stopped)."""
        if request_id not in self._completed:
            self.aborted.append(request_id)
        self._running.discard(request_id)

    async def shutdown(self) -> None:
        self._running.clear()

    def _word(self, prompt: str | list[int], index: int, seed: int | None, step: int) -> str:
        key = f"{prompt}|{index}|{seed}".encode()
        start = int(hashlib.blake2b(key, digest_size=2).hexdigest(), 16)
        return WORDS[(start + step) % len(WORDS)]

    async def generate(self, prompt: str | list[int], sampling: SamplingSettings,
                       request_id: str) -> AsyncIterator[Delta]:
        if request_id in self._running:
            raise EngineError(f"request id {request_id} is already running")
        self.prompts.append(prompt)
        self._running.add(request_id)
        full = [""] * sampling.n  # everything generated
        emitted = [0] * sampling.n  # how much of it went out (text that may begin a stop string waits)
        finished = [False] * sampling.n
        try:
            if sampling.max_tokens == 0:
                for i in range(sampling.n):
                    yield Delta(i, "", 0, "length")
                self._completed.add(request_id)
                return
            for step in range(sampling.max_tokens):
                await asyncio.sleep(self.token_delay_s)
                if request_id not in self._running:
                    return  # aborted
                for i in range(sampling.n):
                    if finished[i]:
                        continue
                    word, finish = self._next(prompt, sampling, i, step)
                    full[i] += word
                    text, finish = _visible(full[i], emitted[i], sampling.stop, finish)
                    emitted[i] += len(text)
                    finished[i] = finish is not None
                    logprobs: tuple[TokenLogprob, ...] = ()
                    if sampling.logprobs is not None and word:
                        logprobs = (TokenLogprob(word, -0.5, {word: -0.5, " y": -1.5}),)
                    yield Delta(i, text, 1, finish, logprobs)
                if all(finished):
                    self._completed.add(request_id)
                    return
                if self.fail_after is not None and step + 1 >= self.fail_after:
                    raise EngineError("fake engine failure")
        finally:
            self._running.discard(request_id)

    def _next(self, prompt: str | list[int], sampling: SamplingSettings, index: int,
              step: int) -> tuple[str, str | None]:
        """The next token's text and the finish reason it brings (EOS or the length limit)."""
        if self.eos_after is not None and step >= self.eos_after:
            return "", "stop"
        greedy = sampling.temperature == 0  # one most likely continuation: every choice is the same
        word = self._word(prompt, 0 if greedy else index, 0 if greedy else sampling.seed, step)
        return word, "length" if step + 1 == sampling.max_tokens else None


def _visible(full: str, emitted: int, stops: Sequence[str], finish: str | None) -> tuple[str, str | None]:
    """What may be sent now, as vLLM's detokenizer decides it: text up to a stop string (excluded), and
    nothing that could still turn out to begin one until the request ends."""
    for stop in stops:
        at = full.find(stop)
        if at >= 0:
            return full[emitted:at] if at > emitted else "", "stop"
    if finish is not None:
        return full[emitted:], finish
    hold = max((k for stop in stops for k in range(1, len(stop)) if full.endswith(stop[:k])), default=0)
    return full[emitted:len(full) - hold], None
