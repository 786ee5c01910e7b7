"""llama.cpp's /infill and /completion, as llama.vscode, llama.vim and Continue's llama.cpp provider use them.
llama.cpp's stream has no [DONE].

Response fields follow llama.cpp's server README: `content`, `stop`, `tokens_predicted`, `tokens_evaluated`,
`tokens_cached`, `generation_settings`, `timings.*`; `response_fields` selects flat keys such as
"timings/prompt_n".
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import asdict, replace
from typing import Any

from ...engine.base import Delta, SamplingSettings, StructuredOutput
from ...fim.defaults import HOLE_DEFAULTS
from ...fim.prompt import Hole, extra_files
from ...generation.core import Choice, Source, new_id
from ...generation.served import Target
from ...metrics import RequestObserver
from ..endpoint import Endpoint, Job
from .protocol import LlamaCppRequest

RESPONSE_DOC = {"description": "llama.cpp's result object, an array of them (n_cmpl > 1), or its event stream",
                "content": {"application/json": {"schema": {"anyOf": [{"type": "object"}, {"type": "array"}]}}}}


class LlamaCppCompletion(Endpoint[LlamaCppRequest]):
    """llama.cpp's /completion: `prompt` continued. llama.cpp's server ignores `model` (one model per server): a
    name this server serves picks its engine, any other is ignored as llama.cpp would."""

    name = "llamacpp_completion"
    paths = ("/completion",)
    request = LlamaCppRequest
    foreign_model_names = True
    response_doc = RESPONSE_DOC

    def owner(self, body: LlamaCppRequest) -> tuple[str | None, int | None]:
        return None, body.id_slot

    def source(self, body: LlamaCppRequest) -> Source:
        return body.prompt

    def convert(self, target: Target, body: LlamaCppRequest) -> Job[LlamaCppRequest]:
        structured = (StructuredOutput(grammar=body.grammar, param="grammar") if body.grammar is not None else
                      StructuredOutput(json_schema=body.json_schema, param="json_schema")
                      if body.json_schema is not None else None)
        sampling = SamplingSettings(temperature=body.temperature, top_p=body.top_p, n=body.n_cmpl,
                                    stop=tuple(body.stop), seed=body.seed, adapter=target.adapter, top_k=body.top_k,
                                    min_p=body.min_p, repetition_penalty=body.repeat_penalty,
                                    presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
                                    ignore_eos=body.ignore_eos, structured=structured)
        prepared = target.core.prepare([self.source(body)], None if body.n_predict < 0 else body.n_predict, sampling)
        return Job(new_id("infill"), body, target, prepared)

    async def respond(self, job: Job[LlamaCppRequest], observer: RequestObserver) -> dict[str, Any] | list[Any]:
        choices = [Choice() for _ in range(job.sequences)]
        async for index, delta in _run(job, observer):
            choices[index].add(delta)
        results = [_result(job, c.text, c.tokens, observer, c.finish_reason) for c in choices]
        return results[0] if len(results) == 1 else results

    async def events(self, job: Job[LlamaCppRequest], observer: RequestObserver) -> AsyncIterator[dict[str, Any]]:
        """llama.cpp's stream: `{"content": ..., "stop": false}` payloads, then one result with `stop: true`."""
        predicted, finish = 0, None
        async for index, delta in _run(job, observer):
            predicted += delta.token_count
            finish = finish or (delta.finish_reason if index == 0 else None)
            if delta.text:
                yield {"content": delta.text, "stop": False, "index": index, "id_slot": 0}
        yield _result(job, "", predicted, observer, finish)


class Infill(LlamaCppCompletion):
    """llama.cpp's /infill: the hole between `input_prefix` and `input_suffix`, other files (`input_extra`) in the
    family's repository format, `prompt` typed after the middle marker. llama.cpp keeps the FIM format for an
    empty suffix (the cursor is at the end)."""

    name = "infill"
    paths = ("/infill",)

    def source(self, body: LlamaCppRequest) -> Source:
        code_stops, fit = HOLE_DEFAULTS["infill"].resolve(body.code_stops, body.fit_context, False)
        return Hole(body.input_prefix, body.input_suffix, extra_files(body.infill_extras()), body.filename,
                    body.repo_name, code_stops=code_stops, min_indent=body.n_indent or None, fit=fit,
                    reserve_tokens=None if body.n_predict < 0 else body.n_predict, prefix_field="input_prefix",
                    typed=body.prompt)


async def _run(job: Job[LlamaCppRequest], observer: RequestObserver) -> AsyncIterator[tuple[int, Delta]]:
    """The job's deltas, each choice ended as llama.cpp's t_max_predict_ms ends it: once generating has taken that
    long, at the next newline (llama.cpp's server.cpp: "if we have seen a new line, we stop after a certain time
    limit, but only upon another new line"). Leaving the engine's stream early aborts its request."""
    if job.sampling.max_tokens == 0:  # n_predict 0: the prompt is processed and cached, nothing is generated
        await job.target.core.prefill(job.prepared.prompts, job.sampling, job.id, observer)
    limit_s = job.body.t_max_predict_ms / 1000
    ended: set[int] = set()
    # closed on leaving, not whenever the collector gets to it: that is what aborts the engine's request now
    async with aclosing(job.target.core.run(job.prepared.prompts, job.sampling, job.id, observer)) as deltas:
        async for index, delta in deltas:
            if index in ended:
                continue
            if limit_s and delta.finish_reason is None and "\n" in delta.text and observer.first_token_at is not None \
                    and observer.clock() - observer.first_token_at > limit_s:
                cut = delta.text.index("\n") + 1
                delta = replace(delta, text=delta.text[:cut], finish_reason="length")
                ended.add(index)
            yield index, delta
            if len(ended) == job.sequences:
                return


def _result(job: Job[LlamaCppRequest], content: str, predicted: int, observer: RequestObserver,
            finish: str | None) -> dict[str, Any]:
    now = observer.clock()
    first = observer.first_token_at or now
    prompt_ms = (first - observer.started) * 1000
    predicted_ms = (now - first) * 1000
    prompt_n = job.prepared.prompt_tokens
    model = job.target.core.served.id
    sampling = job.sampling
    result = {
        "content": content,
        "id_slot": 0,
        "stop": True,
        "model": model,
        "tokens_predicted": predicted,
        "tokens_evaluated": prompt_n,
        "tokens_cached": 0,
        "truncated": job.prepared.truncation is not None,
        "stop_type": "limit" if finish == "length" else "eos",
        "generation_settings": {"n_predict": sampling.max_tokens, "temperature": sampling.temperature,
                                "top_p": sampling.top_p, "stop": list(sampling.stop), "model": model,
                                "seed": sampling.seed},
        "timings": {"prompt_n": prompt_n, "prompt_ms": prompt_ms,
                    "prompt_per_second": prompt_n / prompt_ms * 1000 if prompt_ms else 0.0,
                    "predicted_n": predicted, "predicted_ms": predicted_ms,
                    "predicted_per_second": predicted / predicted_ms * 1000 if predicted_ms else 0.0},
    }
    if job.prepared.truncation is not None:
        result["truncation"] = asdict(job.prepared.truncation)
    return _select(result, job.body.response_fields)


def _select(result: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
    if not fields:
        return result
    selected: dict[str, Any] = {}
    for path in fields:
        value: Any = result
        for part in path.split("/"):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            selected[path] = value
    return selected
