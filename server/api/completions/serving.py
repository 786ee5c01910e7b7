"""POST /v1/completions (OpenAI's completions, `suffix` = fill-in-the-middle) and the same API on the path GitHub
Copilot calls when pointed at a custom URL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import ClassVar

from ...engine.base import TokenLogprob
from ...errors import InvalidRequest
from ...fim.defaults import HOLE_DEFAULTS, HoleDefaults
from ...fim.prompt import Hole, extra_files
from ...generation.core import Source, new_id
from ...generation.served import Target
from ...metrics import RequestObserver
from ...settings import Settings
from ..endpoint import Endpoint, Job
from ..openai import sampling, usage
from ..sse import DONE
from .protocol import CompletionChoice, CompletionChunk, CompletionLogprobs, CompletionRequest, CompletionResponse


class Completions(Endpoint[CompletionRequest]):
    """OpenAI's completions; `suffix` fills the hole between `prompt` and it in the served family's format."""

    name = "completions"
    paths = ("/v1/completions",)
    request = CompletionRequest
    response_model = CompletionResponse
    done_event = DONE
    holes: ClassVar[HoleDefaults] = HOLE_DEFAULTS["completions"]

    def __init__(self, settings: Settings):
        self.setting_code_stops = settings.completion_code_stops

    def owner(self, body: CompletionRequest) -> tuple[str | None, int | None]:
        return body.user, None

    def convert(self, target: Target, body: CompletionRequest) -> Job[CompletionRequest]:
        texts = body.prompts()
        if body.echo and any(isinstance(t, list) for t in texts):
            raise InvalidRequest("'echo' needs a text prompt, not token ids", param="echo")
        prepared = target.core.prepare([self._source(body, t) for t in texts], body.max_tokens,
                                       sampling(body, target, body.logprobs))
        return Job(new_id("cmpl"), body, target, prepared)

    def _source(self, body: CompletionRequest, text: str | list[int]) -> Source:
        if not (body.suffix or body.input_extra):
            return text
        if isinstance(text, list):
            raise InvalidRequest("'suffix' needs a text prompt, not token ids", param="suffix")
        code_stops, fit = self.holes.resolve(body.code_stops, body.fit_context, self.setting_code_stops)
        return Hole(text, body.suffix or "", extra_files(body.infill_extras()), body.filename, body.repo_name,
                    code_stops=code_stops, fit=fit, reserve_tokens=body.max_tokens)

    def _echo(self, job: Job[CompletionRequest], choice: int) -> str:
        text = job.body.prompts()[choice // job.sampling.n]
        return text if job.body.echo and isinstance(text, str) else ""

    async def respond(self, job: Job[CompletionRequest], observer: RequestObserver) -> CompletionResponse:
        choices = await job.target.core.collect(job.prepared.prompts, job.sampling, job.id, observer)
        body = []
        for i, c in enumerate(choices):
            echo = self._echo(job, i)
            logprobs = _logprobs(c.logprobs, len(echo)) if job.sampling.logprobs is not None else None
            body.append(CompletionChoice(index=i, text=echo + c.text, logprobs=logprobs, finish_reason=c.finish_reason))
        return CompletionResponse(id=job.id, created=job.created, model=job.model, choices=body,
                                  usage=usage(job, sum(c.tokens for c in choices)), truncation=job.prepared.truncation)

    async def events(self, job: Job[CompletionRequest], observer: RequestObserver) -> AsyncIterator[CompletionChunk]:
        truncation = [job.prepared.truncation]  # reported once, on the first event

        def chunk(*choices: CompletionChoice) -> CompletionChunk:
            cut, truncation[0] = truncation[0], None
            return CompletionChunk(id=job.id, created=job.created, model=job.model, choices=list(choices),
                                   truncation=cut)

        for i in range(job.sequences):
            if echo := self._echo(job, i):
                yield chunk(CompletionChoice(index=i, text=echo, finish_reason=None))
        generated = 0
        async for index, delta in job.target.core.run(job.prepared.prompts, job.sampling, job.id, observer):
            generated += delta.token_count
            if delta.text or delta.finish_reason:
                logprobs = _logprobs(list(delta.logprobs), 0) if job.sampling.logprobs is not None else None
                yield chunk(CompletionChoice(index=index, text=delta.text, logprobs=logprobs,
                                             finish_reason=delta.finish_reason))
        if job.body.include_usage:
            yield CompletionChunk(id=job.id, created=job.created, model=job.model, choices=[],
                                  usage=usage(job, generated))


class CopilotCompletions(Completions):
    """The path GitHub Copilot calls when pointed at a custom URL (as FauxPilot serves it). The engine name in
    the path, and any `model` this server does not serve, is whatever the user configured: the completion role
    answers. Code-aware stops and trimming to fit are on unless the request says otherwise."""

    paths = ("/v1/engines/{engine}/completions",)
    path_params = ("engine",)
    foreign_model_names = True
    holes = HOLE_DEFAULTS["copilot"]


def _logprobs(entries: list[TokenLogprob], offset: int) -> CompletionLogprobs:
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.token)
    return CompletionLogprobs(tokens=[e.token for e in entries], token_logprobs=[e.logprob for e in entries],
                              top_logprobs=[e.top for e in entries], text_offset=offsets)
