"""POST /v1/chat/completions: OpenAI's chat, through the served model's chat template, with tool calls."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ...engine.base import TokenLogprob
from ...errors import InvalidRequest
from ...generation.core import Chat as ChatSource
from ...generation.core import new_id
from ...generation.served import Target
from ...generation.tool_reader import ToolReader
from ...generation.tools import (
    CallArguments,
    CallStart,
    ReaderEvent,
    TextPiece,
    Tool,
    ToolChoice,
    unmatched_tool_result,
)
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
    FunctionCallOut,
    FunctionDelta,
    TokenLogprobOut,
    ToolCallDelta,
    ToolCallOut,
    TopLogprob,
)


class Chat(Endpoint[ChatRequest]):
    """OpenAI's chat completions, through the model's chat template (or CODESERVE_CHAT_TEMPLATE); `tools` are
    offered through the template where it renders them, else through a generic prompt, and the answer's calls come
    back as `tool_calls` (finish_reason "tool_calls")."""

    name = "chat"
    paths = ("/v1/chat/completions",)
    request = ChatRequest
    response_model = ChatCompletionResponse
    done_event = DONE

    def convert(self, target: Target, body: ChatRequest) -> Job[ChatRequest]:
        if body.messages[-1].role == "assistant" and not body.messages[-1].text():
            raise InvalidRequest("the last message is an empty assistant turn", param="messages")
        messages = [m.as_message() for m in body.messages]
        unmatched = unmatched_tool_result(messages)
        if unmatched is not None:
            raise InvalidRequest(f"messages[{unmatched}] answers tool call '{messages[unmatched]['tool_call_id']}', "
                                 "which no earlier assistant message made", param=f"messages.{unmatched}.tool_call_id")
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        source = ChatSource(messages, _tools(body), _choice(body), body.template_variables())
        prepared = target.core.prepare([source], body.token_limit, sampling(body, target, logprobs))
        return Job(new_id("chatcmpl"), body, target, prepared)

    async def respond(self, job: Job[ChatRequest], observer: RequestObserver) -> ChatCompletionResponse:
        choices = await job.target.core.collect(job.prepared.prompts, job.sampling, job.id, observer)
        logprobs = job.sampling.logprobs is not None
        body = []
        for i, c in enumerate(choices):
            message, finish = AssistantMessage(content=c.text), c.finish_reason
            if job.prepared.tools is not None:
                reader = job.prepared.tools.reader()
                reader.feed(c.text)
                reader.close()
                message, finish = _message(reader), _finish(reader, finish)
            body.append(ChatChoice(index=i, message=message, logprobs=_logprobs(c.logprobs) if logprobs else None,
                                   finish_reason=finish))
        return ChatCompletionResponse(id=job.id, created=job.created, model=job.model, choices=body,
                                      usage=usage(job, sum(c.tokens for c in choices)))

    async def events(self, job: Job[ChatRequest], observer: RequestObserver) -> AsyncIterator[ChatCompletionChunk]:
        def chunk(*choices: ChatChunkChoice) -> ChatCompletionChunk:
            return ChatCompletionChunk(id=job.id, created=job.created, model=job.model, choices=list(choices))

        tools = job.prepared.tools
        readers: dict[int, ToolReader] = {}
        for i in range(job.sequences):
            yield chunk(ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content="")))
            if tools is not None:
                readers[i] = tools.reader()
        generated = 0
        async for index, delta in job.target.core.run(job.prepared.prompts, job.sampling, job.id, observer):
            generated += delta.token_count
            if index in readers:  # one event a chunk: a delta never carries content and tool_calls together
                reader = readers[index]
                events = reader.feed(delta.text) + (reader.close() if delta.finish_reason else [])
                for event in events:
                    yield chunk(ChatChunkChoice(index=index, delta=_delta(event)))
            elif delta.text:
                logprobs = _logprobs(list(delta.logprobs)) if job.sampling.logprobs is not None else None
                yield chunk(ChatChunkChoice(index=index, delta=ChatDelta(content=delta.text), logprobs=logprobs))
            if delta.finish_reason:
                finish = _finish(readers[index], delta.finish_reason) if index in readers else delta.finish_reason
                yield chunk(ChatChunkChoice(index=index, delta=ChatDelta(), finish_reason=finish))
        if job.body.include_usage:
            yield ChatCompletionChunk(id=job.id, created=job.created, model=job.model, choices=[],
                                      usage=usage(job, generated))


def _tools(body: ChatRequest) -> tuple[Tool, ...]:
    return tuple(Tool(t.function.name, t.function.description or "",
                      t.function.parameters or {"type": "object", "properties": {}}) for t in body.tools or ())


def _choice(body: ChatRequest) -> ToolChoice:
    parallel = body.parallel_tool_calls is not False
    if body.tool_choice is None or isinstance(body.tool_choice, str):
        return ToolChoice(body.tool_choice or "auto", parallel=parallel)
    return ToolChoice("named", body.tool_choice.function.name, parallel)


def _finish(reader: ToolReader, engine: str | None) -> str | None:
    """"tool_calls" when the answer made calls and ended by itself; cut by the token budget, it says "length"."""
    return "tool_calls" if reader.calls and engine == "stop" else engine


def _message(reader: ToolReader) -> AssistantMessage:
    calls = [ToolCallOut(id=c.id, function=FunctionCallOut(name=c.name, arguments=c.arguments)) for c in reader.calls]
    return AssistantMessage(content=reader.content or None if calls else reader.content, tool_calls=calls or None)


def _delta(event: ReaderEvent) -> ChatDelta:
    if isinstance(event, TextPiece):
        return ChatDelta(content=event.text)
    if isinstance(event, CallStart):
        return ChatDelta(tool_calls=[ToolCallDelta(index=event.index, id=event.id, type="function",
                                                   function=FunctionDelta(name=event.name, arguments=""))])
    assert isinstance(event, CallArguments)
    return ChatDelta(tool_calls=[ToolCallDelta(index=event.index, function=FunctionDelta(arguments=event.text))])


def _logprobs(entries: list[TokenLogprob]) -> ChatLogprobs:
    return ChatLogprobs(content=[TokenLogprobOut(
        token=e.token, logprob=e.logprob, bytes=list(e.token.encode()),
        top_logprobs=[TopLogprob(token=t, logprob=lp, bytes=list(t.encode())) for t, lp in e.top.items()],
    ) for e in entries])
