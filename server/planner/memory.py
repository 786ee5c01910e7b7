"""Pure byte math: parameters, weight bytes per precision, KV cache, activation peak, overhead.

Everything here is a function of an Architecture and a few numbers; nothing reads hardware or settings.
Biases and norm weights are left out of parameter counts: they are under 0.1% of every catalog model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .catalog import Architecture

# gguf: as the file stores it (llama.cpp)
WeightPrecision = Literal["fp32", "bf16", "fp16", "fp8", "awq", "mxfp4", "gguf"]
# vLLM's MXFP4 mixture-of-experts kernel families, by how they pad the expert matrices at load
Mxfp4Kernel = Literal["marlin", "triton"]
KvDtype = Literal["auto", "fp8"]

GIB = 1024**3

# AWQ int4: 4-bit weights plus, per group of `group_size` input weights, one fp16 scale and one
# 4-bit zero point (AutoAWQ GEMM layout) -> 4 + 20/128 = 4.156 bits per weight at group size 128.
AWQ_DEFAULT_GROUP_SIZE = 128
AWQ_SCALE_BITS = 16
AWQ_ZERO_BITS = 4
# FP8 checkpoints keep one fp32 scale per output channel (llm-compressor FP8 "channel" scheme).
FP8_SCALE_BYTES = 4
# MXFP4 (OCP microscaling, the format gpt-oss is published in): 4-bit E2M1 values with one 8-bit E8M0 scale per block
# of 32 -> 4.25 bits per expert weight. Only the experts are MXFP4; attention, router, embeddings and lm_head stay
# bf16 (the checkpoint's quantization_config.modules_to_not_convert).
MXFP4_BLOCK = 32
MXFP4_BITS_PER_WEIGHT = 4 + 8 / MXFP4_BLOCK
# vLLM pads the expert matrices for its kernel when it loads them (vllm/model_executor/layers/fused_moe/oracle/mxfp4.py
# mxfp4_round_up_hidden_size_and_intermediate_size): Marlin (Ampere, Ada; also what FlashInfer's TRT-LLM kernels on
# Blackwell pad to) rounds the hidden size up to 256 and each rank's expert width up to 128; the OpenAI Triton kernels
# (Hopper) round only the expert width, up to 64. gpt-oss's 2880 x 2880 experts grow 9% under Marlin at tp=1, not at
# all under Triton.
MXFP4_PADDING: dict[Mxfp4Kernel, tuple[int, int]] = {"marlin": (256, 128), "triton": (1, 64)}  # (hidden, width)
# vLLM's profile run: per batched token, the gate/up output (2 x I), the activated MLP input (I) and
# ~3 hidden-sized buffers, 2 bytes each. Calibrated on vLLM issue #10517: Llama-3.1-8B, 20k batched
# tokens -> 2.07 GiB peak (this formula gives 2.18 GiB: 5% on the safe side).
ACTIVATION_INTERMEDIATE_BYTES_PER_TOKEN = 6
ACTIVATION_HIDDEN_BYTES_PER_TOKEN = 6
# Logits for the sampler are computed in fp32 for up to max_num_seqs rows.
LOGITS_BYTES = 4
# Non-torch memory (CUDA context, cuBLAS workspaces): 0.35 GiB measured in vLLM issue #10517.
NON_TORCH_BYTES = int(0.35 * GIB)
# NCCL and custom all-reduce buffers under tensor parallel: vLLM allocates ~0.2-0.3 GiB per rank
# (custom_all_reduce.py max_size 8 MiB x graph buffers + NCCL channels); 0.25 GiB budgets for it.
TP_COMMUNICATION_BYTES = int(0.25 * GIB)
# CUDA graph capture for the default batch sizes: vLLM logs "Graph capturing finished ... took
# 0.3-0.6 GiB" for 7B-34B models; 0.5 GiB budgets for it. Zero with enforce_eager.
CUDA_GRAPH_BYTES = int(0.5 * GIB)


@dataclass(frozen=True)
class ParamCounts:
    embedding: int  # input embedding + untied lm_head + learned positions: kept 16-bit by AWQ and FP8
    linear: int  # every projection matrix in the transformer blocks: what quantization shrinks
    linear_rows: int  # output channels over all linear layers (one FP8 scale each)
    experts: int = 0  # the part of `linear` in mixture-of-experts experts (what MXFP4 stores in 4 bits)

    @property
    def total(self) -> int:
        return self.embedding + self.linear


@dataclass(frozen=True)
class _Linear:
    """One kind of linear layer: count of parameters and of output rows, and whether TP shards it."""

    params: int
    rows: int
    sharded: bool = True
    expert: bool = False


def _attention(arch: Architecture, tp: int) -> list[_Linear]:
    hidden, heads = arch.hidden_size, arch.attention_heads
    if arch.mla is not None:
        mla = arch.mla
        qk_dim = mla.qk_nope_head_dim + mla.qk_rope_head_dim
        q: list[_Linear]
        if mla.q_lora_rank:
            q = [
                _Linear(hidden * mla.q_lora_rank, mla.q_lora_rank, sharded=False),
                _Linear(mla.q_lora_rank * heads * qk_dim, heads * qk_dim),
            ]
        else:
            q = [_Linear(hidden * heads * qk_dim, heads * qk_dim)]
        latent = mla.kv_lora_rank + mla.qk_rope_head_dim
        return [
            *q,
            _Linear(hidden * latent, latent, sharded=False),  # kv_a_proj_with_mqa is replicated
            _Linear(mla.kv_lora_rank * heads * (mla.qk_nope_head_dim + mla.v_head_dim),
                    heads * (mla.qk_nope_head_dim + mla.v_head_dim)),
            _Linear(heads * mla.v_head_dim * hidden, hidden),
        ]
    head_dim = arch.head_dim_resolved
    # KV heads are replicated when TP exceeds their count: each rank holds at least one.
    kv_heads_total = max(arch.kv_heads, tp)
    return [
        _Linear(hidden * heads * head_dim, heads * head_dim),
        _Linear(2 * hidden * kv_heads_total * head_dim, 2 * kv_heads_total * head_dim),
        _Linear(heads * head_dim * hidden, hidden),
    ]


def _mlp(arch: Architecture, intermediate: int) -> _Linear:
    hidden = arch.hidden_size
    if arch.mlp == "gated":
        return _Linear(3 * hidden * intermediate, 2 * intermediate + hidden)
    return _Linear(2 * hidden * intermediate, intermediate + hidden)


def _encoder_architecture(arch: Architecture) -> Architecture:
    """A separate encoder's layers as an architecture of their own (multi-head attention, the decoder's MLP kind)."""
    assert arch.encoder is not None
    enc = arch.encoder
    return Architecture.model_validate({
        "layers": enc.layers, "hidden_size": enc.hidden_size, "attention_heads": enc.attention_heads,
        "kv_heads": enc.attention_heads, "intermediate_size": enc.intermediate_size, "vocab_size": arch.vocab_size,
        "tied_embeddings": True, "max_position_embeddings": arch.max_position_embeddings, "mlp": arch.mlp})


def _layer_linears(arch: Architecture, tp: int) -> list[tuple[int, list[_Linear]]]:
    """(how many layers, their linears) groups covering the whole model, in model order."""
    attention = _attention(arch, tp)
    dense = [*attention, _mlp(arch, arch.intermediate_size)]
    if arch.encoder_decoder:
        encoder: list[tuple[int, list[_Linear]]] = [(arch.encoder_layers, dense)]
        if arch.encoder is not None:
            own = _encoder_architecture(arch)
            own_dense = [*_attention(own, tp), _mlp(own, own.intermediate_size)]
            # the last encoder layer carries the projection to a wider decoder (enc_to_dec_proj)
            projection = [_Linear(own.hidden_size * arch.hidden_size, arch.hidden_size)] if (
                own.hidden_size != arch.hidden_size) else []
            encoder = [(own.layers - 1, own_dense), (1, [*own_dense, *projection])]
        # cross-attention has the shapes of self-attention (at the decoder's width); CodeT5+ has it in its last layer
        cross = arch.cross_attention_layers_resolved
        groups = [*encoder, (arch.layers - cross, dense), (cross, [*attention, *dense])]
        return [(count, linears) for count, linears in groups if count]
    if arch.moe is None:
        return [(arch.layers, dense)]
    moe = arch.moe
    experts = _mlp(arch, moe.expert_intermediate_size)
    expert_count = moe.experts + moe.shared_experts
    moe_layer = [
        *attention,
        _Linear(experts.params * expert_count, experts.rows * expert_count, expert=True),
        _Linear(arch.hidden_size * moe.experts, moe.experts, sharded=False),  # router
    ]
    return [(moe.dense_layers, dense), (arch.layers - moe.dense_layers, moe_layer)]


def pp_stage_layers(layers: int, pp: int) -> list[int]:
    """Decoder layers per pipeline stage as vLLM splits them (vllm/distributed/utils.py get_pp_indices): evenly,
    the remainder going one each to the stages before the last, from the second-to-last backwards."""
    parts = [layers // pp] * pp
    for i in range(2, layers % pp + 2):
        parts[-i] += 1
    return parts


def _per_layer(arch: Architecture, tp: int) -> list[tuple[int, int, int]]:
    """(parameters, output rows, expert parameters) of each layer on one tensor-parallel rank, in model order."""
    layers: list[tuple[int, int, int]] = []
    for count, linears in _layer_linears(arch, tp):
        params = sum(layer.params // (tp if layer.sharded else 1) for layer in linears)
        rows = sum(layer.rows // (tp if layer.sharded else 1) for layer in linears)
        experts = sum(layer.params // (tp if layer.sharded else 1) for layer in linears if layer.expert)
        layers += [(params, rows, experts)] * count
    return layers


def _counts(embedding: int, layers: list[tuple[int, int, int]]) -> ParamCounts:
    return ParamCounts(embedding=embedding, linear=sum(p for p, _, _ in layers),
                       linear_rows=sum(r for _, r, _ in layers), experts=sum(e for _, _, e in layers))


def param_counts(arch: Architecture, tp: int = 1, pp: int = 1) -> ParamCounts:
    """Parameters of the whole model (tp=pp=1) or of one rank: a tensor-parallel shard of the pipeline stage
    that holds the most (stage 0 holds the input embedding, the last stage the lm_head)."""
    vocab = arch.vocab_size * arch.hidden_size
    # tables beside the vocabulary, held where the input is embedded: learned positions; a separate encoder's
    # own token embedding at its width
    inputs = arch.max_position_embeddings * arch.hidden_size if arch.learned_positions else 0
    inputs += arch.vocab_size * arch.encoder.hidden_size if arch.encoder is not None else 0
    layers = _per_layer(arch, tp)
    if pp == 1:
        # vLLM shards the vocabulary across ranks (VocabParallelEmbedding / ParallelLMHead).
        embedding = (vocab * (1 if arch.tied_embeddings else 2) + inputs) // tp
        return _counts(embedding, layers)
    stages: list[ParamCounts] = []
    start = 0
    split = pp_stage_layers(len(layers), pp)
    for index, count in enumerate(split):
        chunk = layers[start:start + count]
        start += count
        # Under pipeline parallel the last stage holds its own lm_head even when tied to the embedding.
        embedding = ((vocab + inputs) if index == 0 else 0) + (vocab if index == pp - 1 else 0)
        stages.append(_counts(embedding // tp, chunk))
    return max(stages, key=lambda stage: stage.total)


def active_params(arch: Architecture) -> int:
    """Parameters used per token (differs from the total only for mixture-of-experts models)."""
    total = param_counts(arch).total
    if arch.moe is None:
        return total
    moe = arch.moe
    idle_experts = moe.experts - moe.active_experts
    return total - (arch.layers - moe.dense_layers) * idle_experts * _mlp(arch, moe.expert_intermediate_size).params


def awq_bits_per_weight(group_size: int = AWQ_DEFAULT_GROUP_SIZE) -> float:
    return 4 + (AWQ_SCALE_BITS + AWQ_ZERO_BITS) / group_size


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def mxfp4_padding(arch: Architecture, tp: int, kernel: Mxfp4Kernel | None) -> float:
    """How much larger vLLM's MXFP4 kernel makes each rank's experts than the checkpoint holds (1.0: the checkpoint's
    own size, kernel None)."""
    if arch.moe is None or kernel is None:
        return 1.0
    hidden_multiple, width_multiple = MXFP4_PADDING[kernel]
    width = arch.moe.expert_intermediate_size // tp
    padded = _round_up(arch.hidden_size, hidden_multiple) * _round_up(width, width_multiple)
    return padded / (arch.hidden_size * width)


def weight_bytes(
    arch: Architecture, precision: WeightPrecision, tp: int = 1, group_size: int = AWQ_DEFAULT_GROUP_SIZE,
    pp: int = 1, mxfp4_kernel: Mxfp4Kernel | None = "marlin",
) -> int:
    """Bytes of weights one rank holds (the most loaded rank under pipeline parallel). MXFP4 experts as the kernel
    pads them (`mxfp4_kernel`; None: as the checkpoint stores them, what a download weighs)."""
    counts = param_counts(arch, tp, pp)
    if precision == "fp32":  # CPU serving on processors without native bf16
        return counts.total * 4
    embedding_bytes = counts.embedding * 2
    if precision in ("bf16", "fp16"):
        return embedding_bytes + counts.linear * 2
    if precision == "fp8":
        return embedding_bytes + counts.linear + counts.linear_rows * FP8_SCALE_BYTES
    if precision == "mxfp4":
        experts = counts.experts * mxfp4_padding(arch, tp, mxfp4_kernel)
        return embedding_bytes + (counts.linear - counts.experts) * 2 + round(experts * MXFP4_BITS_PER_WEIGHT / 8)
    return embedding_bytes + round(counts.linear * awq_bits_per_weight(group_size) / 8)


def kv_dtype_bytes(kv_dtype: KvDtype, weight_precision: WeightPrecision) -> int:
    """vLLM's kv_cache_dtype 'auto' follows the activation dtype (16-bit for every precision here)."""
    if kv_dtype == "fp8":
        return 1
    return 4 if weight_precision == "fp32" else 2  # fp8 and AWQ checkpoints still run 16-bit activations


