"""POST /v1/responses (OpenAI's Responses API, as Codex CLI and Copilot's Responses mode speak it), and GET / DELETE
/v1/responses/{id} over the stored ones."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from ...engine.base import Delta, SamplingSettings
from ...errors import ContextLengthExceeded, EngineFailure, InvalidRequest, ServeError
from ...generation.core import Chat
from ...generation.served import Target
from ...generation.tool_reader import ToolReader
from ...generation.tools import ReaderEvent, TextPiece, unmatched_tool_result
from ...metrics import RequestObserver
from .. import sse
from ..endpoint import Endpoint, Job
from ..errors import ERROR_RESPONSES, NotFound
from . import conversation, protocol
from .output import Answer, IncompleteDetails, ResponseError, ResponseObject, ResponseUsage, new_id
from .protocol import ResponsesRequest
from .store import ResponseStore, Stored

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResponseJob(Job[ResponsesRequest]):
    conversation: tuple[dict[str, Any], ...] = ()  # every turn's messages, this one's input last (no instructions)
    tools: tuple[dict[str, Any], ...] = ()  # as the request gave them, echoed in the response


class Responses(Endpoint[ResponsesRequest]):
    """OpenAI's Responses API: input items (messages, function calls and their outputs), instructions, function
    tools, text.format, previous_response_id over the responses this server stored (in memory; see the README's
    "Responses API"), and the named stream events OpenAI's SDK and Codex CLI read. No `[DONE]`."""

    name = "responses"
    paths = ("/v1/responses",)
    request = ResponsesRequest
    response_model = ResponseObject

    def __init__(self, store: ResponseStore):
        self.store = store

    # ---- the request -----------------------------------------------------------------------------
    def convert(self, target: Target, body: ResponsesRequest) -> ResponseJob:
        new, origins = conversation.messages(protocol.items(body))
        tools = protocol.tools(body)
        offered, choice = conversation.tool_set(body, tools)
        history: tuple[dict[str, Any], ...] = ()
        if body.previous_response_id is not None:
            previous = self.store.get(body.previous_response_id)
            if previous is None:
                raise NotFound(
                    f"no stored response '{body.previous_response_id}': it was never stored here (store: false, or "
                    f"another replica answered it), or it was evicted or expired (CODESERVE_RESPONSES_STORE_MAX="
                    f"{self.store.max_count}, CODESERVE_RESPONSES_STORE_TTL_S={self.store.ttl_s:g}); send the whole "
                    "conversation as input instead", param="previous_response_id", code="previous_response_not_found")
            history = previous.conversation
        turns = (*history, *new)
        unmatched = unmatched_tool_result(list(turns))
        if unmatched is not None:  # the history was checked when it was new: this is one of the new items
            item = origins[unmatched - len(history)]
            raise InvalidRequest(f"input item {item} answers call '{turns[unmatched]['tool_call_id']}', which no "
                                 "earlier function_call made", param=f"input.{item}.call_id")
        system = [{"role": "system", "content": body.instructions}] if body.instructions else []
        sampling = SamplingSettings(temperature=body.temperature, top_p=body.top_p, adapter=target.adapter,
                                    structured=conversation.structured(body))
        # The template may rewrite the messages it is given; the stored ones are shared between turns.
        chat = Chat(copy.deepcopy([*system, *turns]), offered, choice, body.template_variables())
        try:
            prepared = target.core.prepare([chat], body.max_output_tokens, sampling)
        except ContextLengthExceeded as exc:
            raise ContextLengthExceeded(exc.message, param="input") from exc
        return ResponseJob(new_id("resp"), body, target, prepared, conversation=turns,
                           tools=tuple(tool.model_dump(exclude_none=True) for tool in tools))

    # ---- the answer ------------------------------------------------------------------------------
    async def respond(self, job: Job[ResponsesRequest], observer: RequestObserver) -> ResponseObject:
        answer, tokens, finish = Answer(), 0, None
        reader = _reader(job)
        async for _, delta in job.target.core.run(job.prepared.prompts, job.sampling, job.id, observer):
            tokens += delta.token_count
            finish = delta.finish_reason or finish
            answer.feed(_read(reader, delta))
        answer.close(incomplete=finish == "length")
        return self._finish(_job(job), answer, tokens, finish)

    async def events(self, job: Job[ResponsesRequest], observer: RequestObserver) -> AsyncIterator[dict[str, Any]]:
        answer, tokens, finish = Answer(), 0, None
        reader = _reader(job)
        start = self._snapshot(_job(job), "in_progress")
        yield answer.event("response.created", response=start)
        yield answer.event("response.in_progress", response=start)
        try:
            async for _, delta in job.target.core.run(job.prepared.prompts, job.sampling, job.id, observer):
                tokens += delta.token_count
                finish = delta.finish_reason or finish
                for event in answer.feed(_read(reader, delta)):
                    yield event
        except Exception as exc:
            # Reported here, with the response so far, as OpenAI does (Codex reads error.code, e.g.
            # context_length_exceeded); the error goes on to the base, which accounts it and adds nothing.
            error = exc if isinstance(exc, ServeError) else EngineFailure("internal error while streaming; the "
                                                                          "server log has the details")
            failed = self._snapshot(_job(job), "failed", answer)
            failed["error"] = ResponseError(code=error.code or "server_error", message=error.message).model_dump()
            yield answer.event("response.failed", response=failed)
            raise
        for event in answer.close(incomplete=finish == "length"):
            yield event
        response = self._finish(_job(job), answer, tokens, finish)
        kind = "response.incomplete" if response.status == "incomplete" else "response.completed"
        yield answer.event(kind, response=response.model_dump(mode="json"))

    def frame(self, payload: Any) -> str:
        return sse.event(payload, payload["type"])  # `event: response.created` etc., as OpenAI names them

    def stream_error(self, error: ServeError) -> str:
        return ""  # events() has sent response.failed already

    def _finish(self, job: ResponseJob, answer: Answer, tokens: int, finish: str | None) -> ResponseObject:
        """The whole response, stored when the request asked to (OpenAI's default)."""
        incomplete = finish == "length"
        prompt = job.prepared.prompt_tokens
        response = self._response(job, "incomplete" if incomplete else "completed", answer)
        response.usage = ResponseUsage(input_tokens=prompt, output_tokens=tokens, total_tokens=prompt + tokens)
        response.completed_at = None if incomplete else int(time.time())
        response.incomplete_details = IncompleteDetails() if incomplete else None
        if job.body.store:
            said = conversation.answer_message(answer.text, [(c.call_id, c.name, c.arguments) for c in answer.calls])
            self.store.put(Stored(response.id, (*job.conversation, said), response.model_dump(mode="json")))
        return response

    def _snapshot(self, job: ResponseJob, status: str, answer: Answer | None = None) -> dict[str, Any]:
        return self._response(job, status, answer).model_dump(mode="json")

    def _response(self, job: ResponseJob, status: str, answer: Answer | None = None) -> ResponseObject:
        body = job.body
        choice = body.tool_choice if isinstance(body.tool_choice, str) else body.tool_choice.model_dump()
        text = {"format": (body.text.format.model_dump(by_alias=True, exclude_none=True) if body.text is not None
                           else {"type": "text"})}
        return ResponseObject(
            id=job.id, created_at=job.created, status=status, model=job.model,  # type: ignore[arg-type]
            output=list(answer.items) if answer is not None else [], instructions=body.instructions,
            metadata=body.metadata, parallel_tool_calls=body.parallel_tool_calls, temperature=body.temperature,
            top_p=body.top_p, tool_choice=choice, tools=list(job.tools), text=text,
            max_output_tokens=body.max_output_tokens, previous_response_id=body.previous_response_id,
            store=body.store, user=body.user)

    # ---- the stored responses --------------------------------------------------------------------
    def mount(self, router: APIRouter) -> None:
        super().mount(router)
        path = "/v1/responses/{response_id}"
        # Starlette answers another method with the first route of the path, and its Allow header names that route's
        # methods: this one serves both; the two documented below (one operation each) are never reached.
        router.add_api_route(path, self.stored, methods=["GET", "DELETE"], name="responses_stored",
                             include_in_schema=False)
        for method, model, what in (("GET", ResponseObject, "the stored response"),
                                    ("DELETE", Deleted, "the confirmation")):
            router.add_api_route(path, self.stored, methods=[method], name=f"responses_{method.lower()}",
                                 responses={200: {"model": model, "description": what}, **ERROR_RESPONSES},
                                 response_class=JSONResponse)

    async def stored(self, response_id: str, request: Request) -> JSONResponse:
        """GET: a stored response (kept in this replica's memory until evicted or expired). DELETE: forget it, so a
        later previous_response_id naming it gets 404."""
        if request.method == "DELETE":
            if not self.store.delete(response_id):
                raise _missing(response_id)
            return JSONResponse(Deleted(id=response_id).model_dump())
        stored = self.store.get(response_id)
        if stored is None:
            raise _missing(response_id)
        return JSONResponse(stored.response)


class Deleted(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: Literal[True] = True


def _missing(response_id: str) -> NotFound:
    return NotFound(f"no stored response '{response_id}' on this server (never stored, deleted, evicted or expired)",
                    param="response_id", code="not_found")


def _reader(job: Job[ResponsesRequest]) -> ToolReader | None:
    """How the answer is read for function calls (generation/tool_reader.py); None when no tools were offered."""
    return job.prepared.tools.reader() if job.prepared.tools is not None else None


def _read(reader: ToolReader | None, delta: Delta) -> list[ReaderEvent]:
    if reader is None:
        return [TextPiece(delta.text)]
    return reader.feed(delta.text) + (reader.close() if delta.finish_reason is not None else [])


def _job(job: Job[ResponsesRequest]) -> ResponseJob:
    assert isinstance(job, ResponseJob)
    return job
