"""Exact match and edit similarity of infilled code, as line- and block-completion benchmarks score them
(CrossCodeEval, RepoBench: exact match after stripping, edit similarity = normalized Levenshtein)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import fmean

from rapidfuzz.distance import Levenshtein

from .samples import Sample


def answer(sample: Sample, completion: str) -> str:
    """What is compared with the reference: for a single-line hole its first line; for a multi-line hole as
    many lines as the reference has (a model that keeps writing past the hole is not punished twice: the
    server's code-aware stops, or the editor, cut there)."""
    lines = completion.split("\n")
    wanted = 1 if sample.kind == "single-line" else sample.middle.count("\n") + 1
    return "\n".join(lines[:wanted]).rstrip()


@dataclass(frozen=True)
class Scored:
    sample: Sample
    completion: str
    exact: bool
    similarity: float


def score(sample: Sample, completion: str) -> Scored:
    got, want = answer(sample, completion).strip(), sample.middle.strip()
    return Scored(sample, completion, got == want, Levenshtein.normalized_similarity(got, want))


def summary(scored: Sequence[Scored]) -> dict[str, float | int]:
    return {"exact_match": round(fmean(s.exact for s in scored), 4) if scored else 0.0,
            "edit_similarity": round(fmean(s.similarity for s in scored), 4) if scored else 0.0,
            "samples": len(scored)}


def by_kind(scored: Iterable[Scored]) -> dict[str, dict[str, float | int]]:
    kinds: dict[str, list[Scored]] = {}
    for s in scored:
        kinds.setdefault(s.sample.kind, []).append(s)
    return {kind: summary(items) for kind, items in sorted(kinds.items())}
