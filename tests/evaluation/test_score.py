from __future__ import annotations

import pytest

from server.evaluation.samples import Sample
from server.evaluation.score import answer, score, summary

SINGLE = Sample("a.py:1", "single-line", "x = f(", "\n", "a, b)")
MULTI = Sample("a.py:2", "multi-line", "    ", "\n", "y = 1\n    z = 2")


@pytest.mark.parametrize(("sample", "completion", "exact", "similarity"), [
    (SINGLE, "a, b)", True, 1.0),
    (SINGLE, "a, b)\nmore_code()", True, 1.0),  # a single-line hole is its first line
    (SINGLE, "a, c)", False, 0.8),
    (SINGLE, "", False, 0.0),
    (MULTI, "y = 1\n    z = 2\n    w = 3", True, 1.0),  # as many lines as the reference
    (MULTI, "y = 1", False, 5 / 15),
], ids=["exact", "first-line", "one-char-off", "empty", "multi-cut-to-reference", "multi-short"])
def test_score(sample: Sample, completion: str, exact: bool, similarity: float) -> None:
    result = score(sample, completion)
    assert result.exact is exact and result.similarity == pytest.approx(similarity)


def test_summary_averages() -> None:
    scored = [score(SINGLE, "a, b)"), score(SINGLE, "")]
    assert summary(scored) == {"exact_match": 0.5, "edit_similarity": 0.5, "samples": 2}
    assert answer(MULTI, "y = 1\n    z = 2\n") == "y = 1\n    z = 2"
