"""A Launch rendered as vLLM's arguments: AsyncEngineArgs keywords and the equivalent `vllm serve` command
line. Pure: imports nothing from vLLM, so the CLI, the load tests and the tests can render a GPU plan on a
machine without vLLM's GPU build.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from ..planner.launch import Launch


def engine_args(launch: Launch, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """AsyncEngineArgs keywords; `overrides` (CODESERVE_ENGINE_ARGS) are vLLM names merged over them."""
    args: dict[str, Any] = {
        "model": launch.model,
        "served_model_name": [launch.served_name],
        "dtype": launch.dtype,
        "tensor_parallel_size": launch.tensor_parallel_size,
        "pipeline_parallel_size": launch.pipeline_parallel_size,
        "max_model_len": launch.max_model_len,
        "max_num_seqs": launch.max_num_seqs,
        "max_num_batched_tokens": launch.max_num_batched_tokens,
        "enable_prefix_caching": launch.prefix_caching,
        "kv_cache_dtype": launch.kv_cache_dtype,
        "enforce_eager": launch.eager,
        "trust_remote_code": launch.trust_remote_code,
        # Structured output (response_format, forced tool calls) through xgrammar, the library engine/structured.py
        # checks grammars with, and JSON without optional whitespace: a small model otherwise spends its token
        # budget on indentation the grammar allows (measured: SmolLM2-135M ran out of 96 tokens in the spaces of
        # a forced tool call). vLLM takes the whitespace switch only engine-wide (StructuredOutputsConfig).
        "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
    }
    if launch.pooling is not None:  # nothing is generated: no structured output to configure
        args = {k: v for k, v in args.items() if k != "structured_outputs_config"} | _pooling_args(launch)
    if launch.lora_adapters:  # the adapters themselves come with each request (LoRARequest)
        args |= {"enable_lora": True, "max_loras": launch.max_loras, "max_lora_rank": launch.max_lora_rank}
    if launch.pipeline_parallel_size > 1:
        # Stages on other nodes: vLLM's multi-node executor is Ray (docs, "Distributed inference and serving":
        # TP inside a node x PP across nodes, workers joined to the head's Ray cluster).
        args["distributed_executor_backend"] = "ray"
    if launch.online_quantization is not None:
        args["quantization"] = launch.online_quantization
    if launch.gpu_memory_fraction is not None:
        args["gpu_memory_utilization"] = launch.gpu_memory_fraction
    if launch.kv_cache_bytes is not None:
        # vLLM's CPU worker takes an explicit KV cache size (VLLM_CPU_KVCACHE_SPACE is its legacy, whole-GiB
        # form of the same setting: vllm/platforms/cpu.py, 0.32).
        args["kv_cache_memory_bytes"] = launch.kv_cache_bytes
    if launch.kv_block_tokens is not None:
        args["block_size"] = launch.kv_block_tokens
    if launch.speculation is not None:
        args["speculative_config"] = {"method": "ngram",
                                      "num_speculative_tokens": launch.speculation.draft_tokens,
                                      "prompt_lookup_min": launch.speculation.min_match_tokens,
                                      "prompt_lookup_max": launch.speculation.max_match_tokens}
    return {**args, **(overrides or {})}


def _pooling_args(launch: Launch) -> dict[str, Any]:
    """vLLM's pooling runner (vllm/config/model.py, 0.32): `runner="pooling"` with convert "auto", which keeps a
    model that pools already (BertModel, *ForSequenceClassification) and turns a *ForCausalLM into an embedding model
    (Qwen3-Embedding); the pooler (vllm/config/pooler.py PoolerConfig) pools as the model was trained, normalising
    (`use_activation`) where it was. Prefix caching and structured output mean nothing to it."""
    pooler: dict[str, Any] = {"seq_pooling_type": (launch.pooling_type or "cls").upper()}
    if launch.pooling == "embed":
        pooler["use_activation"] = launch.pooling_normalize
    args: dict[str, Any] = {"runner": "pooling", "pooler_config": pooler, "enable_prefix_caching": False}
    if launch.hf_overrides:
        args["hf_overrides"] = dict(launch.hf_overrides)
    return args


def engine_env(launch: Launch, visible: str | None = None) -> dict[str, str]:
    """Environment variables the engine reads at start: vLLM takes its CPU thread binding only from
    VLLM_CPU_OMP_THREADS_BIND (vllm/utils/ompmultiprocessing.py, 0.32), read in its engine process; a GPU engine
    pinned to some devices gets them as CUDA_VISIBLE_DEVICES, mapped through the process's own (`visible`)."""
    if launch.device == "cpu" and launch.cpu_cores:
        return {"VLLM_CPU_OMP_THREADS_BIND": ",".join(str(cpu) for cpu in launch.cpu_cores)}
    if launch.device == "cuda" and launch.devices is not None:
        seen = [item.strip() for item in visible.split(",")] if visible else None
        return {"CUDA_VISIBLE_DEVICES": ",".join(seen[i] if seen else str(i) for i in launch.devices)}
    return {}


def serve_command(args: dict[str, Any], env: dict[str, str]) -> str:
    """The equivalent shell command line: `NAME=value ... vllm serve MODEL --flags`."""
    words = [f"{name}={shlex.quote(value)}" for name, value in env.items()]
    return " ".join([*words, "vllm", "serve", *(shlex.quote(flag) for flag in serve_flags(args))])


def serve_flags(args: dict[str, Any]) -> list[str]:
    """`vllm serve` flags for AsyncEngineArgs keywords: the model positional, then --kebab-case flags.
    Booleans use vLLM's --flag / --no-flag pairs; lists repeat their values; dicts are JSON."""
    flags = [str(args["model"])]
    for key, value in args.items():
        if key == "model" or value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, list | tuple):
            flags += [flag, *(str(v) for v in value)]
        elif isinstance(value, dict):
            flags += [flag, json.dumps(value)]
        else:
            flags += [flag, str(value)]
    return flags
