"""Which (model, precision, tensor-parallel degree) combinations are valid on a device, and why not.

Pure checks, each returning None when fine or the reason it is not; choose.py composes them.
"""

from __future__ import annotations

from typing import Literal

from ..settings import DEFAULT_MAX_MODEL_LEN, Settings
from .catalog import Architecture, ModelEntry
from .hardware import Inventory
from .memory import GIB, Mxfp4Kernel, WeightPrecision, active_params
from .plan import Rejection

TP_DEGREES = (1, 2, 4, 8)
AWQ_GROUP_SIZES = (128, 64, 32)  # largest first: fewer scales, same kernels (vLLM awq_marlin / WNA16)

# Minimum compute capability per precision, from vLLM's quantization docs (supported hardware table):
# bf16 needs Ampere (8.0); fp8 runs W8A8 on Ada/Hopper (8.9+) and weight-only through Marlin from 8.0;
# AWQ (awq / awq_marlin / compressed-tensors W4A16) from Turing (7.5).
MIN_CAPABILITY: dict[WeightPrecision, tuple[int, int]] = {
    "fp32": (7, 0),
    "bf16": (8, 0),
    "fp16": (7, 0),
    "fp8": (8, 0),
    "awq": (7, 5),
    # vllm/model_executor/layers/quantization/mxfp4.py Mxfp4Config.get_min_capability: 80; bf16 activations only
    "mxfp4": (8, 0),
}
# highest fidelity first; a GGUF file (llama.cpp, planner/engine_choice.py) is ranked first where the CPU plan chose it
PRECISION_ORDER: tuple[WeightPrecision, ...] = ("gguf", "fp32", "bf16", "fp16", "fp8", "awq", "mxfp4")
# Hopper runs gpt-oss's experts on the OpenAI Triton kernels, other GPUs on Marlin or FlashInfer (vLLM's
# fused_moe/oracle/mxfp4.py _get_priority_backends_for_gpt_oss; experts/gpt_oss_triton_kernels_moe.py admits SM90 and
# Blackwell, where FlashInfer's TRT-LLM kernels rank first): the padding differs (memory.MXFP4_PADDING).
TRITON_MXFP4_CAPABILITIES = ((9, 0),)


def precision_ladder(capability: tuple[int, int] | None, cpu_bf16: bool = True) -> list[WeightPrecision]:
    """Precisions to try on a GPU of this compute capability, best first (None = CPU). Rungs the GPU
    cannot run stay in the ladder so that the plan records why they were rejected."""
    if capability is None:
        # vLLM's CPU backend: bf16 where the CPU computes it natively; without AVX512_BF16/AMX it is
        # emulated and prefill runs ~4x slower than fp32 (measured here: SmolLM2-135M, 713-token prompt,
        # 2.28 s vs 0.59 s to first token on an AVX2-only EPYC), so fp32 comes first there.
        return ["bf16"] if cpu_bf16 else ["fp32", "bf16"]
    sixteen: WeightPrecision = "bf16" if capability >= MIN_CAPABILITY["bf16"] else "fp16"
    return [sixteen, "fp8", "awq"]


def entry_ladder(entry: ModelEntry, capability: tuple[int, int] | None, cpu_bf16: bool = True) -> list[WeightPrecision]:
    """The precisions to try for this entry: its published format alone when the authors publish no 16-bit weights."""
    if entry.weights == "mxfp4":
        return ["mxfp4"]
    return precision_ladder(capability, cpu_bf16)


def weights_problem(entry: ModelEntry, precision: WeightPrecision) -> str | None:
    """A quantized-only checkpoint serves in its own format only; MXFP4 exists only where the authors publish it."""
    if entry.weights == "mxfp4" and precision != "mxfp4":
        return (f"{entry.repo} is published in MXFP4 only (no 16-bit weights to load or quantize from); "
                f"CODESERVE_PRECISION=mxfp4 or auto")
    if precision == "mxfp4" and entry.weights != "mxfp4":
        return f"no MXFP4 checkpoint of {entry.id} is published (MXFP4 is planned only for checkpoints published in it)"
    return None


