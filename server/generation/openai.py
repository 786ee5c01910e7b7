"""OpenAI completions and chat completions: request -> prompts + sampling, deltas -> JSON or SSE."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ..api.errors import ApiError, InvalidRequest, sse_error
from ..api.protocol import ChatRequest, CompletionRequest
from ..engine.base import Delta, SamplingSettings, TokenLogprob
from ..metrics import RequestObserver
from .core import Generator, Prompt, new_id


@dataclass
class _Choice:
    text: str = ""
    finish_reason: str | None = None
    tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass(frozen=True)
class Prepared:
    """A validated request, ready to run: everything that can fail with a 400 has been checked."""

    id: str
    prompts: list[Prompt]
    echo_texts: list[str]
    sampling: SamplingSettings
    include_usage: bool
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def choice_count(self) -> int:
        return len(self.prompts) * self.sampling.n


def _sampling(req: CompletionRequest | ChatRequest, max_tokens: int, logprobs: int | None) -> SamplingSettings:
    return SamplingSettings(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, n=req.n,
                            stop=tuple(req.stop), seed=req.seed, presence_penalty=req.presence_penalty,
                            frequency_penalty=req.frequency_penalty, logprobs=logprobs)


def prepare_completion(gen: Generator, req: CompletionRequest) -> Prepared:
    gen.check_model(req.model)
    texts = req.prompts()
    if req.echo and any(isinstance(t, list) for t in texts):
        raise InvalidRequest("'echo' needs a text prompt, not token ids", param="echo")
    prompts = [gen.text_prompt(t, req.suffix) for t in texts]
    budget = min(gen.token_budget(p, req.max_tokens) for p in prompts)
    echo = [t if req.echo and isinstance(t, str) else "" for t in texts]
    return Prepared(new_id("cmpl"), prompts, echo, _sampling(req, budget, req.logprobs), req.include_usage)


def prepare_chat(gen: Generator, req: ChatRequest) -> Prepared:
    gen.check_model(req.model)
    if req.messages[-1].role == "assistant" and not req.messages[-1].text():
        raise InvalidRequest("the last message is an empty assistant turn", param="messages")
    prompt = gen.chat_prompt([{"role": m.role, "content": m.text()} for m in req.messages])
    budget = gen.token_budget(prompt, req.token_limit, param="max_tokens")
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    return Prepared(new_id("chatcmpl"), [prompt], [""], _sampling(req, budget, logprobs), req.include_usage)


def _usage(prepared: Prepared, completion_tokens: int) -> dict[str, int]:
    """OpenAI's accounting: prompts once each, completion tokens summed over every returned choice."""
    prompt = sum(len(p.token_ids) for p in prepared.prompts)
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens, "total_tokens": prompt + completion_tokens}


async def _collect(gen: Generator, prepared: Prepared, observer: RequestObserver) -> list[_Choice]:
    choices = [_Choice() for _ in range(prepared.choice_count)]
    async for index, delta in gen.run(prepared.prompts, prepared.sampling, prepared.id, observer):
        choice = choices[index]
        choice.text += delta.text
        choice.tokens += delta.token_count
        choice.logprobs.extend(delta.logprobs)
        choice.finish_reason = delta.finish_reason or choice.finish_reason
    return choices


def _completion_logprobs(entries: list[TokenLogprob], offset: int) -> dict[str, Any]:
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.token)
    return {"tokens": [e.token for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [e.top for e in entries], "text_offset": offsets}


def _chat_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    return {"content": [{"token": e.token, "logprob": e.logprob, "bytes": list(e.token.encode()),
                         "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())}
                                          for t, lp in e.top.items()]} for e in entries]}


