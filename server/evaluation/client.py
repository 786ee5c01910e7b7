"""`codeserve eval`: the samples against an OpenAI-compatible server's /v1/completions with `suffix`, greedy,
scored. Plain HTTP from the standard library: the server under test may be a peer, not codeserve."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .samples import Sample, cut, source_name
from .score import Scored, by_kind, score, summary

MAX_TOKENS = {"single-line": 48, "multi-line": 128}  # room for the reference (at most 4 lines of 120 chars)


class EvalError(RuntimeError):
    """The server cannot be evaluated (unreachable, no model, refuses every request); the message says why."""


@dataclass(frozen=True)
class Target:
    url: str
    model: str | None = None
    api_key: str | None = None
    timeout_s: float = 300.0

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(urllib.request.Request(self.url.rstrip("/") + path, json.dumps(body).encode(),
                                                 {"Content-Type": "application/json", **self._auth()}))

    def get(self, path: str) -> dict[str, Any]:
        return self._call(urllib.request.Request(self.url.rstrip("/") + path, headers=self._auth()))

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _call(self, request: urllib.request.Request) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return dict(json.load(response))
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:500]
            raise EvalError(f"{request.full_url} answered {exc.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise EvalError(f"cannot reach {request.full_url}: {exc}") from None


def served_model(target: Target) -> str:
    models = target.get("/v1/models").get("data") or []
    if not models:
        raise EvalError(f"{target.url}/v1/models lists no model; pass --model")
    return str(models[0]["id"])


def complete(target: Target, model: str, sample: Sample) -> str:
    body = {"model": model, "prompt": sample.prefix, "suffix": sample.suffix, "temperature": 0.0,
            "max_tokens": MAX_TOKENS[sample.kind]}
    return str(target.post("/v1/completions", body)["choices"][0]["text"])


def evaluate(target: Target, samples: int, seed: int = 0, concurrency: int = 1,
             progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """The scores of `samples` holes (see samples.cut) on the server at `target`, as one JSON-able object."""
    model = target.model or served_model(target)
    holes = cut(samples, seed)
    started = time.monotonic()
    results: list[Scored | None] = [None] * len(holes)
    errors: list[str] = []

    def one(index: int) -> None:
        try:
            results[index] = score(holes[index], complete(target, model, holes[index]))
        except EvalError as exc:
            errors.append(f"{holes[index].id}: {exc}")
        if progress is not None:
            progress(sum(r is not None for r in results) + len(errors), len(holes))

    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        list(pool.map(one, range(len(holes))))
    scored = [r for r in results if r is not None]
    if not scored:
        raise EvalError(f"every request failed; the first: {errors[0] if errors else 'none sent'}")
    return {**summary(scored), "by_kind": by_kind(scored), "errors": len(errors), "error_examples": errors[:3],
            "model": model, "url": target.url, "seed": seed, "source": source_name(),
            "seconds": round(time.monotonic() - started, 1),
            "worst": [{"id": s.sample.id, "expected": s.sample.middle, "got": s.completion}
                      for s in sorted(scored, key=lambda s: s.similarity)[:3]]}
