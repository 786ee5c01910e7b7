"""OpenAI completions and chat completions on the wire: request -> prompts + sampling (prepare), deltas ->
one response (collect) or stream payloads (events). Framing, errors and [DONE] are serving.py's."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

from ..engine.base import SamplingSettings, TokenLogprob
from ..errors import InvalidRequest
from ..generation.core import GenerationCore, Prompt, new_id
from ..generation.hole import Hole, extra_files
from ..metrics import RequestObserver
from .protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    ChatRequest,
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    TokenLogprobOut,
    TopLogprob,
    Truncation,
    Usage,
)


@dataclass
class _Choice:
    text: str = ""
    finish_reason: str | None = None
    tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass(frozen=True)
class PreparedGeneration:
    """A validated request, ready to run: everything that can fail with a 400 has been checked."""

    id: str
    prompts: list[Prompt]
    echo_texts: list[str]
    sampling: SamplingSettings
    include_usage: bool
    model: str = ""  # the name responses carry: the served model, or the LoRA adapter the request named
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def choice_count(self) -> int:
        return len(self.prompts) * self.sampling.n

    @property
    def sequences(self) -> int:
        return self.choice_count

    @property
    def truncation(self) -> Truncation | None:
        cut = next((p.truncation for p in self.prompts if p.truncation is not None), None)
        return None if cut is None else Truncation(**cut.as_dict())

    def usage(self, completion_tokens: int) -> Usage:
        """OpenAI's accounting: prompts once each, completion tokens summed over every returned choice."""
        prompt = sum(len(p.token_ids) for p in self.prompts)
        return Usage(prompt_tokens=prompt, completion_tokens=completion_tokens, total_tokens=prompt + completion_tokens)


def _sampling(req: CompletionRequest | ChatRequest, max_tokens: int, logprobs: int | None) -> SamplingSettings:
    return SamplingSettings(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, n=req.n,
                            stop=tuple(req.stop), seed=req.seed, presence_penalty=req.presence_penalty,
                            frequency_penalty=req.frequency_penalty, logprobs=logprobs)


def prepare_completion(core: GenerationCore, req: CompletionRequest, ide: bool = False,
                       code_stops: bool = False) -> PreparedGeneration:
    """`ide`: the Copilot route, where code-aware stops and trimming to fit are on unless the request says
    otherwise; on /v1/completions trimming needs `fit_context` and `code_stops` defaults to the setting."""
    core.check_model(req.model)
    texts = req.prompts()
    if req.echo and any(isinstance(t, list) for t in texts):
        raise InvalidRequest("'echo' needs a text prompt, not token ids", param="echo")
    prompts = [_prompt(core, req, t, ide, code_stops) for t in texts]
    budget = min(core.token_budget(p, req.max_tokens) for p in prompts)
    echo = [t if req.echo and isinstance(t, str) else "" for t in texts]
    adapter = core.served.adapter(req.model)
    sampling = replace(_sampling(req, budget, req.logprobs), adapter=adapter)
    return PreparedGeneration(new_id("cmpl"), prompts, echo, sampling, req.include_usage, adapter or core.served.id)


def _prompt(core: GenerationCore, req: CompletionRequest, text: str | list[int], ide: bool,
            code_stops: bool) -> Prompt:
    infill = bool(req.suffix) or bool(req.input_extra)
    if not infill:
        return core.text_prompt(text)
    if isinstance(text, list):
        raise InvalidRequest("'suffix' needs a text prompt, not token ids", param="suffix")
    stops = req.code_stops if req.code_stops is not None else (ide or code_stops)
    fit = req.fit_context if req.fit_context is not None else ide
    return core.fill(Hole(text, req.suffix or "", extra_files(req.infill_extras()), req.filename, req.repo_name,
                          code_stops=stops, fit=fit, reserve_tokens=req.max_tokens))


def prepare_chat(core: GenerationCore, req: ChatRequest) -> PreparedGeneration:
    core.check_model(req.model)
    if req.messages[-1].role == "assistant" and not req.messages[-1].text():
        raise InvalidRequest("the last message is an empty assistant turn", param="messages")
    prompt = core.chat_prompt([{"role": m.role, "content": m.text()} for m in req.messages])
    budget = core.token_budget(prompt, req.token_limit)
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    adapter = core.served.adapter(req.model)
    sampling = replace(_sampling(req, budget, logprobs), adapter=adapter)
    return PreparedGeneration(new_id("chatcmpl"), [prompt], [""], sampling, req.include_usage,
                              adapter or core.served.id)


async def _choices(core: GenerationCore, prepared: PreparedGeneration, observer: RequestObserver) -> list[_Choice]:
    choices = [_Choice() for _ in range(prepared.choice_count)]
    async for index, delta in core.run(prepared.prompts, prepared.sampling, prepared.id, observer):
        choice = choices[index]
        choice.text += delta.text
        choice.tokens += delta.token_count
        choice.logprobs.extend(delta.logprobs)
        choice.finish_reason = delta.finish_reason or choice.finish_reason
    return choices


