"""Expected speed of an option before anything loads: decode time per token and time to first token, from the
GPU's datasheet bandwidth and 16-bit tensor throughput, the bytes each GPU reads, and one efficiency factor per
engine. Pure arithmetic, like memory.py.

The model is a roofline: a decode step reads every weight a token uses and the sequence's KV cache once
(memory-bound at the small batches of interactive use); a prefill is bound by its FLOPs or, for short prompts,
by that same weight read. Pipeline stages run one after another for a single sequence, so they add up; tensor
parallel divides both bytes and FLOPs (its all-reduces are not modelled: optimistic by a few percent at tp > 1).
For mixture-of-experts models a single sequence reads only its active experts (optimistic under load, when
concurrent tokens touch more experts).

Calibration, one factor per engine, fitted on vLLM's own benchmark client (benchmark_serving.py) as published by
Lambda (github.com/LambdaLabsML/vllm-benchmark, results/prompt_10, vLLM 0.6, 10 prompts at once, 1,585 prompt
tokens in all): Mistral-7B-Instruct-v0.3 bf16 on 1 x H100-80GB-SXM, mean TTFT 61.3 ms and mean time per output
token 7.48 ms (the issue's "TTFT 61 ms, 7.5 ms per output token"). Bandwidth x 0.58 reproduces the 7.48 ms; the
same factor on compute gives a TTFT of 48 ms (-22%). Checked, not fitted: the same model on 1 x A100-80GB-SXM
(12.16 ms per token, TTFT 124.6 ms) and Llama-3.1-8B-FP8 on 1 x H100 (6.02 ms per token); see
tests/planner/test_latency.py for the tolerances.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .catalog import Architecture

# Share of datasheet bandwidth and 16-bit tensor throughput an engine achieves at interactive batch sizes.
ENGINE_EFFICIENCY = {"vllm": 0.58}
# The prompt the plan quotes TTFT for: an IDE completion (prefix, suffix and a few neighbouring snippets).
TYPICAL_PROMPT_TOKENS = 2048


@dataclass(frozen=True)
class Device:
    """What the estimate needs from one GPU of the group."""

    name: str
    bandwidth_gb_s: float
    tflops_16bit: float


@dataclass(frozen=True)
class Workload:
    """The bytes and FLOPs of one option, per GPU where it says so."""

    arch: Architecture
    weight_bytes_per_gpu: int  # the most loaded rank
    kv_bytes_per_token_per_gpu: int
    active_fraction: float  # of the weights one token reads (1.0 for dense models)
    active_params: int  # parameters one token multiplies with (for FLOPs)
    tensor_parallel_size: int
    pipeline_parallel_size: int = 1


@dataclass(frozen=True)
class LatencyEstimate:
    decode_ms_per_token: float  # one stream, its context at `prompt_tokens`
    ttft_ms: float  # a prompt of `prompt_tokens`, alone: prefill plus the first decode step
    prefill_tokens_per_s: float
    prompt_tokens: int
    efficiency: float
    basis: str  # which datasheet figures it rests on

    def to_dict(self) -> dict[str, Any]:
        return {key: round(value, 2) if isinstance(value, float) else value for key, value in asdict(self).items()}


def _read_s(work: Workload, device: Device, context_tokens: int, efficiency: float) -> float:
    """Seconds to read what one decode step needs, summed over the pipeline stages."""
    per_gpu = work.weight_bytes_per_gpu * work.active_fraction + work.kv_bytes_per_token_per_gpu * context_tokens
    return per_gpu * work.pipeline_parallel_size / (device.bandwidth_gb_s * 1e9 * efficiency)


def prefill_flops(work: Workload, tokens: int) -> float:
    """Matrix multiplies (2 FLOPs per parameter and token) plus causal attention (QK^T and AV over half the
    square)."""
    arch = work.arch
    attention_dim = arch.attention_heads * (arch.mla.v_head_dim if arch.mla else arch.head_dim_resolved)
    attention = 2 * arch.layers * tokens * tokens * attention_dim  # 2 matmuls x 2 FLOPs x 1/2 (causal)
    return 2.0 * work.active_params * tokens + attention


def decode_ms(work: Workload, device: Device, context_tokens: int, engine: str = "vllm") -> float:
    return 1000 * _read_s(work, device, context_tokens, ENGINE_EFFICIENCY[engine])


def prefill_ms(work: Workload, device: Device, tokens: int, engine: str = "vllm") -> float:
    efficiency = ENGINE_EFFICIENCY[engine]
    compute_s = prefill_flops(work, tokens) / (device.tflops_16bit * 1e12 * work.tensor_parallel_size * efficiency)
    return 1000 * max(compute_s, _read_s(work, device, tokens, efficiency))


def estimate(work: Workload, device: Device, prompt_tokens: int = TYPICAL_PROMPT_TOKENS,
             engine: str = "vllm") -> LatencyEstimate:
    efficiency = ENGINE_EFFICIENCY[engine]
    decode = decode_ms(work, device, prompt_tokens, engine)
    prefill = prefill_ms(work, device, prompt_tokens, engine)
    return LatencyEstimate(
        decode_ms_per_token=decode, ttft_ms=prefill + decode, prefill_tokens_per_s=prompt_tokens / prefill * 1000,
        prompt_tokens=prompt_tokens, efficiency=efficiency,
        basis=f"{device.name}: {device.bandwidth_gb_s:g} GB/s, {device.tflops_16bit:g} TFLOPS x {efficiency} "
              f"({engine})")
