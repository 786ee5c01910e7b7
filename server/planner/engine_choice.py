"""Which engine a CPU plan runs, and the llama.cpp option's memory: pure, like the rest of the planner.

GPUs always run vLLM. On the CPU the plan takes llama.cpp's server (`llama-server`) where the model has a GGUF file
and the binary was found (planning.py looks for it, hardware.Inventory.llama_server), because it serves the IDE
typing session faster: every keystroke after the first, decoding, and the start. Measured through /v1/completions
with the bundled SmolLM2-135M-Instruct (issue 26; loadtests/bench_cpu_engines.py runs the comparison):
  2-core AVX2 machine (the issue's table): codeserve on vLLM-CPU fp32 compiled: cold TTFT 4,276 ms, warm TTFT p50
  287 ms, 16.0 tok/s, 8 streams 77.5 tok/s, 243 s to ready; llama.cpp's server on the shipped Q4_1 GGUF, 2 threads,
  8 slots: 9,218 ms, 89 ms, 73.4 tok/s, 94.9 tok/s, ~1 s to ready (the Q8_0 it now runs prefills ~1.6x faster).
  2-core AVX-512 machine with native bf16 (one run, 2026-12-02, after the chunked tokenizer and aiohttp stream):
  codeserve on llama.cpp (Q8_0) 3,752 ms, 49 ms, 70.7 tok/s, 26.8 tok/s, 3 s to ready; codeserve on vLLM-CPU (bf16,
  compiled) 1,785 ms, 101 ms, 27.2 tok/s, 45.3 tok/s, 106 s. vLLM-CPU keeps the cold prefill (1.4-2.7x faster;
  about half of llama.cpp's at 1.6k tokens is attention) and many concurrent cold prompts.
"""

from __future__ import annotations

from typing import Literal

from ..settings import Settings
from . import memory
from .catalog import ModelEntry
from .cpu_binding import cpu_binding
from .hardware import Inventory
from .launch import Launch
from .plan import MemoryBreakdown, Option, Rejection

CpuEngine = Literal["vllm", "llamacpp"]

MEASURED = ("llama.cpp's server (llama-server): measured faster for IDE typing with the bundled model on 2 cores: warm "
            "typing TTFT p50 89 ms vs vLLM-CPU's 287 ms (AVX2) and 49 vs 101 ms (AVX-512 bf16), decode 2-4x, ready "
            "in seconds vs minutes; vLLM-CPU prefills a cold 1.6k-token prompt 1.4-2.7x faster; "
            "CODESERVE_ENGINE=vllm runs vLLM-CPU instead")
# llama.cpp's KV cache is F16 unless told otherwise (common/common.h cache_type_k/v = GGML_TYPE_F16).
LLAMACPP_KV_BYTES = 2
# llama-server's physical batch (-ub, default 512, common/common.h n_ubatch): its compute buffer holds one
# ubatch's activations, in F32.
LLAMACPP_UBATCH_TOKENS = 512
# Outside weights, KV and compute buffer: the llama-server process (~60 MB of code and buffers) and codeserve's own
# Python process with the tokenizer and HTTP stack (no torch, no vLLM): measured RSS ~450 MB here; rounded up.
LLAMACPP_RUNTIME_BYTES = 768 * 1024**2


def cpu_weights(entry: ModelEntry) -> str:
    """The GGUF type llama-server runs `entry` in. The bundled model ships as Q4_1, which llama.cpp's CPU backend has
    no fast prompt kernel for: it is converted once to Q8_0 (engine/gguf_convert.py has the measurements: a cold
    prefill ~1.5-2x faster, typing and decoding as fast or faster, on AVX2 and AVX-512 builds alike; it keeps what the
    file holds). A GGUF the user names is served as stored: its type is their choice, and a model larger than the
    bundled one decodes as fast as memory moves its weights, which a wider type slows."""
    gguf = entry.gguf
    assert gguf is not None
    return "Q8_0" if entry.bundled is not None and gguf.weights_type == "Q4_1" else gguf.weights_type


def is_gguf_only(entry: ModelEntry) -> bool:
    """A model pinned as a .gguf file: llama.cpp alone can load it (vLLM 0.33 has no GGUF loader in core)."""
    return entry.gguf is not None and entry.repo == entry.gguf.path


def cpu_engine(entry: ModelEntry, settings: Settings, inventory: Inventory) -> tuple[CpuEngine | None, str]:
    """The engine a CPU plan runs for `entry` and why; None: the setting asks for one that cannot run it."""
    if settings.engine == "vllm":
        if is_gguf_only(entry):
            return None, (f"CODESERVE_ENGINE=vllm cannot load {entry.repo}: vLLM has no GGUF loader; set "
                          f"CODESERVE_ENGINE=auto to serve it with llama.cpp")
        return "vllm", "vLLM-CPU: CODESERVE_ENGINE=vllm"
    if entry.gguf is None:
        why = (f"llama.cpp's server loads GGUF files and {entry.id} has none (CODESERVE_MODEL=path/to/model.gguf "
               f"serves one)")
        return (None, f"CODESERVE_ENGINE=llamacpp: {why}") if settings.engine == "llamacpp" else (
            "vllm", f"vLLM-CPU: {why}")
    if inventory.llama_server is None:
        why = ("no llama-server binary was found (CODESERVE_LLAMA_SERVER, beside the Python interpreter, or on PATH; "
               "scripts/setup.sh builds it)")
        if settings.engine == "llamacpp" or is_gguf_only(entry):
            return None, f"{entry.repo if is_gguf_only(entry) else 'CODESERVE_ENGINE=llamacpp'} needs llama.cpp: {why}"
        return "vllm", f"vLLM-CPU: {why}; llama.cpp's server measured faster for IDE typing"
    return "llamacpp", MEASURED