def _completion_logprobs(entries: list[TokenLogprob], offset: int) -> CompletionLogprobs:
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.token)
    return CompletionLogprobs(tokens=[e.token for e in entries], token_logprobs=[e.logprob for e in entries],
                              top_logprobs=[e.top for e in entries], text_offset=offsets)


def _chat_logprobs(entries: list[TokenLogprob]) -> ChatLogprobs:
    return ChatLogprobs(content=[TokenLogprobOut(
        token=e.token, logprob=e.logprob, bytes=list(e.token.encode()),
        top_logprobs=[TopLogprob(token=t, logprob=lp, bytes=list(t.encode())) for t, lp in e.top.items()],
    ) for e in entries])


async def completion(core: GenerationCore, prepared: PreparedGeneration,
                     observer: RequestObserver) -> CompletionResponse:
    choices = await _choices(core, prepared, observer)
    n = prepared.sampling.n
    body = []
    for i, c in enumerate(choices):
        echo = prepared.echo_texts[i // n]
        logprobs = _completion_logprobs(c.logprobs, len(echo)) if prepared.sampling.logprobs is not None else None
        body.append(CompletionChoice(index=i, text=echo + c.text, logprobs=logprobs,
                                     finish_reason=c.finish_reason))
    return CompletionResponse(id=prepared.id, created=prepared.created, model=prepared.model, choices=body,
                              usage=prepared.usage(sum(c.tokens for c in choices)), truncation=prepared.truncation)


async def chat(core: GenerationCore, prepared: PreparedGeneration, observer: RequestObserver) -> ChatCompletionResponse:
    choices = await _choices(core, prepared, observer)
    logprobs = prepared.sampling.logprobs is not None
    body = [ChatChoice(index=i, message=AssistantMessage(content=c.text),
                       logprobs=_chat_logprobs(c.logprobs) if logprobs else None,
                       finish_reason=c.finish_reason)
            for i, c in enumerate(choices)]
    return ChatCompletionResponse(id=prepared.id, created=prepared.created, model=prepared.model, choices=body,
                                  usage=prepared.usage(sum(c.tokens for c in choices)))


async def completion_events(core: GenerationCore, prepared: PreparedGeneration,
                            observer: RequestObserver) -> AsyncIterator[CompletionChunk]:
    truncation = [prepared.truncation]  # reported once, on the first event

    def chunk(*choices: CompletionChoice) -> CompletionChunk:
        cut, truncation[0] = truncation[0], None
        return CompletionChunk(id=prepared.id, created=prepared.created, model=prepared.model, choices=list(choices),
                               truncation=cut)

    for i in range(prepared.choice_count):
        echo = prepared.echo_texts[i // prepared.sampling.n]
        if echo:
            yield chunk(CompletionChoice(index=i, text=echo, finish_reason=None))
    generated = 0
    async for index, delta in core.run(prepared.prompts, prepared.sampling, prepared.id, observer):
        generated += delta.token_count
        if delta.text or delta.finish_reason:
            logprobs = (_completion_logprobs(list(delta.logprobs), 0)
                        if prepared.sampling.logprobs is not None else None)
            yield chunk(CompletionChoice(index=index, text=delta.text, logprobs=logprobs,
                                         finish_reason=delta.finish_reason))
    if prepared.include_usage:
        yield CompletionChunk(id=prepared.id, created=prepared.created, model=prepared.model, choices=[],
                              usage=prepared.usage(generated))


async def chat_events(core: GenerationCore, prepared: PreparedGeneration,
                      observer: RequestObserver) -> AsyncIterator[ChatCompletionChunk]:
    def chunk(*choices: ChatChunkChoice) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=prepared.id, created=prepared.created, model=prepared.model,
                                   choices=list(choices))

    for i in range(prepared.choice_count):
        yield chunk(ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content="")))
    generated = 0
    async for index, delta in core.run(prepared.prompts, prepared.sampling, prepared.id, observer):
        generated += delta.token_count
        if delta.text:
            logprobs = _chat_logprobs(list(delta.logprobs)) if prepared.sampling.logprobs is not None else None
            yield chunk(ChatChunkChoice(index=index, delta=ChatDelta(content=delta.text), logprobs=logprobs))
        if delta.finish_reason:
            yield chunk(ChatChunkChoice(index=index, delta=ChatDelta(),
                                        finish_reason=delta.finish_reason))
    if prepared.include_usage:
        yield ChatCompletionChunk(id=prepared.id, created=prepared.created, model=prepared.model, choices=[],
                                  usage=prepared.usage(generated))
