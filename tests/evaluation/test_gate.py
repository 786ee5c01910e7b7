"""The 4-bit quality gate: the job the quantizer answers, the scores it stores, and what serving does with them
(warn, or refuse and fall back to the plan's next option)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from server.evaluation import gate
from server.evaluation.samples import Sample
from server.fim.templates import TEMPLATES
from server.planner import hardware
from server.planner.catalog import Catalog
from server.planner.choose import choose
from server.planner.hardware import simulated
from server.quantize import runner
from tests.conftest import FIXED_CPU, make_settings
from tests.quantize.test_runner import _linked_cache

SAMPLES = 4


def test_the_job_writes_each_hole_as_the_served_family_would() -> None:
    fim = gate.job(TEMPLATES["qwen"], SAMPLES)
    sample = Sample(**fim["samples"][0])
    assert fim["prompts"][0] == {"text": TEMPLATES["qwen"].prompt(sample.prefix, sample.suffix), "chat": False,
                                 "max_tokens": gate.MAX_TOKENS[sample.kind]}
    plain = gate.job(None, SAMPLES)  # a model without FIM tokens continues the prefix, as the server does
    assert plain["prompts"][0] == {"text": sample.prefix, "chat": False, "max_tokens": gate.MAX_TOKENS[sample.kind]}
    chat = gate.job(None, SAMPLES, by_chat=True)  # CODESERVE_HOLE_FILL=chat: the instruction, wrapped by the worker
    assert chat["prompts"][0]["chat"] and "<HOLE>" in chat["prompts"][0]["text"]
    assert chat["samples"] == fim["samples"]  # same holes whatever the family


def _raw(checkpoint: Path, quantized: str | None) -> list[Sample]:
    """What the worker leaves: the source answers every hole right (plus an EOS marker), 4-bit answers
    `quantized` (None: right too)."""
    job = gate.job(TEMPLATES["qwen"], SAMPLES)
    samples = [Sample(**s) for s in job["samples"]]
    checkpoint.mkdir(parents=True, exist_ok=True)
    answers = {**job, "source": [s.middle + "<|endoftext|>" for s in samples],
               "quantized": [quantized or s.middle for s in samples], "special_tokens": ["<|endoftext|>"]}
    (checkpoint / gate.RAW_FILE).write_text(json.dumps(answers))
    return samples


def test_judge_scores_cleaned_answers_and_stores_them(tmp_path: Path) -> None:
    _raw(tmp_path, quantized=None)
    quality = gate.judge(tmp_path)
    assert quality is not None and quality.source["exact_match"] == 1.0 and quality.loss == 0.0
    stored = json.loads((tmp_path / gate.QUALITY_FILE).read_text())
    assert stored["loss"] == 0.0 and stored["quantized"]["samples"] == SAMPLES
    (tmp_path / gate.RAW_FILE).unlink()
    assert gate.judge(tmp_path) == quality  # read back from quality.json


def test_a_bad_4bit_checkpoint_shows_its_loss(tmp_path: Path) -> None:
    _raw(tmp_path, quantized="pass")
    quality = gate.judge(tmp_path)
    assert quality is not None and quality.loss > 0.5
    assert "1.000 ->" in quality.describe() and "loss" in quality.describe()
    assert gate.judge(tmp_path / "never-quantized") is None


class _QuantizesBadly:
    """Stands in for the quantization run: leaves a checkpoint whose 4-bit answers are `answer`."""

    def __init__(self, out: Path, answer: str | None):
        self.out, self.answer = out, answer
        self.evaluations: list[dict | None] = []

    def __call__(self, spec, model_dir, cache_dir, progress, torch_index_url="", evaluation=None, **_):  # type: ignore[no-untyped-def]
        self.evaluations.append(evaluation)
        progress("calibrate 3/30 layers elapsed 20s eta 180s")
        _raw(self.out, self.answer)
        return self.out


@pytest.fixture
def awq_option(catalog: Catalog, tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = make_settings(precision="awq", cache_dir=_linked_cache(catalog, tmp_path / "cache"))
    return choose(simulated("none", replace(FIXED_CPU, avx512=True)), catalog, settings).chosen, settings


def test_serving_warns_about_a_lossy_checkpoint_by_default(monkeypatch: pytest.MonkeyPatch, awq_option,
                                                           tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from server.serve import resolved_launch

    option, settings = awq_option
    quantize = _QuantizesBadly(tmp_path / "made", answer="pass")
    monkeypatch.setattr(runner, "quantize", quantize)
    heard: list[tuple[str, str, float | None]] = []
    with caplog.at_level(logging.WARNING, logger="codeserve"):
        launch = resolved_launch(option, settings, lambda *phase: heard.append(phase))
    assert launch.model == str(tmp_path / "made")
    assert quantize.evaluations[0] is not None and len(quantize.evaluations[0]["prompts"]) == 24
    assert "CODESERVE_QUANT_MAX_QUALITY_LOSS=0.05" in caplog.text and "serving it anyway" in caplog.text
    assert heard == [("quantizing", "quantizing smollm2-135m-instruct to 4-bit", None),
                     ("quantizing", "quantizing smollm2-135m-instruct to 4-bit: calibrate 3/30 layers elapsed 20s "
                                    "eta 180s", None)]


def test_refusing_gate_falls_back_to_the_next_option(monkeypatch: pytest.MonkeyPatch, awq_option,
                                                     tmp_path: Path) -> None:
    from server import serve

    option, settings = awq_option
    settings = settings.model_copy(update={"quant_quality_gate": "refuse"})
    monkeypatch.setattr(runner, "quantize", _QuantizesBadly(tmp_path / "made", answer="pass"))
    with pytest.raises(serve.QualityRefused, match="refusing it"):
        serve.resolved_launch(option, settings)
    monkeypatch.setattr(runner, "quantize", _QuantizesBadly(tmp_path / "good", answer=None))
    assert serve.resolved_launch(option, settings).model == str(tmp_path / "good")  # within the limit: served


def test_start_engine_takes_the_next_option_after_a_refusal(monkeypatch: pytest.MonkeyPatch, catalog: Catalog,
                                                            tmp_path: Path) -> None:
    from server import serve
    from server.engine import vllm

    settings = make_settings(cache_dir=tmp_path, quant_quality_gate="refuse")
    plan = choose(simulated("1xT4", FIXED_CPU), catalog, settings)
    started: list[str] = []

    def resolve(option, settings, progress=None, fetch=None):  # type: ignore[no-untyped-def]
        if option is plan.chosen:
            raise serve.QualityRefused("4-bit lost 20%")
        return option.launch

    monkeypatch.setattr(serve, "resolved_launch", resolve)
    monkeypatch.setattr(vllm.VllmEngine, "start", staticmethod(lambda launch, overrides=None: started.append(
        launch.model) or "engine"))
    engine, result = serve.start_engine(plan, settings)
    assert engine == "engine" and started == [plan.fallbacks[0].launch.model]
    assert result.failed_to_start[0].error == "4-bit lost 20%"


def test_plan_shows_the_stored_scores(monkeypatch: pytest.MonkeyPatch, awq_option, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from server import serve
    from server.cli import main

    option, settings = awq_option
    monkeypatch.setenv("CODESERVE_CACHE_DIR", str(settings.cache_dir))
    # `--gpus none` still reads this machine's CPU, and an AVX2-only one rightly refuses 4-bit: plan on the
    # fixture's AVX-512 CPU, whatever this machine has.
    monkeypatch.setattr(hardware, "cpu_info", lambda: replace(FIXED_CPU, avx512=True))
    assert main(["plan", "--gpus", "none", "--precision", "awq"]) == 0
    assert "scored against the source after quantizing" in capsys.readouterr().out
    spec, _ = serve._spec(option, settings)
    checkpoint = runner.quantized_root(settings.cache_dir) / spec.dirname
    _raw(checkpoint, quantized="pass")
    (checkpoint / runner.COMPLETE_MARKER).write_text("{}")
    assert main(["plan", "--gpus", "none", "--precision", "awq"]) == 0
    out = capsys.readouterr().out
    assert "quality   4-bit vs source on 4 FIM holes: edit similarity 1.000 ->" in out and "over the limit" in out
    assert main(["plan", "--gpus", "none", "--precision", "awq", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["quantization_quality"]
    assert shown["measured"] and shown["loss"] > 0.05 and shown["gate"] == "warn"
