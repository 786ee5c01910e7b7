"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API, as Claude Code speaks it
(ANTHROPIC_BASE_URL at this server, ANTHROPIC_MODEL naming the served model): `?beta=true` taken as it comes, the key
as `x-api-key` or Bearer, streaming decided by the body's `stream` (Claude Code sends Accept: application/json),
named SSE events, tool calls as tool_use blocks, every error in Anthropic's shape.

The stream's events are the answer: the blocking answer is the same events folded into one message, as the SDK
folds a stream (anthropic/lib/streaming/_messages.py accumulate_event), so the two never differ."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from ...engine.base import Delta, SamplingSettings
from ...generation.served import Target
from ...generation.tools import CallArguments, CallStart, ReaderEvent, TextPiece
from ...metrics import RequestObserver
from .. import sse
from ..endpoint import Endpoint, Job, Payload
from .convert import chat
from .protocol import (
    AnthropicErrors,
    BlockDelta,
    BlockStart,
    BlockStop,
    CountTokensRequest,
    InputJsonDelta,
    MessageDelta,
    MessageOut,
    MessagesRequest,
    MessageStart,
    MessageStop,
    OutputUsage,
    Stop,
    StopReason,
    StreamEvent,
    TextDelta,
    TextOut,
    TokenCount,
    ToolUseOut,
    Usage,
)

ANTHROPIC = AnthropicErrors()


class Messages(Endpoint[MessagesRequest]):
    """Anthropic's Messages API: the conversation through the served model's chat template, `tools` offered as the
    chat completions offer them, calls answered as tool_use blocks (stop_reason "tool_use"). `?beta=true` (Claude
    Code's) changes nothing."""

    name = "messages"
    paths = ("/v1/messages",)
    request = MessagesRequest
    response_model = MessageOut
    error_shape = ANTHROPIC

    def convert(self, target: Target, body: MessagesRequest) -> Job[MessagesRequest]:
        sampling = SamplingSettings(temperature=body.temperature, top_p=1.0 if body.top_p is None else body.top_p,
                                    top_k=body.top_k or 0, stop=tuple(body.stop_sequences), adapter=target.adapter)
        prepared = target.core.prepare([chat(body)], body.max_tokens, sampling)
        return Job(f"msg_{uuid.uuid4().hex}", body, target, prepared)

    def frame(self, payload: Payload) -> str:
        assert isinstance(payload, StreamEvent)
        return sse.event(payload, payload.type)  # Anthropic's events are named by their type

    async def respond(self, job: Job[MessagesRequest], observer: RequestObserver) -> MessageOut:
        answer = Answer(job)
        message = answer.start()
        arguments: dict[int, str] = {}  # tool_use block index -> its input's JSON text so far
        async for _, delta in job.target.core.run(job.prepared.prompts, job.sampling, job.id, observer):
            for event in answer.feed(delta):
                if isinstance(event, BlockStart):
                    message.content.append(event.content_block)
                elif isinstance(event, BlockDelta):
                    block = message.content[event.index]
                    if isinstance(event.delta, TextDelta) and isinstance(block, TextOut):
                        block.text += event.delta.text
                    elif isinstance(event.delta, InputJsonDelta):
                        arguments[event.index] = arguments.get(event.index, "") + event.delta.partial_json
        for index, text in arguments.items():
            block = message.content[index]
            if isinstance(block, ToolUseOut):
                block.input = _object(text)
        stop = answer.stop()
        message.stop_reason, message.stop_sequence = stop.stop_reason, stop.stop_sequence
        message.usage.output_tokens = answer.output_tokens
        return message

    async def events(self, job: Job[MessagesRequest], observer: RequestObserver) -> AsyncIterator[StreamEvent]:
        answer = Answer(job)
        yield MessageStart(message=answer.start())
        async for _, delta in job.target.core.run(job.prepared.prompts, job.sampling, job.id, observer):
            for event in answer.feed(delta):
                yield event
        for event in answer.end():
            yield event