def mxfp4_kernel(capability: tuple[int, int] | None) -> Mxfp4Kernel:
    return "triton" if capability in TRITON_MXFP4_CAPABILITIES else "marlin"


def precision_problem(precision: WeightPrecision, capability: tuple[int, int] | None, gpu_name: str,
                      cpu_avx512: bool = True) -> str | None:
    if capability is None:
        if precision == "awq" and not cpu_avx512:
            return ("awq on the CPU needs AVX-512: vLLM's CPU 4-bit kernel (cpu_gemm_wna16) is built only into "
                    "its AVX-512 library; this CPU has AVX2 at most")
        if precision == "mxfp4":
            return "mxfp4 is planned on GPUs only"
        return None if precision in ("fp32", "bf16", "awq") else f"{precision} is not supported by vLLM's CPU backend"
    if precision == "fp32":
        return "fp32 weights are for CPU serving; on a GPU use bf16/fp16"
    needed = MIN_CAPABILITY[precision]
    if capability < needed:
        have = f"{capability[0]}.{capability[1]}"
        return f"{precision} needs compute capability {needed[0]}.{needed[1]}+; {gpu_name} has {have}"
    return None


def tp_problem(arch: Architecture, tp: int) -> str | None:
    """vLLM's sharding rules: heads split evenly; KV heads split or replicated evenly; MLP split evenly."""
    if arch.attention_heads % tp:
        return f"{arch.attention_heads} attention heads do not split over {tp} GPUs"
    kv = arch.kv_heads
    if arch.mla is None and ((tp >= kv and tp % kv) or (tp < kv and kv % tp)):
        return f"{kv} KV heads can be neither split nor replicated evenly over {tp} GPUs"
    if _dense_mlp(arch) and arch.intermediate_size % tp:
        return f"intermediate size {arch.intermediate_size} does not split over {tp} GPUs"
    if arch.moe is not None and arch.moe.expert_intermediate_size % tp:
        return f"expert intermediate size {arch.moe.expert_intermediate_size} does not split over {tp} GPUs"
    return None


def _dense_mlp(arch: Architecture) -> bool:
    """Whether any layer has a dense MLP: mixture-of-experts configs such as Qwen3-MoE's still carry an
    intermediate_size that no layer uses (mlp_only_layers empty, decoder_sparse_step 1)."""
    return arch.moe is None or arch.moe.dense_layers > 0


