"""POST /v1/chat/completions: OpenAI's chat, through the served model's chat template."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ...engine.base import TokenLogprob
from ...errors import InvalidRequest
from ...generation.core import Chat as ChatSource
from ...generation.core import new_id
from ...generation.served import Target
from ...metrics import RequestObserver
from ..endpoint import Endpoint, Job
from ..openai import sampling, usage
from ..sse import DONE
from .protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    ChatRequest,
    TokenLogprobOut,
    TopLogprob,
)


class Chat(Endpoint[ChatRequest]):
    """OpenAI's chat completions, through the model's chat template (or CODESERVE_CHAT_TEMPLATE)."""

    name = "chat"
    paths = ("/v1/chat/completions",)
    request = ChatRequest
    response_model = ChatCompletionResponse
    done_event = DONE

    def convert(self, target: Target, body: ChatRequest) -> Job[ChatRequest]:
        if body.messages[-1].role == "assistant" and not body.messages[-1].text():
            raise InvalidRequest("the last message is an empty assistant turn", param="messages")
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        prepared = target.core.prepare([ChatSource(messages)], body.token_limit, sampling(body, target, logprobs))
        return Job(new_id("chatcmpl"), body, target, prepared)

    async def respond(self, job: Job[ChatRequest], observer: RequestObserver) -> ChatCompletionResponse:
        choices = await job.target.core.collect(job.prepared.prompts, job.sampling, job.id, observer)
        logprobs = job.sampling.logprobs is not None
        body = [ChatChoice(index=i, message=AssistantMessage(content=c.text),
                           logprobs=_logprobs(c.logprobs) if logprobs else None, finish_reason=c.finish_reason)
                for i, c in enumerate(choices)]
        return ChatCompletionResponse(id=job.id, created=job.created, model=job.model, choices=body,
                                      usage=usage(job, sum(c.tokens for c in choices)))

    async def events(self, job: Job[ChatRequest], observer: RequestObserver) -> AsyncIterator[ChatCompletionChunk]:
        def chunk(*choices: ChatChunkChoice) -> ChatCompletionChunk:
            return ChatCompletionChunk(id=job.id, created=job.created, model=job.model, choices=list(choices))

        for i in range(job.sequences):
            yield chunk(ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content="")))
        generated = 0
        async for index, delta in job.target.core.run(job.prepared.prompts, job.sampling, job.id, observer):
            generated += delta.token_count
            if delta.text:
                logprobs = _logprobs(list(delta.logprobs)) if job.sampling.logprobs is not None else None
                yield chunk(ChatChunkChoice(index=index, delta=ChatDelta(content=delta.text), logprobs=logprobs))
            if delta.finish_reason:
                yield chunk(ChatChunkChoice(index=index, delta=ChatDelta(), finish_reason=delta.finish_reason))
        if job.body.include_usage:
            yield ChatCompletionChunk(id=job.id, created=job.created, model=job.model, choices=[],
                                      usage=usage(job, generated))


def _logprobs(entries: list[TokenLogprob]) -> ChatLogprobs:
    return ChatLogprobs(content=[TokenLogprobOut(
        token=e.token, logprob=e.logprob, bytes=list(e.token.encode()),
        top_logprobs=[TopLogprob(token=t, logprob=lp, bytes=list(t.encode())) for t, lp in e.top.items()],
    ) for e in entries])