class CountTokens(Endpoint[CountTokensRequest]):
    """Anthropic's token count: the prompt a /v1/messages request with these fields gives the model (system, messages
    and tools, through the same template), counted without generating; `?beta=true` changes nothing."""

    name = "messages_count_tokens"
    paths = ("/v1/messages/count_tokens",)
    request = CountTokensRequest
    response_model = TokenCount
    error_shape = ANTHROPIC
    generates = False

    def convert(self, target: Target, body: CountTokensRequest) -> Job[CountTokensRequest]:
        return Job(f"count_{uuid.uuid4().hex}", body, target, target.core.prepare([chat(body)], None))

    async def respond(self, job: Job[CountTokensRequest], observer: RequestObserver) -> TokenCount:
        return TokenCount(input_tokens=job.prepared.prompt_tokens)


class Answer:
    """One answer as Anthropic's content-block events: the engine's text, through the tool reader where tools were
    offered, as text blocks and tool_use blocks (their input streamed as input_json_delta), then the stop."""

    def __init__(self, job: Job[MessagesRequest]):
        self.job = job
        tools = job.prepared.tools
        self.reader = tools.reader() if tools is not None else None
        self.index = -1  # the last block's index
        self.open: str | None = None  # its type while it is open
        self.blocks: dict[int, int] = {}  # the reader's call index -> its tool_use block's index
        self.output_tokens = 0
        self.finish: str | None = None
        self.stop_string: str | None = None

    def start(self) -> MessageOut:
        return MessageOut(id=self.job.id, model=self.job.model, content=[], stop_reason=None,
                          usage=Usage(input_tokens=self.job.prepared.prompt_tokens, output_tokens=0))

    def feed(self, delta: Delta) -> list[StreamEvent]:
        self.output_tokens += delta.token_count
        read: list[ReaderEvent] = ([TextPiece(delta.text)] if delta.text else []) if self.reader is None else \
            self.reader.feed(delta.text)
        if delta.finish_reason is not None:
            self.finish, self.stop_string = delta.finish_reason, delta.stop_string
            if self.reader is not None:
                read += self.reader.close()
        return [event for piece in read for event in self._events(piece)]

    def end(self) -> list[StreamEvent]:
        return [*self._close(), MessageDelta(delta=self.stop(), usage=OutputUsage(output_tokens=self.output_tokens)),
                MessageStop()]

    def stop(self) -> Stop:
        reason: StopReason = "end_turn"
        if self.finish == "length":  # first: a call the limit cut short must not run
            reason = "max_tokens"
        elif self.blocks:
            reason = "tool_use"
        elif self.stop_string is not None and self.stop_string in self.job.body.stop_sequences:
            return Stop(stop_reason="stop_sequence", stop_sequence=self.stop_string)
        return Stop(stop_reason=reason)

    def _events(self, piece: ReaderEvent) -> list[StreamEvent]:
        if isinstance(piece, TextPiece):
            if not piece.text:
                return []
            opened = [] if self.open == "text" else self._start(TextOut(text=""))
            return [*opened, BlockDelta(index=self.index, delta=TextDelta(text=piece.text))]
        if isinstance(piece, CallStart):
            events = self._start(ToolUseOut(id=tool_use_id(piece.id), name=piece.name, input={}))
            self.blocks[piece.index] = self.index
            return events
        assert isinstance(piece, CallArguments)
        return [BlockDelta(index=self.blocks[piece.index], delta=InputJsonDelta(partial_json=piece.text))]

    def _start(self, block: TextOut | ToolUseOut) -> list[StreamEvent]:
        events = self._close()
        self.index, self.open = self.index + 1, block.type
        return [*events, BlockStart(index=self.index, content_block=block)]

    def _close(self) -> list[StreamEvent]:
        if self.open is None:
            return []
        self.open = None
        return [BlockStop(index=self.index)]


def tool_use_id(call_id: str) -> str:
    """Anthropic's id for a call ("toolu_..."), from the reader's ("call_..."); the client sends it back as is."""
    return "toolu_" + call_id.removeprefix("call_")


def _object(arguments: str) -> dict[str, Any]:
    """A call's input: its arguments' JSON object; {} where the token limit cut them short (stop_reason max_tokens)."""
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
