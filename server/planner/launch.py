"""What the plan asks an engine to run, in engine-neutral terms.

Each engine adapter (server/engine/) turns a Launch into its own arguments; nothing here names an
engine's flags or environment variables.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

ComputeDtype = Literal["float32", "bfloat16", "float16"]


@dataclass(frozen=True)
class PromptLookup:
    """Speculative decoding by prompt lookup (n-gram): where the last `min..max_match_tokens` tokens appeared
    earlier in the sequence, the tokens that followed them there are proposed as the next `draft_tokens` and
    verified in one forward pass. No draft model: code completions copy from their prompt a lot."""

    draft_tokens: int
    min_match_tokens: int
    max_match_tokens: int


@dataclass(frozen=True)
class Launch:
    model: str  # weights: a Hugging Face repo id or a local directory
    served_name: str  # the name clients ask for (the catalog id)
    device: Literal["cuda", "cpu"]
    dtype: ComputeDtype  # activations (and weights, when not quantized)
    # Quantization the engine applies while loading 16-bit weights. A quantized checkpoint (AWQ,
    # compressed-tensors) declares its own method in config.json, so it needs none here.
    online_quantization: Literal["fp8"] | None
    tensor_parallel_size: int
    pipeline_parallel_size: int  # one stage per node: stages > 1 span nodes (the engine's multi-node executor)
    max_model_len: int
    max_num_seqs: int  # sequences batched at once
    max_num_batched_tokens: int  # prefill chunk; bounds the activation peak
    prefix_caching: bool
    # Tokens per KV-cache block: the prefix cache reuses whole blocks only, so a keystroke re-prefills on
    # average half a block plus what follows the cursor. None = the engine's default.
    kv_block_tokens: int | None
    kv_cache_dtype: Literal["auto", "fp8"]
    gpu_memory_fraction: float | None  # GPU: share of each GPU the engine may take (weights + KV + rest)
    kv_cache_bytes: int | None  # CPU: the KV cache is sized explicitly, not from a memory share
    eager: bool  # no graph capture / compilation (faster start, slower steady state)
    trust_remote_code: bool
    # CPU: the CPU ids the compute threads bind to (planner/cpu_binding.py); None = the engine's own choice
    cpu_cores: tuple[int, ...] | None = None
    speculation: PromptLookup | None = None
    # GPU: the device indices (of those the process sees) this engine runs on; None = all of them. Set where
    # several engines share a machine (planner/fleet.py).
    devices: tuple[int, ...] | None = None
    engine: Literal["vllm", "transformers", "llamacpp"] = "vllm"  # which adapter runs it (candidates.engine_for,
    # planner/engine_choice.py on the CPU)
    # LoRA adapters served over the model as extra names: (name, directory); their largest rank; slots held at once
    lora_adapters: tuple[tuple[str, str], ...] = ()
    max_lora_rank: int = 0
    max_loras: int = 0
    # llama.cpp: the GGUF file's quantization type (Q4_1, F16, ...): `model` is then the GGUF file
    weights_type: str | None = None
    # a directory with the model's Transformers tokenizer, where the weights file holds it in a form only the engine
    # reads (GGUF): codeserve tokenizes and applies chat templates itself (serve.py fills it)
    tokenizer: str | None = None
    transformers_version: str | None = None  # what the checkpoint's own code needs (ModelEntry.transformers_version)
    # A retrieval role's engine pools instead of generating: "embed" (vectors) or "score" (a cross-encoder's relevance
    # of a query-document pair), with the model's pooling ("cls", "mean", "last") and what its config needs overridden
    pooling: Literal["embed", "score"] | None = None
    pooling_type: Literal["cls", "mean", "last"] | None = None
    pooling_normalize: bool = True  # vectors L2-normalised (the model was trained so: sentence-transformers' Normalize)
    hf_overrides: tuple[tuple[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON's shapes: tuples as lists (so a plan read back from JSON compares equal)."""
        return dict(_plain(asdict(self)))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value
