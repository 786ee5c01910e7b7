"""The quantization cache: produce, reuse, atomicity after failures and crashes, the serve-time refusal.
A small fake worker stands in for llm-compressor here; tests/quantize/test_real_awq.py runs the real one."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from server.engine.base import EngineStartError
from server.planner.catalog import Catalog
from server.planner.choose import choose
from server.planner.hardware import simulated
from server.planner.plan import NoFit
from server.quantize import runner
from server.quantize.recipe import Calibration, QuantizeError, QuantSpec
from tests.conftest import FIXED_CPU, make_settings

SPEC = QuantSpec("tiny", "fp0", group_size=64, calibration=Calibration(samples=2, max_seq_len=32))

FAKE_WORKER = '''
import json, sys, pathlib
job = json.loads(pathlib.Path(sys.argv[1]).read_text())
out = pathlib.Path(job["out_dir"])
calls = pathlib.Path(job["model_dir"]) / "calls"
calls.write_text(str(int(calls.read_text()) + 1) if calls.exists() else "1")
print("PROGRESS calibrate 0/%d" % len(job["texts"]), flush=True)
# tqdm draws its bars (stderr, merged) as a carriage return and the bar, no newline: a progress line follows
sys.stderr.write("\\r(2/31): Calibrating: 100%|##########| 32/32 [00:20<00:00]"); sys.stderr.flush()
print("PROGRESS calibrate layer 2/30 elapsed 40s eta 560s", flush=True)
mode = (pathlib.Path(job["model_dir"]) / "mode").read_text()
(out / "config.json").write_text(json.dumps({"quantization_config": {"group_size": job["group_size"]}}))
if mode == "fail":
    print("Traceback: out of memory", flush=True)
    sys.exit(3)
if mode == "no-weights":
    sys.exit(0)
(out / "model.safetensors").write_bytes(b"weights")
print("PROGRESS save 1/1", flush=True)
'''


@pytest.fixture
def fake(tmp_path: Path) -> tuple[Path, Path, Path]:
    worker = tmp_path / "worker.py"
    worker.write_text(FAKE_WORKER)
    source = tmp_path / "source"
    source.mkdir()
    (source / "mode").write_text("ok")
    return worker, source, tmp_path / "cache"


def _run(fake: tuple[Path, Path, Path], spec: QuantSpec = SPEC) -> tuple[Path, list[str]]:
    worker, source, cache = fake
    lines: list[str] = []
    result = runner.quantize(spec, source, cache, lines.append, python=Path(sys.executable), worker=worker)
    return result, lines


def test_produces_a_marked_checkpoint(fake) -> None:
    result, lines = _run(fake)
    assert result == runner.quantized_root(fake[2]) / SPEC.dirname
    marker = json.loads((result / runner.COMPLETE_MARKER).read_text())
    assert marker["key"] == SPEC.key and marker["group_size"] == 64
    assert "calibrate 0/2" in lines and "save 1/1" in lines
    assert "calibrate layer 2/30 elapsed 40s eta 560s" in lines
    assert not (result / "job.json").exists()


def test_reuses_the_cached_checkpoint(fake) -> None:
    first, _ = _run(fake)
    second, lines = _run(fake)
    assert second == first
    assert (fake[1] / "calls").read_text() == "1"  # the worker ran once
    assert lines == [f"reusing the quantized checkpoint {first}"]


def test_a_different_recipe_is_a_different_checkpoint(fake) -> None:
    first, _ = _run(fake)
    second, _ = _run(fake, replace(SPEC, group_size=32))
    assert first != second and (fake[1] / "calls").read_text() == "2"


@pytest.mark.parametrize("mode", ["fail", "no-weights"])
def test_a_failed_run_leaves_nothing_loadable(fake, mode: str) -> None:
    (fake[1] / "mode").write_text(mode)
    with pytest.raises(QuantizeError) as info:
        _run(fake)
    if mode == "fail":
        assert "exit 3" in str(info.value) and "out of memory" in str(info.value)
    assert runner.find(fake[2], SPEC) is None
    assert list(runner.quantized_root(fake[2]).iterdir()) == []  # no temporary directory either


def test_a_crashed_run_is_cleaned_up_and_redone(fake) -> None:
    root = runner.quantized_root(fake[2])
    partial = root / f"{SPEC.dirname}.tmp-999999"  # a pid that no longer runs
    partial.mkdir(parents=True)
    (partial / "config.json").write_text('{"quantization_config": {}}')
    half_renamed = root / SPEC.dirname  # no marker: never loadable
    half_renamed.mkdir()
    assert runner.find(fake[2], SPEC) is None
    result, _ = _run(fake)
    assert not partial.exists() and (result / runner.COMPLETE_MARKER).is_file()


def test_a_concurrent_run_is_not_clobbered(fake) -> None:
    root = runner.quantized_root(fake[2])
    busy = root / f"{SPEC.dirname}.tmp-1"  # pid 1 is alive
    busy.mkdir(parents=True)
    with pytest.raises(QuantizeError, match="process 1 is quantizing tiny"):
        _run(fake)
    assert busy.exists()


def test_export_copies_atomically(fake, tmp_path: Path) -> None:
    result, _ = _run(fake)
    out = tmp_path / "exported"
    runner.export(result, out)
    assert (out / runner.COMPLETE_MARKER).is_file()
    assert not any(p.name.startswith("exported.tmp") for p in tmp_path.iterdir())


def test_serve_refuses_without_auto_quantize(catalog: Catalog, tmp_path: Path) -> None:
    from server.prepare import local_dir, prepare_bundled
    from server.serve import resolved_launch

    # A cache of its own, holding only the converted 16-bit model (linked from the developer's cache, where
    # setup made it): a 4-bit checkpoint that `codeserve quantize` left in the real cache must not count.
    bundled = catalog.bundled()
    converted = prepare_bundled(make_settings().cache_dir, bundled)
    local_dir(tmp_path, bundled).parent.mkdir(parents=True)
    local_dir(tmp_path, bundled).symlink_to(converted)
    settings = make_settings(precision="awq", auto_quantize=False, cache_dir=tmp_path)
    # the planner already refuses it (planner/budget.py); serve refuses too, for a plan made with auto-quantization on
    with pytest.raises(NoFit, match="CODESERVE_AUTO_QUANTIZE=false"):
        choose(simulated("none", replace(FIXED_CPU, avx512=True)), catalog, settings)
    option = choose(simulated("none", replace(FIXED_CPU, avx512=True)), catalog,
                    make_settings(precision="awq", cache_dir=tmp_path)).chosen
    assert option.needs_quantization and option.awq_group_size == 64
    with pytest.raises(EngineStartError) as info:
        resolved_launch(option, settings)
    assert "codeserve quantize smollm2-135m-instruct --group-size 64 --tp 1" in str(info.value)
    assert "CODESERVE_AUTO_QUANTIZE=false" in str(info.value)


class _RecordsQuantize:
    """Stands in for the llm-compressor run only (tested above with a worker of its own): records the spec
    it was asked for and leaves a checkpoint directory where the runner would."""

    def __init__(self, out: Path):
        self.out = out
        self.specs: list[QuantSpec] = []

    def __call__(self, spec: QuantSpec, model_dir: Path, cache_dir: Path, progress, torch_index_url: str = "",
                 **_: object) -> Path:
        self.specs.append(spec)
        progress("layer 1/30 done")
        self.out.mkdir(parents=True, exist_ok=True)
        return self.out


def _linked_cache(catalog: Catalog, tmp_path: Path) -> Path:
    from server.prepare import local_dir, prepare_bundled

    bundled = catalog.bundled()
    converted = prepare_bundled(make_settings().cache_dir, bundled)
    local_dir(tmp_path, bundled).parent.mkdir(parents=True, exist_ok=True)
    local_dir(tmp_path, bundled).symlink_to(converted)
    return tmp_path


def test_serve_quantizes_at_start_and_serves_the_checkpoint(monkeypatch: pytest.MonkeyPatch, catalog: Catalog,
                                                            tmp_path: Path) -> None:
    from server.serve import resolved_launch

    recorder = _RecordsQuantize(tmp_path / "made")
    monkeypatch.setattr(runner, "quantize", recorder)
    settings = make_settings(precision="awq", cache_dir=_linked_cache(catalog, tmp_path / "cache"))
    option = choose(simulated("none", replace(FIXED_CPU, avx512=True)), catalog, settings).chosen
    launch = resolved_launch(option, settings)
    assert launch.model == str(tmp_path / "made")  # the engine loads what quantization made
    assert launch.online_quantization is None  # the checkpoint declares its own method
    (spec,) = recorder.specs
    assert (spec.model_id, spec.bits, spec.group_size) == ("smollm2-135m-instruct", 4, 64)


def test_quantize_command_passes_its_flags(monkeypatch: pytest.MonkeyPatch, catalog: Catalog, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from server.cli import main

    recorder = _RecordsQuantize(tmp_path / "made")
    (tmp_path / "made").mkdir()
    (tmp_path / "made" / "config.json").write_text("{}")
    monkeypatch.setattr(runner, "quantize", recorder)
    monkeypatch.setenv("CODESERVE_CACHE_DIR", str(_linked_cache(catalog, tmp_path / "cache")))
    out = tmp_path / "exported"
    assert main(["quantize", "smollm2-135m-instruct", "--group-size", "32", "--samples", "3", "--seq-len", "64",
                 "--seed", "5", "--out", str(out)]) == 0
    (spec,) = recorder.specs
    assert (spec.group_size, spec.calibration.samples, spec.calibration.max_seq_len, spec.calibration.seed) == (
        32, 3, 64, 5)
    assert (out / "config.json").is_file() and capsys.readouterr().out.strip().endswith(str(out))
    assert main(["quantize", "smollm2-135m-instruct", "--bits", "8"]) == 2  # only W4A16 is offered