async def completion(gen: Generator, prepared: Prepared, observer: RequestObserver) -> dict[str, Any]:
    choices = await _collect(gen, prepared, observer)
    n = prepared.sampling.n
    body = []
    for i, c in enumerate(choices):
        echo = prepared.echo_texts[i // n]
        logprobs = _completion_logprobs(c.logprobs, len(echo)) if prepared.sampling.logprobs is not None else None
        body.append({"index": i, "text": echo + c.text, "logprobs": logprobs, "finish_reason": c.finish_reason})
    return {"id": prepared.id, "object": "text_completion", "created": prepared.created, "model": gen.served.id,
            "choices": body, "usage": _usage(prepared, sum(c.tokens for c in choices))}


async def chat(gen: Generator, prepared: Prepared, observer: RequestObserver) -> dict[str, Any]:
    choices = await _collect(gen, prepared, observer)
    logprobs = prepared.sampling.logprobs is not None
    body = [{"index": i, "message": {"role": "assistant", "content": c.text},
             "logprobs": _chat_logprobs(c.logprobs) if logprobs else None, "finish_reason": c.finish_reason}
            for i, c in enumerate(choices)]
    return {"id": prepared.id, "object": "chat.completion", "created": prepared.created, "model": gen.served.id,
            "choices": body, "usage": _usage(prepared, sum(c.tokens for c in choices))}


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


async def completion_stream(gen: Generator, prepared: Prepared, observer: RequestObserver) -> AsyncIterator[str]:
    def chunk(index: int, text: str, delta: Delta | None) -> str:
        logprobs = None
        if delta is not None and prepared.sampling.logprobs is not None:
            logprobs = _completion_logprobs(list(delta.logprobs), 0)
        return sse({"id": prepared.id, "object": "text_completion", "created": prepared.created,
                    "model": gen.served.id, "choices": [{"index": index, "text": text, "logprobs": logprobs,
                                                         "finish_reason": delta.finish_reason if delta else None}]})

    async def body() -> AsyncIterator[str]:
        for i in range(prepared.choice_count):
            echo = prepared.echo_texts[i // prepared.sampling.n]
            if echo:
                yield chunk(i, echo, None)
        generated = 0
        async for index, delta in gen.run(prepared.prompts, prepared.sampling, prepared.id, observer):
            generated += delta.token_count
            if delta.text or delta.finish_reason:
                yield chunk(index, delta.text, delta)
        if prepared.include_usage:
            yield sse({"id": prepared.id, "object": "text_completion", "created": prepared.created,
                       "model": gen.served.id, "choices": [], "usage": _usage(prepared, generated)})

    async for event in _with_done(body(), observer):
        yield event


async def chat_stream(gen: Generator, prepared: Prepared, observer: RequestObserver) -> AsyncIterator[str]:
    def chunk(index: int, delta: dict[str, Any], finish: str | None, logprobs: Any = None) -> str:
        return sse({"id": prepared.id, "object": "chat.completion.chunk", "created": prepared.created,
                    "model": gen.served.id,
                    "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]})

    async def body() -> AsyncIterator[str]:
        for i in range(prepared.choice_count):
            yield chunk(i, {"role": "assistant", "content": ""}, None)
        generated = 0
        async for index, delta in gen.run(prepared.prompts, prepared.sampling, prepared.id, observer):
            generated += delta.token_count
            logprobs = _chat_logprobs(list(delta.logprobs)) if prepared.sampling.logprobs is not None else None
            if delta.text:
                yield chunk(index, {"content": delta.text}, None, logprobs)
            if delta.finish_reason:
                yield chunk(index, {}, delta.finish_reason)
        if prepared.include_usage:
            yield sse({"id": prepared.id, "object": "chat.completion.chunk", "created": prepared.created,
                       "model": gen.served.id, "choices": [], "usage": _usage(prepared, generated)})

    async for event in _with_done(body(), observer):
        yield event


async def _with_done(events: AsyncIterator[str], observer: RequestObserver) -> AsyncIterator[str]:
    """OpenAI's framing: events, then `data: [DONE]`; an error mid-stream is an error event, then close."""
    try:
        async for event in events:
            yield event
    except ApiError as error:
        observer.error_status = error.status
        yield sse_error(error)
        return
    yield "data: [DONE]\n\n"