GGUF_ON_GPU = "a GGUF file runs on llama.cpp's server, which codeserve runs on the CPU only (GPUs run vLLM)"


def add_llamacpp(entry: ModelEntry, settings: Settings, inventory: Inventory, max_len: int,
                 options: list[Option], rejected: list[Rejection]) -> bool:
    """Add the plan's llama.cpp option for `entry` to `options` (or why there is none to `rejected`); whether the
    other engines' options follow it (as the choice where llama.cpp is not, or as its fallbacks)."""
    if inventory.gpus:
        if is_gguf_only(entry):
            rejected.append(Rejection(entry.id, None, None, GGUF_ON_GPU))
        return not is_gguf_only(entry)
    budget = int(inventory.cpu.ram_total_bytes * settings.cpu_memory_fraction)
    engine, why = cpu_engine(entry, settings, inventory)
    if engine == "vllm":
        return True
    if engine is None:
        result: Option | str = why
    elif settings.precision != "auto":  # the file's own quantization is the precision
        result = ("llama.cpp serves the GGUF's weights as stored; CODESERVE_PRECISION=auto serves them, "
                  "CODESERVE_ENGINE=vllm another precision")
    else:
        result = llamacpp_option(entry, settings, inventory, max_len, budget)
    if isinstance(result, Option):
        options.append(result)
    else:
        rejected.append(Rejection(entry.id, "gguf" if engine else None, 1, result))
    return engine is not None and not (settings.engine == "llamacpp" or is_gguf_only(entry))


def note(option: Option, settings: Settings, inventory: Inventory) -> str | None:
    """The plan's word on the engine a CPU option runs, and why."""
    if option.device != "cpu" or option.launch.engine == "transformers":
        return None
    if option.launch.engine == "llamacpp":
        stored = option.model.gguf.weights_type if option.model.gguf else None
        if option.launch.weights_type in (None, stored):
            return MEASURED
        return (f"{MEASURED}; weights: the shipped {stored} converted once to {option.launch.weights_type} "
                f"(llama.cpp has no fast prompt kernel for {stored})")
    engine, why = cpu_engine(option.model, settings, inventory)
    return why if engine == "vllm" else "vLLM-CPU: llama.cpp's option did not fit or was refused (see rejected)"


def llamacpp_option(entry: ModelEntry, settings: Settings, inventory: Inventory, max_len: int,
                    budget: int) -> Option | str:
    """The option of serving `entry`'s GGUF with llama-server: one slot per concurrent sequence, each with the whole
    target context (its own KV cells), weights as the file stores them; or why it cannot."""
    gguf = entry.gguf
    assert gguf is not None
    if settings.kv_cache_dtype != "auto":
        return f"CODESERVE_KV_CACHE_DTYPE={settings.kv_cache_dtype} is vLLM's; llama.cpp's cache here is F16"
    if settings.lora_adapters:
        return "llama.cpp serves LoRA adapters as GGUF files only; CODESERVE_LORA_ADAPTERS are PEFT directories"
    if settings.tensor_parallel_size not in ("auto", 1):
        return "tensor parallel needs GPUs"
    if max_len > gguf.context_length:
        return (f"a context of {max_len} tokens is larger than the {gguf.context_length} {gguf.path} was trained for "
                f"({gguf.architecture}.context_length); lower CODESERVE_MAX_MODEL_LEN")
    arch = entry.architecture
    slots = settings.max_concurrent_sequences
    kv_per_token = memory.kv_bytes_per_token(arch, LLAMACPP_KV_BYTES)
    weights_type = cpu_weights(entry)
    weights = gguf.bytes_as[weights_type] if weights_type != gguf.weights_type else gguf.tensor_bytes
    breakdown = MemoryBreakdown(
        weights=weights, kv_cache=kv_per_token * max_len * slots,
        activation=memory.activation_peak_bytes(arch, LLAMACPP_UBATCH_TOKENS, slots),
        overhead=LLAMACPP_RUNTIME_BYTES, budget=budget)
    if breakdown.headroom < 0:
        return (f"llama.cpp needs {breakdown.total / memory.GIB:.1f} GiB (weights {weights_type} "
                f"{breakdown.weights / memory.GIB:.2f}, KV for {slots} slots x {max_len} tokens "
                f"{breakdown.kv_cache / memory.GIB:.2f}); the budget is {budget / memory.GIB:.1f} GiB "
                f"(CODESERVE_CPU_MEMORY_FRACTION, CODESERVE_MAX_CONCURRENT_SEQUENCES, CODESERVE_MAX_MODEL_LEN)")
    launch = Launch(
        model=gguf.path, served_name=entry.id, device="cpu", dtype="float32", online_quantization=None,
        tensor_parallel_size=1, pipeline_parallel_size=1, max_model_len=max_len, max_num_seqs=slots,
        max_num_batched_tokens=LLAMACPP_UBATCH_TOKENS, prefix_caching=True, kv_block_tokens=None,
        kv_cache_dtype="auto", gpu_memory_fraction=None, kv_cache_bytes=breakdown.kv_cache, eager=True,
        trust_remote_code=False, cpu_cores=cpu_binding(inventory.cpu, settings.cpu_cores), engine="llamacpp",
        weights_type=weights_type)
    return Option(entry, "gguf", 1, "cpu", "cpu", breakdown, kv_per_token, max_len * slots, None, 1, launch)