def kv_bytes_per_token(arch: Architecture, dtype_bytes: int, tp: int = 1, pp: int = 1) -> int:
    """KV cache bytes per token on one rank (of the pipeline stage with the most layers)."""
    layers = max(pp_stage_layers(arch.layers, pp))
    if arch.mla is not None:
        # MLA caches one latent (kv_lora_rank) plus the rope key per layer, replicated on every rank.
        return layers * (arch.mla.kv_lora_rank + arch.mla.qk_rope_head_dim) * dtype_bytes
    kv_heads_per_rank = max(1, arch.kv_heads // tp)
    # encoder-decoder: each cross-attending decoder layer also holds the keys and values of every encoder token
    cross = min(arch.cross_attention_layers_resolved, layers)
    return 2 * (layers + cross) * kv_heads_per_rank * arch.head_dim_resolved * dtype_bytes


def activation_peak_bytes(arch: Architecture, batched_tokens: int, max_num_seqs: int, tp: int = 1) -> int:
    """Peak activation memory of vLLM's profiling forward pass over `batched_tokens` tokens."""
    intermediate = arch.intermediate_size
    if arch.moe is not None:
        moe = arch.moe
        intermediate = max(intermediate, (moe.active_experts + moe.shared_experts) * moe.expert_intermediate_size)
    per_token = (ACTIVATION_INTERMEDIATE_BYTES_PER_TOKEN * intermediate // tp
                 + ACTIVATION_HIDDEN_BYTES_PER_TOKEN * arch.hidden_size)
    logits = min(batched_tokens, max_num_seqs) * arch.vocab_size * LOGITS_BYTES // tp
    return batched_tokens * per_token + logits


def overhead_bytes(tp: int, cuda_graphs: bool, pp: int = 1) -> int:
    """Memory outside weights, KV and activations on one GPU (pipeline stages exchange through NCCL too)."""
    distributed = tp > 1 or pp > 1
    return NON_TORCH_BYTES + (TP_COMMUNICATION_BYTES if distributed else 0) + (CUDA_GRAPH_BYTES if cuda_graphs else 0)


def attention_scores_bytes(arch: Architecture, seq_len: int, sequences: int) -> int:
    """Eager attention's score matrix of one layer (heads x tokens x tokens, fp32 softmax) for a batch prefilled
    at once: what Transformers' generate() holds at its peak where no fused kernel avoids it."""
    return sequences * arch.attention_heads * seq_len * seq_len * 4


def lora_bytes(arch: Architecture, rank: int, slots: int, dtype_bytes: int = 2, tp: int = 1) -> int:
    """What vLLM preallocates for LoRA on one rank: for each slot (max_loras), layer and LoRA-able linear layer (every
    projection, whichever the adapters target), A (rank x in) and B (out x rank) in the activation dtype."""
    head_dim = arch.head_dim_resolved
    hidden, q, kv = arch.hidden_size, arch.attention_heads * head_dim, arch.kv_heads * head_dim
    attention = (hidden + q) + 2 * (hidden + kv) + (q + hidden)
    matrices = 3 if arch.mlp == "gated" else 2
    mlp = matrices * (hidden + arch.intermediate_size)
    return slots * rank * dtype_bytes * arch.layers * (attention + mlp) // tp
