"""A deterministic engine for contract tests: no model, same protocol as server/engine/base.py.

It 'generates' words from a fixed vocabulary chosen by the prompt, one per step, honours max_tokens,
stop strings, n and seeds, can be slowed per token (to test cancellation), and records every prompt
it received so tests can check exactly what the server sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from server.engine.base import Delta, SamplingSettings, TokenLogprob
from server.engine.structured import check_structured
from server.engine.tool_parsing import ToolParserSession
from server.errors import EngineFailure, EngineUnavailable, InvalidRequest

WORDS = ("return", " x", " +", " 1", "\n", "    ", "if", " y", ":", " pass", " print", "(", ")", " None")
MAX_TOKEN_CHARS = 16
_TOKEN = re.compile(r"<[^<>\s]{1,14}>|\s{1,16}|\w{1,16}|[^\w\s]")
VOCAB_SIZE = 2**24  # ids are 3-byte hashes


@dataclass
class FakeEngine:
    model_id: str = "fake-coder"
    max_model_len: int = 2048
    token_delay_s: float = 0.0
    eos_after: int | None = None  # finish with "stop" after this many tokens (like an EOS)
    fail_after: int | None = None  # raise EngineFailure after this many tokens (mid-stream failure)
    fail_message: str = "fake engine failure"
    refuse: InvalidRequest | None = None  # raised at the first step, as an engine refuses what it cannot run (a 400
    # from llama-server: a grammar it cannot parse, a schema it cannot convert)
    vocab_size: int = VOCAB_SIZE
    max_token_chars: int = MAX_TOKEN_CHARS
    special_tokens: frozenset[str] = frozenset({"<|system|>", "<|user|>", "<|assistant|>", "<|endoftext|>"})
    tool_template: bool = False  # its chat template renders tools (else the generic prompt describes them)
    reply: str | None = None  # when set, every sequence 'generates' this text, token by token, then stops
    death: str | None = None  # set by kill(): the engine core is gone
    tokenized_on_loop: list[bool] = field(default_factory=list)  # per tokenize call: on the event loop?
    prompts: list[str | list[int]] = field(default_factory=list)
    samplings: list[SamplingSettings] = field(default_factory=list)  # what the server asked for, per request
    aborted: list[str] = field(default_factory=list)
    _running: set[str] = field(default_factory=set)
    _completed: set[str] = field(default_factory=set)

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self.tokenized_on_loop.append(_on_event_loop())
        text.encode("utf-8")  # a lone surrogate fails here, as it does in a real tokenizer (TypeError there)
        return [int(hashlib.blake2b(t.encode(), digest_size=3).hexdigest(), 16) for t in _TOKEN.findall(text)]

    def chat_prompt(self, messages: list[dict[str, Any]], template: str | None = None,
                    tools: list[dict[str, Any]] | None = None, variables: dict[str, Any] | None = None) -> str:
        turns = "".join(f"<|{m['role']}|>{m['content']}\n" for m in messages)
        offered = "".join(f"<|tool|>{json.dumps(tool)}\n" for tool in tools or ())
        given = f"<|variables|>{json.dumps(variables, sort_keys=True)}\n" if variables else ""
        return given + offered + turns + "<|assistant|>"

    def template_takes_tools(self, template: str | None = None) -> bool:
        return self.tool_template

    def tool_parser(self, name: str, tools: list[dict[str, Any]]) -> ToolParserSession:
        return ToolParserSession(name, _Vocabulary(), tools)

    def check(self, sampling: SamplingSettings) -> None:
        if sampling.structured is not None:  # the real check: a bad grammar is refused here as on vLLM
            check_structured(sampling.structured)

    def num_unfinished_requests(self) -> int:
        return len(self._running)

    def describe(self) -> dict[str, Any]:
        return {"name": "fake", "args": {"model": self.model_id}, "max_model_len": self.max_model_len}

    def dead(self) -> str | None:
        return self.death

    def kill(self, reason: str = "the engine core process exited (killed)") -> None:
        """What an OOM kill of vLLM's engine core does: every call from now on fails."""
        self.death = reason

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

    def generate(self, prompt: str | list[int], sampling: SamplingSettings,
                 request_id: str) -> AsyncIterator[Delta]:
        # vLLM validates SamplingParams and the prompt when generate() is called, before any output
        if sampling.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {sampling.max_tokens}.")
        if isinstance(prompt, list) and any(not 0 <= t < self.vocab_size for t in prompt):
            raise ValueError(f"Token id {max(prompt)} is out of vocabulary")
        return self._generate(prompt, sampling, request_id)

    async def _generate(self, prompt: str | list[int], sampling: SamplingSettings,
                        request_id: str) -> AsyncIterator[Delta]:
        if self.death is not None:
            raise EngineUnavailable(self.death)
        if self.refuse is not None:
            raise self.refuse
        if request_id in self._running:
            raise EngineFailure(f"request id {request_id} is already running")
        self.prompts.append(prompt)
        self.samplings.append(sampling)
        self._running.add(request_id)
        full = [""] * sampling.n  # everything generated
        emitted = [0] * sampling.n  # how much of it went out (text that may begin a stop string waits)
        finished = [False] * sampling.n
        try:
            for step in range(sampling.max_tokens):
                await asyncio.sleep(self.token_delay_s)
                if self.death is not None:
                    raise EngineUnavailable(self.death)
                if request_id not in self._running:
                    return  # aborted
                for i in range(sampling.n):
                    if finished[i]:
                        continue
                    word, finish = self._next(prompt, sampling, i, step)
                    full[i] += word
                    text, finish, stop = _visible(full[i], emitted[i], sampling.stop, finish)
                    emitted[i] += len(text)
                    finished[i] = finish is not None
                    logprobs: tuple[TokenLogprob, ...] = ()
                    if sampling.logprobs is not None and word:
                        logprobs = (TokenLogprob(word, -0.5, {word: -0.5, " y": -1.5}),)
                    yield Delta(i, text, 1, finish, logprobs, stop_string=stop)
                if all(finished):
                    self._completed.add(request_id)
                    return
                if self.fail_after is not None and step + 1 >= self.fail_after:
                    raise EngineFailure(self.fail_message)
        finally:
            self._running.discard(request_id)

    def _next(self, prompt: str | list[int], sampling: SamplingSettings, index: int,
              step: int) -> tuple[str, str | None]:
        """The next token's text and the finish reason it brings (EOS, a stop token, or the length limit)."""
        if self.eos_after is not None and step >= self.eos_after:
            return "", "stop"
        if self.reply is not None:
            pieces = _TOKEN.findall(self.reply)
            if step >= len(pieces) or self.tokenize(pieces[step])[0] in sampling.stop_token_ids:
                return "", "stop"
            return pieces[step], "length" if step + 1 == sampling.max_tokens else None
        greedy = sampling.temperature == 0  # one most likely continuation: every choice is the same
        word = self._word(prompt, 0 if greedy else index, 0 if greedy else sampling.seed, step)
        return word, "length" if step + 1 == sampling.max_tokens else None


def _visible(full: str, emitted: int, stops: Sequence[str],
             finish: str | None) -> tuple[str, str | None, str | None]:
    """What may be sent now, as vLLM's detokenizer decides it: text up to a stop string (excluded, and named as
    vLLM's stop_reason names it), and nothing that could still turn out to begin one until the request ends."""
    for stop in stops:
        at = full.find(stop)
        if at >= 0:
            return full[emitted:at] if at > emitted else "", "stop", stop
    if finish is not None:
        return full[emitted:], finish, None
    hold = max((k for stop in stops for k in range(1, len(stop)) if full.endswith(stop[:k])), default=0)
    return full[emitted:len(full) - hold], None, None


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _Vocabulary:
    """What vLLM's text-based tool parsers read of a tokenizer: its vocabulary (the fake's tags are plain text)."""

    def get_vocab(self) -> dict[str, int]:
        return {}
