"""llama.cpp's /infill and /completion on the wire, as llama.vscode, llama.vim and Continue's llama.cpp
provider use them: request -> prompt + sampling (prepare), deltas -> one result (collect) or stream payloads
(events). Framing and errors are serving.py's; llama.cpp's stream has no [DONE].

Response fields follow llama.cpp's server README: `content`, `stop`, `tokens_predicted`,
`tokens_evaluated`, `tokens_cached`, `generation_settings`, `timings.*`; `response_fields` selects
flat keys such as "timings/prompt_n".
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ..engine.base import SamplingSettings
from ..generation.core import GenerationCore, Prompt, new_id
from ..generation.hole import Hole, extra_files
from ..metrics import RequestObserver
from .protocol import LlamaCppRequest


@dataclass(frozen=True)
class PreparedInfill:
    id: str
    prompt: Prompt
    sampling: SamplingSettings
    request: LlamaCppRequest

    @property
    def sequences(self) -> int:
        return self.sampling.n


def prepare(core: GenerationCore, req: LlamaCppRequest, infill: bool) -> PreparedInfill:
    if infill:
        # llama.cpp keeps the FIM format for an empty suffix (the cursor is at the end); other files go in the
        # family's repository format; code-aware stops and trimming to fit are on unless the request says no.
        hole = Hole(req.input_prefix, req.input_suffix, extra_files(req.infill_extras()), req.filename,
                    req.repo_name, code_stops=req.code_stops is not False, min_indent=req.n_indent or None,
                    fit=req.fit_context is not False, reserve_tokens=None if req.n_predict < 0 else req.n_predict,
                    prefix_field="input_prefix")
        prompt = core.fill(hole)
        if req.prompt:  # llama.cpp appends `prompt` after the middle marker (text typed at the cursor)
            prompt = core.extend(prompt, req.prompt)
    else:
        prompt = core.text_prompt(req.prompt)
    budget = core.token_budget(prompt, None if req.n_predict < 0 else req.n_predict)
    sampling = SamplingSettings(max_tokens=budget, temperature=req.temperature, top_p=req.top_p, n=req.n_cmpl,
                                stop=tuple(req.stop), seed=req.seed)
    return PreparedInfill(new_id("infill"), prompt, sampling, req)


def _result(core: GenerationCore, p: PreparedInfill, content: str, predicted: int, observer: RequestObserver,
            finish: str | None) -> dict[str, Any]:
    now = observer.clock()
    first = observer.first_token_at or now
    prompt_ms = (first - observer.started) * 1000
    predicted_ms = (now - first) * 1000
    result = {
        "content": content,
        "id_slot": 0,
        "stop": True,
        "model": core.served.id,
        "tokens_predicted": predicted,
        "tokens_evaluated": len(p.prompt.token_ids),
        "tokens_cached": 0,
        "truncated": p.prompt.truncation is not None,
        "stop_type": "limit" if finish == "length" else "eos",
        "generation_settings": {"n_predict": p.sampling.max_tokens, "temperature": p.sampling.temperature,
                                "top_p": p.sampling.top_p, "stop": list(p.sampling.stop), "model": core.served.id,
                                "seed": p.sampling.seed},
        "timings": {"prompt_n": len(p.prompt.token_ids), "prompt_ms": prompt_ms,
                    "prompt_per_second": len(p.prompt.token_ids) / prompt_ms * 1000 if prompt_ms else 0.0,
                    "predicted_n": predicted, "predicted_ms": predicted_ms,
                    "predicted_per_second": predicted / predicted_ms * 1000 if predicted_ms else 0.0},
    }
    if p.prompt.truncation is not None:
        result["truncation"] = p.prompt.truncation.as_dict()
    return _select(result, p.request.response_fields)


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


async def collect(core: GenerationCore, p: PreparedInfill, observer: RequestObserver) -> dict[str, Any] | list[Any]:
    if p.sampling.max_tokens == 0:  # llama.vscode's warm-up: nothing to generate, answer at once
        return _result(core, p, "", 0, observer, "length")
    texts = [""] * p.sampling.n
    counts = [0] * p.sampling.n
    finishes: list[str | None] = [None] * p.sampling.n
    async for index, delta in core.run([p.prompt], p.sampling, p.id, observer):
        texts[index] += delta.text
        counts[index] += delta.token_count
        finishes[index] = delta.finish_reason or finishes[index]
    results = [_result(core, p, texts[i], counts[i], observer, finishes[i]) for i in range(p.sampling.n)]
    return results[0] if len(results) == 1 else results


async def events(core: GenerationCore, p: PreparedInfill, observer: RequestObserver) -> AsyncIterator[dict[str, Any]]:
    """llama.cpp's stream: `{"content": ..., "stop": false}` payloads, then one result with `stop: true`."""
    counts = [0] * p.sampling.n
    finishes: list[str | None] = [None] * p.sampling.n
    async for index, delta in core.run([p.prompt], p.sampling, p.id, observer):  # n_predict 0: no text, at once
        counts[index] += delta.token_count
        finishes[index] = delta.finish_reason or finishes[index]
        if delta.text:
            yield {"content": delta.text, "stop": False, "index": index, "id_slot": 0}
    yield _result(core, p, "", sum(counts), observer, finishes[0])
