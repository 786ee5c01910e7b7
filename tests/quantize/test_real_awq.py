"""The real thing, once per CI run: the chart's quantization Job (its rendered command, arguments and settings) runs
here with its cache volume in a temporary directory, and llm-compressor (in its own environment, created on first use)
quantizes the bundled SmolLM2-135M with a small code calibration set; the checkpoint lands where the server's plan
finds it and chooses it, its linear weights are about a quarter of bf16 plus scales, and vLLM's CPU engine serves it
where the CPU has the AVX-512 kernels (elsewhere the planner refuses 4-bit on the CPU, and the test checks that)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from server.planner.catalog import load_catalog
from server.planner.choose import choose
from server.planner.hardware import cpu_info, simulated
from server.planner.memory import param_counts
from server.planner.plan import NoFit
from server.prepare import prepare_bundled
from server.quantize import runner
from server.quantize.recipe import Calibration, QuantSpec, fingerprint
from server.settings import DEFAULT_CATALOG_PATH, Settings
from tests.conftest import make_settings

pytestmark = pytest.mark.slow
CALIBRATION = Calibration(samples=8, max_seq_len=128, seed=0)


ROOT = Path(__file__).resolve().parents[2]
# The Job as an operator would set it for the bundled model on a CPU node; 8 x 128 calibration tokens and no gate
# keep it to a few minutes on 2 cores (CALIBRATION above).
JOB_VALUES = ("image.flavor=cpu", "gpu.count=0", "quantizeJob.enabled=true", "quantizeJob.sameNodeAsServer=false",
              "quantizeJob.model=smollm2-135m-instruct", f"quantizeJob.samples={CALIBRATION.samples}",
              f"quantizeJob.seqLen={CALIBRATION.max_seq_len}", "quantizeJob.gateSamples=0")


@dataclasses.dataclass(frozen=True)
class JobRun:
    cache_dir: Path  # CODESERVE_CACHE_DIR as the Job's pod sees it, on the "volume"
    env: dict[str, str]  # the Job's settings (its ConfigMap), paths on the volume
    checkpoint: Path  # what the Job printed last: the checkpoint it made


def _job_env(docs: list[dict[str, Any]], mount: str, volume: Path) -> dict[str, str]:
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODESERVE_")}
    return {**env, **{k: str(volume) + v[len(mount):] if v.startswith(mount + "/") else v for k, v in config.items()},
            "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> JobRun:
    """helm template with the Job on; its container's command and args run here (`codeserve` is this checkout's
    CLI), with its settings, and the volume it mounts at /cache a temporary directory. The volume starts with what the
    CPU image bakes into it (the bundled model) and, so that no CI run installs it twice, the llm-compressor
    environment the cache dir already has (made now if missing)."""
    from tests.deploy.test_helm import render

    docs = render(None, *JOB_VALUES)
    (job_doc,) = [d for d in docs if d["kind"] == "Job"]
    pod = job_doc["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (mount,) = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == "cache"]
    volume = tmp_path_factory.mktemp("volume")
    env = _job_env(docs, mount, volume)
    cache_dir = Path(env["CODESERVE_CACHE_DIR"])
    cache_dir.mkdir(parents=True)
    home = Settings(_env_file=None).cache_dir  # type: ignore[call-arg]
    prepare_bundled(home, load_catalog(DEFAULT_CATALOG_PATH).bundled())
    runner.QuantEnv(home).ensure(print)
    (cache_dir / "models").symlink_to(home / "models", target_is_directory=True)
    (cache_dir / "quant-venv").symlink_to(home / "quant-venv", target_is_directory=True)
    assert container["command"] == ["codeserve"]
    result = subprocess.run([sys.executable, "-m", "server.cli", *container["args"]], env=env, cwd=volume,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return JobRun(cache_dir, env, Path(result.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def checkpoint(job: JobRun) -> Path:
    return job.checkpoint


def test_the_jobs_checkpoint_is_where_the_servers_plan_finds_and_chooses_it(job: JobRun) -> None:
    """The server, started with the Job's settings on the same volume, plans the cached 4-bit checkpoint (nothing to
    calibrate at start) and loads exactly what the Job wrote, without quantizing (auto-quantization off)."""
    from server.planning import detect_and_plan, quantized_checkpoints
    from server.serve import resolved_launch

    config = {k.removeprefix("CODESERVE_").lower(): v for k, v in job.env.items() if k.startswith("CODESERVE_")}
    settings = make_settings(**{**config, "model": "smollm2-135m-instruct", "precision": "awq",
                                "auto_quantize": False, "gpus": None if cpu_info().avx512 else "1xT4"})
    catalog = load_catalog(settings.catalog_path)
    assert job.checkpoint.parent == runner.quantized_root(settings.cache_dir)
    assert quantized_checkpoints(settings, catalog) == {("smollm2-135m-instruct", 64)}
    chosen = detect_and_plan(settings).served[0].plan.chosen
    assert chosen.start is not None and (chosen.precision, chosen.awq_group_size) == ("awq", 64)
    assert chosen.start.quantize_s == 0 and chosen.start.steps[0] == "the cached 4-bit checkpoint (g64)"
    assert resolved_launch(chosen, settings).model == str(job.checkpoint)


def _tensor_bytes(path: Path) -> dict[str, int]:
    with path.open("rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    sizes: dict[str, int] = {}
    for name, info in header.items():
        if name != "__metadata__":
            kind = name.rsplit(".", 1)[-1]
            sizes[kind] = sizes.get(kind, 0) + info["data_offsets"][1] - info["data_offsets"][0]
    return sizes


def test_checkpoint_is_w4a16_with_group_64(checkpoint: Path) -> None:
    config = json.loads((checkpoint / "config.json").read_text())["quantization_config"]
    weights = config["config_groups"]["group_0"]["weights"]
    assert (config["quant_method"], weights["num_bits"], weights["group_size"], weights["symmetric"]) == (
        "compressed-tensors", 4, 64, False)
    assert "lm_head" in config["ignore"]


def test_linear_weights_are_a_quarter_of_bf16_plus_scales(checkpoint: Path) -> None:
    sizes = _tensor_bytes(checkpoint / "model.safetensors")
    arch = load_catalog(DEFAULT_CATALOG_PATH).bundled().architecture
    bf16_linear = param_counts(arch).linear * 2
    quantized = sizes["weight_packed"] + sizes["weight_scale"] + sizes["weight_zero_point"]
    # 4 bits per weight, a 16-bit scale and a 4-bit zero point per group of 64: (4 + 20/64) / 16 = 0.2695
    assert quantized / bf16_linear == pytest.approx(0.2695, abs=0.005)
    assert sizes["weight_packed"] / bf16_linear == pytest.approx(0.25, abs=0.001)


def test_checkpoint_is_cached_and_reused(job: JobRun) -> None:
    entry = load_catalog(DEFAULT_CATALOG_PATH).bundled()
    spec = QuantSpec(entry.id, fingerprint(prepare_bundled(job.cache_dir, entry)), group_size=64,
                     calibration=CALIBRATION)
    assert runner.find(job.cache_dir, spec) == job.checkpoint


def test_quantize_then_serve_the_directory(checkpoint: Path, tmp_path: Path) -> None:
    """The path a user follows: `codeserve quantize M --out DIR`, then CODESERVE_MODEL=DIR. The directory is
    described from its files (4-bit, its own group size), planned as it is, and vLLM's CPU engine serves it where
    the CPU has the AVX-512 kernels; elsewhere the planner refuses 4-bit on the CPU with the reason."""
    from server import model_source

    out = tmp_path / "smollm2-w4"
    runner.export(checkpoint, out)
    cpu = cpu_info()
    given = make_settings(model=str(out))
    source = model_source.resolve(given, load_catalog(DEFAULT_CATALOG_PATH))
    settings = source.pins.applied(given)
    assert source.pins.precision == "awq" and any("W4A16, group 64" in fact for fact in source.facts)
    if not cpu.avx512:
        with pytest.raises(NoFit, match="awq on the CPU needs AVX-512"):
            choose(simulated("none", cpu), source.catalog, settings)
        pytest.skip("this CPU lacks AVX-512: vLLM's CPU build has no 4-bit kernel for it (refusal checked)")
    from server.engine.base import SamplingSettings
    from server.engine.vllm import VllmEngine

    chosen = choose(simulated("none", cpu), source.catalog, settings).chosen
    assert (chosen.launch.model, chosen.precision, chosen.needs_quantization) == (str(out.resolve()), "awq", False)
    engine = VllmEngine.start(dataclasses.replace(chosen.launch, max_model_len=1024, eager=True))  # no compile

    async def complete() -> str:
        text = ""
        async for delta in engine.generate(engine.tokenize("def add(a, b):\n"),
                                           SamplingSettings(max_tokens=16, temperature=0), "q"):
            text += delta.text
        await engine.shutdown()
        return text

    assert asyncio.run(complete()).strip()
