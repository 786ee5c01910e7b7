"""The second engine: Transformers' own generate(), for the architectures vLLM refuses (CodeGen, XGLM/InCoder,
T5/CodeT5+ 220M-770M, CodeT5+ 2B-16B's composite encoder-decoder). The planner picks it per architecture
(planner/candidates.py engine_for); it serves behind the same Engine protocol: streamed deltas, abort, stop strings
and token ids, and concurrent requests batched.

Batching is dynamic: a worker thread runs one generate() at a time over every waiting request that samples the
same way (up to the plan's max_num_seqs rows); requests arriving meanwhile wait for the next batch, which a
decoder-only batch makes come soon: after PREEMPT_AFTER_STEPS steps it yields to them, its unfinished rows resuming
in that next batch from what they generated (re-prefilled, as vLLM recomputes a preempted sequence). Transformers'
continuous batching (generate_batch, paged attention) covers Llama-like models only, which vLLM serves anyway.
No paged KV cache: each sequence holds its own cache for its context, which is what the planner budgets.
Tokens reach each request through a generate() streamer that sees every row's new token per step; a stopping
criterion ends rows one by one (their stop, their max_tokens, an abort). Logprobs come from the raw logits.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ..errors import EngineFailure, EngineUnavailable, InvalidRequest
from ..planner.launch import Launch
from .base import Delta, SamplingSettings, TokenLogprob
from .chat import TokenizerChat
from .hf_hooks import Logprobs, Penalties, Request, Row, StopRows
from .hf_load import load
from .tokenizer import tokenizer_facts

log = logging.getLogger(__name__)
# vLLM's extra sampling parameters this engine takes (generate()'s own): the others are refused (check()).
HONOURED = ("top_k", "min_p", "repetition_penalty")
T5_FIRST_SENTINEL = "<extra_id_0>"
# Steps a decoder-only batch runs before it yields to waiting requests (a longer slice re-prefills less often).
PREEMPT_AFTER_STEPS = 32
# Encoder-decoders whose decoder continues the prompt (CodeT5+ 2B-16B, a CodeGen decoder: its model card passes
# decoder_input_ids = input_ids); others start the decoder at its start token (or after a T5 sentinel).
DECODER_CONTINUES_PROMPT = {"codet5p"}


class TransformersEngine(TokenizerChat):
    name = "transformers"

    def __init__(self, model: Any, tokenizer: Any, launch: Launch, model_id: str):
        import torch

        self._torch = torch
        self._model = model
        self._tokenizer = tokenizer
        self.launch = launch
        self.model_id = model_id
        self.encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
        self.max_model_len = min(launch.max_model_len, limit) if limit else launch.max_model_len
        facts = tokenizer_facts(tokenizer)
        self.vocab_size, self.max_token_chars, self.special_tokens = (facts.vocab_size, facts.max_token_chars,
                                                                      facts.special_tokens)
        eos = model.generation_config.eos_token_id if model.generation_config else tokenizer.eos_token_id
        self._eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        # the model's own padding id first: some (XGLM) derive positions from it
        pad = getattr(model.config, "pad_token_id", None)
        pad = pad if pad is not None else tokenizer.pad_token_id
        self._pad = pad if pad is not None else next(iter(self._eos), 0)
        sentinel = tokenizer.convert_tokens_to_ids(T5_FIRST_SENTINEL) if self.encoder_decoder else None
        self._sentinel = sentinel if isinstance(sentinel, int) and sentinel != tokenizer.unk_token_id else None
        self._continues_prompt = self.encoder_decoder and getattr(model.config, "model_type", None) in \
            DECODER_CONTINUES_PROMPT
        self._waiting: queue.Queue[Request | None] = queue.Queue()
        self._running: dict[str, Request] = {}
        self._death: str | None = None
        self.batch_rows: list[int] = []  # rows of each generate() call, in order (what batching achieved)
        self.tokens_generated = 0  # tokens the model produced, aborted rows' included
        self._worker = threading.Thread(target=self._work, name="transformers-engine", daemon=True)
        self._worker.start()

    @classmethod
    def start(cls, launch: Launch, overrides: dict[str, Any] | None = None) -> TransformersEngine:
        del overrides  # CODESERVE_ENGINE_ARGS are vLLM's arguments
        model, tokenizer = load(launch)
        return cls(model, tokenizer, launch, launch.served_name)

    # ---- the Engine protocol -------------------------------------------------------------------------------
    async def generate(self, prompt: str | list[int], sampling: SamplingSettings,
                       request_id: str) -> AsyncIterator[Delta]:
        if self._death is not None:
            raise EngineUnavailable(self._death)
        ids = prompt if isinstance(prompt, list) else self.tokenize(prompt)
        request = Request(request_id, ids, sampling, asyncio.get_running_loop(), asyncio.Queue(),
                           [Row(i) for i in range(sampling.n)])
        self._running[request_id] = request
        self._waiting.put(request)
        finished = 0
        try:
            while finished < sampling.n:
                item = await request.out.get()
                if item is None:  # the worker stopped (shutdown)
                    raise EngineUnavailable(self._death or "the Transformers engine stopped")
                if isinstance(item, BaseException):
                    raise EngineFailure(f"the engine failed on request {request_id}: {item}") from item
                finished += item.finish_reason is not None
                yield item
        finally:
            request.aborted = True  # ended, cancelled or failed: its rows stop at the next step
            self._running.pop(request_id, None)

    async def abort(self, request_id: str) -> None:
        request = self._running.pop(request_id, None)
        if request is not None:
            request.aborted = True

    def token_text(self, token: int) -> str:
        return str(self._tokenizer.decode([token]))

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def check(self, sampling: SamplingSettings) -> None:
        unsupported = [name for name in sampling.changed() if name not in HONOURED]
        if unsupported:
            raise InvalidRequest(f"'{unsupported[0]}' is not supported by the Transformers engine, which serves "
                                 f"{self.model_id} (vLLM cannot load its architecture); leave it unset",
                                 param=unsupported[0])

    def num_unfinished_requests(self) -> int:
        return len(self._running)

    def dead(self) -> str | None:
        return self._death

    def describe(self) -> dict[str, Any]:
        args = {"model": self.launch.model, "dtype": self.launch.dtype, "device": self.launch.device,
                "max_num_seqs": self.launch.max_num_seqs, "batching": "dynamic"}
        return {"name": self.name, "args": args, "max_model_len": self.max_model_len}

    async def shutdown(self) -> None:
        self._waiting.put(None)
        await asyncio.to_thread(self._worker.join, 30)
        for request in list(self._running.values()):
            request.send(None)

    # ---- the worker -----------------------------------------------------------------------------------------
    def _decoder_start(self, request: Request) -> object:
        """How an encoder-decoder's decoder starts: "sentinel" (T5 span infilling: the encoder input holds the first
        sentinel, the decoder starts after it); the prompt's length (the decoder continues the prompt: its padding
        is not masked in every implementation, so only prompts of one length share a batch); None (its start token).
        """
        if self._continues_prompt:
            return len(request.prompt)
        return "sentinel" if self._sentinel is not None and self._sentinel in request.prompt else None

    def _work(self) -> None:
        try:
            while True:
                first = self._waiting.get()
                if first is None:
                    return
                batch: list[Request] = [first]
                later: list[Request | None] = []
                key = first.key(self._decoder_start(first))
                rows = first.pending()
                while True:  # every request already waiting that samples the same way, up to max_num_seqs rows
                    try:
                        other = self._waiting.get_nowait()
                    except queue.Empty:
                        break
                    if other is None:
                        later.append(other)
                        break
                    fits = rows + other.pending() <= self.launch.max_num_seqs
                    if fits and other.key(self._decoder_start(other)) == key:
                        batch.append(other)
                        rows += other.pending()
                    else:
                        later.append(other)
                for item in later:
                    self._waiting.put(item)
                batch = [r for r in batch if not r.aborted]
                if batch:
                    self._run(batch)
        except Exception as exc:  # the engine cannot go on: say why to everyone waiting
            log.exception("the Transformers engine stopped")
            self._death = f"the Transformers engine stopped: {exc}"
            for request in list(self._running.values()):
                request.send(None)

    def _run(self, batch: list[Request]) -> None:
        torch = self._torch
        # at most the plan's sequences at once (what it budgeted memory for): a request's other rows run next
        rows = [(request, row) for request in batch for row in request.rows if row.finish is None]
        rows = rows[:self.launch.max_num_seqs]
        self.batch_rows.append(len(rows))
        # a row resumed after preemption continues from what it generated (re-prefilled, as vLLM recomputes)
        prompts = [request.prompt + row.tokens if not self.encoder_decoder else request.prompt for request, row in rows]
        width = max(len(p) for p in prompts)
        left = not self.encoder_decoder  # decoder-only: left padding, so every row's next token is at the end
        ids = [([self._pad] * (width - len(p)) + p) if left else (p + [self._pad] * (width - len(p))) for p in prompts]
        mask = [([0] * (width - len(p)) + [1] * len(p)) if left else ([1] * len(p) + [0] * (width - len(p)))
                for p in prompts]
        device = self._model.device
        sampling = batch[0].sampling
        scorer = Logprobs() if any(request.sampling.logprobs is not None for request in batch) else None
        streamer = _Streamer(self, rows, scorer)
        penalties = Penalties(sampling, rows) if sampling.presence_penalty or sampling.frequency_penalty else None
        # Decoder-only batches yield to waiting requests every PREEMPT_AFTER_STEPS steps (their rows resume in the
        # next batch, joined by what waited): a late request waits steps, not a whole long generation. A seeded batch
        # runs to its end (resuming would restart its random stream).
        preemptible = not self.encoder_decoder and sampling.seed is None
        stop = StopRows(rows, (lambda: not self._waiting.empty()) if preemptible else None, PREEMPT_AFTER_STEPS)
        kwargs: dict[str, Any] = {
            "input_ids": torch.tensor(ids, device=device), "attention_mask": torch.tensor(mask, device=device),
            "max_new_tokens": max(request.sampling.max_tokens - len(row.tokens) for request, row in rows),
            "do_sample": sampling.temperature > 0, "pad_token_id": self._pad,
            "streamer": streamer, "stopping_criteria": [stop],
            # the scorer first: it reads the raw distribution, before penalties and sampling (as vLLM reports)
            "logits_processor": [p for p in (scorer, penalties) if p is not None] or None,
        }
        if sampling.temperature > 0:
            kwargs |= {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k,
                       "min_p": sampling.min_p or None}
        if sampling.repetition_penalty != 1.0:  # Transformers' and vLLM's: logits of seen tokens divided by it
            kwargs["repetition_penalty"] = sampling.repetition_penalty
        start = self._decoder_start(batch[0])
        if start == "sentinel":
            first = self._model.config.decoder_start_token_id
            kwargs["decoder_input_ids"] = torch.tensor([[first, self._sentinel]] * len(rows), device=device)
        elif start is not None:  # one prompt length: no padding to mask
            kwargs["decoder_input_ids"] = kwargs["input_ids"]
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        try:
            with torch.inference_mode():
                self._model.generate(**{k: v for k, v in kwargs.items() if v is not None})
        except Exception as exc:  # one batch failed (e.g. out of memory): its requests get the error
            log.exception("generate() failed")
            for request in batch:
                request.send(exc)
            return
        ran = {id(row) for _, row in rows}
        for request in batch:  # rows preempted, or left out of this batch, continue in a later one
            if request.aborted:
                continue
            if not stop.preempted:  # generate() ended every row it ran: the last ones at its max_new_tokens
                for row in request.rows:
                    if row.finish is None and id(row) in ran:
                        self._finish(request, row, "length")
            if any(row.finish is None for row in request.rows):
                self._waiting.put(request)

    def step(self, request: Request, row: Row, token: int, logprob: TokenLogprob | None = None) -> None:
        """One new token of one row: decode, check stops and the limit, send the delta (with its logprob)."""
        if row.finish is not None:
            return
        self.tokens_generated += 1
        if request.aborted:
            row.finish = "abort"
            return
        sampling = request.sampling
        if token in self._eos or token in sampling.stop_token_ids:
            self._finish(request, row, "stop", tokens=1)
            return
        row.tokens.append(token)
        text = self._tokenizer.decode(row.tokens, skip_special_tokens=True)
        done = len(row.tokens) >= sampling.max_tokens
        scored = (logprob,) if logprob is not None else ()
        if text.endswith("\ufffd") and not done:  # half of a multi-byte character: wait for the rest
            request.send(Delta(row.index, "", 1, None, scored))
            return
        cut = _first_stop(text, sampling.stop, len(row.emitted))
        if cut is not None:
            stop = next(s for s in sampling.stop if s and text.startswith(s, cut))  # the one found at the cut
            self._send(request, row, text[:cut], "stop", scored, stop)
            return
        if done:
            self._send(request, row, text, "length", scored)
            return
        # hold back an end that may be the start of a stop string: once sent, text cannot be taken back
        self._send(request, row, text[:len(text) - _held(text, sampling.stop)], None, scored)

    def _send(self, request: Request, row: Row, text: str, finish: str | None,
              scored: tuple[TokenLogprob, ...] = (), stop: str | None = None) -> None:
        new = text[len(row.emitted):] if len(text) >= len(row.emitted) else ""
        row.emitted = max(text, row.emitted, key=len)
        row.finish = finish
        request.send(Delta(row.index, new, 1, finish, scored, stop_string=stop))

    def _finish(self, request: Request, row: Row, reason: str, tokens: int = 0) -> None:
        row.finish = reason
        request.send(Delta(row.index, "", tokens, reason))


def _held(text: str, stops: Sequence[str]) -> int:
    """Characters at the end of `text` that begin some stop string (they may turn into it)."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


def _first_stop(text: str, stops: Sequence[str], emitted: int) -> int | None:
    """Where the earliest stop string starts, if one ends in the text not yet sent."""
    found = [i for stop in stops if stop and (i := text.find(stop, max(0, emitted - len(stop) + 1))) >= 0]
    return min(found) if found else None


class _Streamer:
    """generate()'s streamer: put() gets the prompt once, then each step's new token of every row."""

    def __init__(self, engine: TransformersEngine, rows: list[tuple[Request, Row]], scorer: Logprobs | None):
        self.engine, self.rows, self.scorer, self.started = engine, rows, scorer, False

    def put(self, value: Any) -> None:
        if not self.started:  # the prompt (or the decoder's start tokens)
            self.started = True
            return
        tokens = value.reshape(-1).tolist()
        for index, ((request, row), token) in enumerate(zip(self.rows, tokens, strict=True)):
            top = request.sampling.logprobs
            scored = self.scorer.entry(index, int(token), top, self.engine.token_text) if (
                self.scorer is not None and top is not None and row.finish is None) else None
            self.engine.step(request, row, int(token), scored)

    def end(self) -> None:
        pass
