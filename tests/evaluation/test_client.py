"""`codeserve eval` against a server: the fake engine answering each hole's true middle scores 1.0; one
answering nonsense scores low; the JSON has the documented keys."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from server.cli import main
from server.evaluation.client import EvalError, Target, evaluate
from server.evaluation.samples import cut
from server.fim.templates import TEMPLATES
from tests.fake_engine import FakeEngine

SAMPLES = 6


@dataclass
class OracleEngine(FakeEngine):
    """Answers each evaluation hole with its reference middle (found by the prompt the server sent)."""

    answers: dict[tuple[int, ...], str] = field(default_factory=dict)

    def _next(self, prompt, sampling, index, step):  # type: ignore[no-untyped-def]
        self.reply = self.answers.get(tuple(prompt), "???")
        return super()._next(prompt, sampling, index, step)


def _oracle() -> OracleEngine:
    engine = OracleEngine(max_model_len=8192)
    for sample in cut(SAMPLES, seed=0):
        prompt = engine.tokenize(TEMPLATES["qwen"].prompt(sample.prefix, sample.suffix))
        engine.answers[tuple(prompt)] = sample.middle
    return engine


def test_a_server_that_knows_every_middle_scores_one(serve_fake) -> None:
    served = serve_fake(engine=_oracle())
    result = evaluate(Target(served.url), SAMPLES, seed=0, concurrency=2)
    assert result["exact_match"] == 1.0 and result["edit_similarity"] == 1.0
    assert result["samples"] == SAMPLES and result["errors"] == 0 and result["model"] == "qwen2.5-coder-7b"
    assert set(result["by_kind"]) == {"single-line", "multi-line"}


def test_a_server_that_answers_nonsense_scores_low(serve_fake) -> None:
    served = serve_fake(engine=FakeEngine(reply="???"))
    result = evaluate(Target(served.url), SAMPLES, seed=0)
    assert result["exact_match"] == 0.0 and result["edit_similarity"] < 0.2


def test_cli_prints_one_json_object(serve_fake, capsys: pytest.CaptureFixture[str]) -> None:
    served = serve_fake(engine=_oracle())
    assert main(["eval", "--url", served.url, "--samples", str(SAMPLES), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"exact_match", "edit_similarity", "samples", "model", "seed", "source"} <= set(result)


def test_an_unreachable_server_is_a_clear_error() -> None:
    with pytest.raises(EvalError, match="cannot reach"):
        evaluate(Target("http://127.0.0.1:9", timeout_s=2), 2)
    assert main(["eval", "--url", "http://127.0.0.1:9", "--samples", "2"]) == 2
