"""The real thing, once per CI run: llm-compressor (in its own environment, created on first use)
quantizes the bundled SmolLM2-135M with a small code calibration set; the checkpoint is cached, its
linear weights are about a quarter of bf16 plus scales, and vLLM's CPU engine serves it where the CPU
has the AVX-512 kernels (elsewhere the planner refuses 4-bit on the CPU, and the test checks that)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import struct
from pathlib import Path

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


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    entry = load_catalog(DEFAULT_CATALOG_PATH).bundled()
    source = prepare_bundled(settings.cache_dir, entry)
    spec = QuantSpec(entry.id, fingerprint(source), group_size=64, calibration=CALIBRATION)
    return runner.quantize(spec, source, settings.cache_dir, print)


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


def test_checkpoint_is_cached_and_reused(checkpoint: Path) -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    entry = load_catalog(DEFAULT_CATALOG_PATH).bundled()
    spec = QuantSpec(entry.id, fingerprint(prepare_bundled(settings.cache_dir, entry)), group_size=64,
                     calibration=CALIBRATION)
    assert runner.find(settings.cache_dir, spec) == checkpoint


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
