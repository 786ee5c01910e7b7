"""A deterministic engine for contract tests and load-test dry runs: no model, same protocol.

It 'generates' words from a fixed vocabulary chosen by the prompt, one per step, honours max_tokens,
stop strings, n and seeds, can be slowed per token (to test cancellation), and records every prompt
it received so tests can check exactly what the server sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from .base import Delta, EngineError, SamplingSettings, TokenLogprob

WORDS = ("return", " x", " +", " 1", "\n", "    ", "if", " y", ":", " pass", " print", "(", ")", " None")
_TOKEN = re.compile(r"<[^<>\s]+>|\s+|\w+|[^\w\s]")


@dataclass
class FakeEngine:
    model_id: str = "fake-coder"
    max_model_len: int = 2048
    token_delay_s: float = 0.0
    eos_after: int | None = None  # finish with "stop" after this many tokens (like an EOS)
    special: set[str] = field(default_factory=set)
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

    def special_tokens(self) -> set[str]:
        return set(self.special)

    def num_unfinished_requests(self) -> int:
        return len(self._running)

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
        texts = [""] * sampling.n
        finished = [False] * sampling.n
        try:
            if sampling.max_tokens == 0:
                for i in range(sampling.n):
                    yield Delta(i, "", 0, "length", self._prompt_tokens(prompt))
                self._completed.add(request_id)
                return
            for step in range(sampling.max_tokens):
                await asyncio.sleep(self.token_delay_s)
                if request_id not in self._running:
                    return  # aborted
                for i in range(sampling.n):
                    if finished[i]:
                        continue
                    delta = self._step(prompt, sampling, i, step, texts[i])
                    texts[i] += delta.text
                    finished[i] = delta.finish_reason is not None
                    yield delta
                if all(finished):
                    self._completed.add(request_id)
                    return
                if self.fail_after is not None and step + 1 >= self.fail_after:
                    raise EngineError("fake engine failure")
        finally:
            self._running.discard(request_id)

    def _prompt_tokens(self, prompt: str | list[int]) -> int:
        return len(prompt) if isinstance(prompt, list) else len(self.tokenize(prompt))

    def _step(self, prompt: str | list[int], sampling: SamplingSettings, index: int, step: int,
              so_far: str) -> Delta:
        prompt_tokens = self._prompt_tokens(prompt)
        if self.eos_after is not None and step >= self.eos_after:
            return Delta(index, "", 1, "stop", prompt_tokens)
        word = self._word(prompt, index, sampling.seed if sampling.temperature > 0 else 0, step)
        text = so_far + word
        for stop in sampling.stop:
            at = text.find(stop)
            if at >= 0:
                return Delta(index, text[len(so_far):at] if at > len(so_far) else "", 1, "stop", prompt_tokens)
        logprobs: tuple[TokenLogprob, ...] = ()
        if sampling.logprobs is not None:
            logprobs = (TokenLogprob(word, -0.5, {word: -0.5, " y": -1.5}),)
        last = step + 1 == sampling.max_tokens
        return Delta(index, word, 1, "length" if last else None, prompt_tokens, logprobs)
