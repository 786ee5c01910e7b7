"""What /v1/responses answers: the response object, its output items, and the stream of events that builds them.

Shapes read from the `openai` SDK (openai/types/responses/response.py, response_output_message.py,
response_output_text.py, response_function_tool_call.py, response_usage.py, and the event classes the SDK's
ResponseStreamEvent unites: response_created_event.py ... response_completed_event.py, response_failed_event.py)
and from vLLM's streaming (vllm/entrypoints/openai/responses/serving.py, streaming_events.py). What clients need of
them (DESIGN.md): Codex CLI takes function calls from `response.output_item.done` only and retries a stream that
ends without `response.completed`; Copilot reads `usage.input_tokens_details.cached_tokens` and
`usage.output_tokens_details.reasoning_tokens` without checking they exist.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field

from ...generation.tools import CallArguments, CallStart, ReaderEvent, TextPiece

ItemStatus = Literal["in_progress", "completed", "incomplete"]


def new_id(prefix: str) -> str:
    """OpenAI's ids: resp_..., msg_..., fc_..."""
    return f"{prefix}_{uuid.uuid4().hex}"


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: ItemStatus
    content: list[OutputText]


class FunctionCallItem(BaseModel):
    id: str
    type: Literal["function_call"] = "function_call"
    call_id: str
    name: str
    arguments: str
    status: ItemStatus


OutputItem = OutputMessage | FunctionCallItem


class InputTokensDetails(BaseModel):
    cached_tokens: int = Field(
        default=0, description="always 0: the engine does not report prefix-cache hits per request")


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = Field(default=0, description="always 0: no reasoning model is served")


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = InputTokensDetails()
    output_tokens: int
    output_tokens_details: OutputTokensDetails = OutputTokensDetails()
    total_tokens: int


class ResponseError(BaseModel):
    code: str
    message: str


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"] = "max_output_tokens"


class ResponseObject(BaseModel):
    """OpenAI's Response, with the request's settings echoed as the SDK's model requires them."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    usage: ResponseUsage | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    completed_at: int | None = None
    instructions: str | None = None
    metadata: dict[str, str] | None = None
    parallel_tool_calls: bool = True
    temperature: float | None = None
    top_p: float | None = None
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    max_output_tokens: int | None = None
    previous_response_id: str | None = None
    store: bool = True
    truncation: Literal["disabled"] = "disabled"
    user: str | None = None
    background: bool = False


class Answer:
    """One response's output as it is generated: the tool reader's events (or plain text) in, OpenAI's stream events
    out, each with its sequence number, and the output items once closed. Items are written one after another: a
    message while text comes, a function_call item per call; each is done (`response.output_item.done`, what Codex
    CLI reads) when the next begins or the answer ends."""

    def __init__(self) -> None:
        self.items: list[OutputItem] = []
        self._sequence = 0
        self._open: OutputItem | None = None
        self._calls: dict[int, FunctionCallItem] = {}  # by the reader's call index

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        payload = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return payload

    @property
    def text(self) -> str:
        return "".join(part.text for item in self.items if isinstance(item, OutputMessage) for part in item.content)

    @property
    def calls(self) -> list[FunctionCallItem]:
        return [item for item in self.items if isinstance(item, FunctionCallItem)]

    def feed(self, pieces: list[ReaderEvent]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for piece in pieces:
            if isinstance(piece, TextPiece):
                if piece.text:
                    events += self._text(piece.text)
            elif isinstance(piece, CallStart):
                events += self._close("completed")
                call = FunctionCallItem(id=new_id("fc"), call_id=piece.id, name=piece.name, arguments="",
                                        status="in_progress")
                self._calls[piece.index] = call
                events += self._add(call)
            elif isinstance(piece, CallArguments) and piece.text:
                call = self._calls[piece.index]
                call.arguments += piece.text
                events.append(self.event("response.function_call_arguments.delta", item_id=call.id,
                                         output_index=self.items.index(call), delta=piece.text))
        return events

    def close(self, incomplete: bool) -> list[dict[str, Any]]:
        """The last item done (incomplete when the answer was cut at max_output_tokens); an answer that said nothing
        still has its (empty) message, as OpenAI's has."""
        events = [] if self.items else self._add(self._message())
        return events + self._close("incomplete" if incomplete else "completed")

    def _message(self) -> OutputMessage:
        return OutputMessage(id=new_id("msg"), status="in_progress", content=[])

    def _text(self, text: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if not isinstance(self._open, OutputMessage):
            events += self._close("completed")
            events += self._add(self._message())
        message = self._open
        assert isinstance(message, OutputMessage)
        message.content[0].text += text
        events.append(self.event("response.output_text.delta", item_id=message.id,
                                 output_index=len(self.items) - 1, content_index=0, delta=text, logprobs=[]))
        return events

    def _add(self, item: OutputItem) -> list[dict[str, Any]]:
        self.items.append(item)
        self._open = item
        index = len(self.items) - 1
        events = [self.event("response.output_item.added", output_index=index, item=item.model_dump(mode="json"))]
        if isinstance(item, OutputMessage):
            item.content.append(OutputText(text=""))
            events.append(self.event("response.content_part.added", item_id=item.id, output_index=index,
                                     content_index=0, part=item.content[0].model_dump(mode="json")))
        return events

    def _close(self, status: ItemStatus) -> list[dict[str, Any]]:
        item, self._open = self._open, None
        if item is None:
            return []
        item.status = status
        index = self.items.index(item)
        if isinstance(item, OutputMessage):
            part = item.content[0]
            events = [self.event("response.output_text.done", item_id=item.id, output_index=index, content_index=0,
                                 text=part.text, logprobs=[]),
                      self.event("response.content_part.done", item_id=item.id, output_index=index, content_index=0,
                                 part=part.model_dump(mode="json"))]
        else:
            events = [self.event("response.function_call_arguments.done", item_id=item.id, output_index=index,
                                 arguments=item.arguments)]
        return [*events, self.event("response.output_item.done", output_index=index, item=item.model_dump(mode="json"))]