def fp8_block_problem(entry: ModelEntry, tp: int) -> str | None:
    """A published block-FP8 checkpoint needs every shard's output rows in whole blocks: vLLM refuses otherwise
    ("The output_size of gate's and up's weight = 320 is not divisible by weight quantization block_n = 128", the
    error Qwen3-Coder-480B-A35B-Instruct-FP8 gives at tp=8; its README: "With --tp 8 Loading failure is expected")."""
    block = entry.prequantized.fp8_block_size
    if not (entry.prequantized.fp8 and block):
        return None
    arch = entry.architecture
    rows = [arch.moe.expert_intermediate_size // tp] if arch.moe is not None else []
    rows += [arch.intermediate_size // tp] if _dense_mlp(arch) else []
    bad = [r for r in rows if r % block]
    if bad:
        return (f"the published FP8 checkpoint's {block}x{block} blocks do not split over {tp} GPUs ({bad[0]} rows per "
                f"GPU); fewer GPUs per copy (CODESERVE_TENSOR_PARALLEL_SIZE) or another precision")
    return None


def pp_problem(arch: Architecture, pp: int, engine: str = "vllm") -> str | None:
    """Every pipeline stage needs at least one layer; encoder-decoder models are not pipelined by vLLM."""
    if pp == 1:
        return None
    if arch.encoder_decoder and engine == "vllm":
        return "vLLM does not pipeline encoder-decoder models"
    if arch.layers < pp:
        return f"{arch.layers} layers do not fill {pp} pipeline stages"
    return None


def quantized_in_features(arch: Architecture, tp: int) -> list[int]:
    """Input features of every quantized linear layer on one rank (what a group must divide)."""
    o_proj_in = arch.attention_heads * (arch.mla.v_head_dim if arch.mla else arch.head_dim_resolved)
    features = [arch.hidden_size, o_proj_in // tp, *([arch.intermediate_size // tp] if _dense_mlp(arch) else [])]
    if arch.moe is not None:
        features.append(arch.moe.expert_intermediate_size // tp)
    return features


def awq_group_size(arch: Architecture, tp: int) -> int | None:
    """Largest AWQ group size dividing every quantized layer's per-rank input features, or None."""
    features = quantized_in_features(arch, tp)
    for group in AWQ_GROUP_SIZES:
        if all(f % group == 0 for f in features):
            return group
    return None


def engine_for(entry: ModelEntry) -> Literal["vllm", "transformers"]:
    """vLLM wherever it runs the architecture; Transformers' own generate() for the ones it refuses."""
    return "transformers" if entry.vllm.status == "unsupported" else "vllm"


def engine_reason(entry: ModelEntry) -> str | None:
    if engine_for(entry) == "transformers":
        needs = f"; its own code needs transformers{entry.transformers_version}" if entry.transformers_version else ""
        return (f"vLLM cannot serve {entry.vllm.architecture} ({entry.vllm.reason}): the Transformers engine serves "
                f"it (16-bit weights, layers spread over GPUs where one is too small, dynamic batching, a KV cache per "
                f"sequence){needs}")
    return None


# The Transformers engine: 16-bit (or fp32) weights, one GPU (no tensor parallel), no quantized kernels.
TRANSFORMERS_PRECISIONS: tuple[WeightPrecision, ...] = ("fp32", "bf16", "fp16")


def engine_problem(entry: ModelEntry, precision: WeightPrecision, tp: int, pp: int = 1,
                   lora: bool = False) -> str | None:
    if engine_for(entry) != "transformers":
        return None
    if lora:
        return f"the Transformers engine ({entry.vllm.architecture}) serves no LoRA adapters"
    if precision not in TRANSFORMERS_PRECISIONS:
        return f"the Transformers engine ({entry.vllm.architecture}) serves 16-bit weights only, not {precision}"
    if tp > 1:
        return (f"the Transformers engine ({entry.vllm.architecture}) has no tensor parallel: it spreads layers over "
                f"GPUs (device_map) instead")
    return None


def effective_params(entry: ModelEntry) -> float:
    """Size used to rank models: the parameter count, or for mixture-of-experts the geometric mean of
    total and active parameters (the usual dense-equivalent rule of thumb for MoE quality)."""
    arch = entry.architecture
    if arch.moe is None:
        return float(entry.params)
    return float((entry.params * active_params(arch)) ** 0.5)


def no_fit_message(inventory: Inventory, settings: Settings, rejected: list[Rejection]) -> str:
    if inventory.gpus:
        have = ", ".join(f"{g.name} ({g.total_bytes / GIB:.1f} GiB)" for g in inventory.gpus)
    else:
        have = f"CPU only, {inventory.cpu.ram_total_bytes / GIB:.1f} GiB RAM"
    # candidate-level reasons (a precision / TP that was tried) say more than model-level exclusions
    ranked = sorted(rejected, key=lambda r: r.precision is None)
    reasons = "; ".join(f"{r.model} {r.precision or ''} tp={r.tensor_parallel_size or '-'}: {r.reason}"
                        for r in ranked[:6])
    more = f" (+{len(rejected) - 6} more, see `codeserve plan --all`)" if len(rejected) > 6 else ""
    return (f"no model fits {have} with max_model_len={settings.max_model_len or DEFAULT_MAX_MODEL_LEN} x "
            f"{settings.max_concurrent_sequences} sequences at gpu_memory_utilization="
            f"{settings.gpu_memory_utilization}. {reasons}{more}. Lower CODESERVE_MAX_MODEL_LEN or "
            f"CODESERVE_MAX_CONCURRENT_SEQUENCES, allow more precisions (CODESERVE_PRECISION=auto), "
            f"or widen CODESERVE_FAMILIES / unpin CODESERVE_MODEL.")
