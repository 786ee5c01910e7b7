"""Byte math against official counts and published measurements."""

from __future__ import annotations

import pytest

from server.planner.catalog import Architecture, Catalog
from server.planner.memory import (
    GIB,
    activation_peak_bytes,
    awq_bits_per_weight,
    kv_bytes_per_token,
    param_counts,
    weight_bytes,
)

# Reference models from the measurements, as their config.json describe them.
LLAMA_31_8B = Architecture(layers=32, hidden_size=4096, attention_heads=32, kv_heads=8, intermediate_size=14336,
                           vocab_size=128256, tied_embeddings=False, max_position_embeddings=131072, mlp="gated")
MISTRAL_7B = Architecture(layers=32, hidden_size=4096, attention_heads=32, kv_heads=8, intermediate_size=14336,
                          vocab_size=32000, tied_embeddings=False, max_position_embeddings=32768, mlp="gated")


def test_every_catalog_entry_matches_its_official_count(catalog: Catalog) -> None:
    off = {}
    for entry in catalog.models:
        computed = param_counts(entry.architecture).total
        error = abs(computed - entry.params) / entry.params
        if error > 0.01:
            off[entry.id] = f"{computed / 1e9:.3f}B vs {entry.params / 1e9:.3f}B"
    assert off == {}


def test_llama31_8b_weights_match_vllm_issue_10517() -> None:
    # "Loading model weights took 14.99 GB" (vLLM reports GiB), bf16.
    assert weight_bytes(LLAMA_31_8B, "bf16") / GIB == pytest.approx(14.99, rel=0.03)


def test_llama31_8b_kv_per_token_matches_vllm_issue_10517() -> None:
    assert kv_bytes_per_token(LLAMA_31_8B, 2) == 131072  # "131 KB/token"


def test_llama31_8b_activation_peak_matches_vllm_issue_10517() -> None:
    # 2.07 GiB peak at max_model_len 20k (profile run over 20k batched tokens); we may be high, not low.
    peak = activation_peak_bytes(LLAMA_31_8B, 20_000, max_num_seqs=256) / GIB
    assert 2.07 <= peak <= 2.07 * 1.10


def test_starcoder2_15b_bf16_footprint_matches_model_card(catalog: Catalog) -> None:
    # Model card: "Memory footprint: 32251.33 MB" in bfloat16.
    entry = catalog.get("starcoder2-15b")
    assert entry is not None
    assert weight_bytes(entry.architecture, "bf16") / 1e6 == pytest.approx(32251.33, rel=0.03)


# AutoAWQ's README benchmark (batch 1, 64 prefill + 64 decode tokens): VRAM in GiB. Its fused modules
# preallocate the KV cache for max_seq_len 2048, which the total includes.
AUTOAWQ_VRAM_GIB = [
    ("mistral-7b", 4.35),
    ("codellama-34b", 19.05),
    ("deepseek-coder-33b", 18.92),
]


@pytest.mark.parametrize(("model", "measured_gib"), AUTOAWQ_VRAM_GIB, ids=[m for m, _ in AUTOAWQ_VRAM_GIB])
def test_awq_total_matches_autoawq_benchmark(catalog: Catalog, model: str, measured_gib: float) -> None:
    arch = MISTRAL_7B if model == "mistral-7b" else catalog.get(model).architecture  # type: ignore[union-attr]
    total = (weight_bytes(arch, "awq") + kv_bytes_per_token(arch, 2) * 2048
             + activation_peak_bytes(arch, 64, max_num_seqs=1))
    assert total / GIB == pytest.approx(measured_gib, rel=0.10)


def test_awq_bits_per_weight() -> None:
    assert awq_bits_per_weight(128) == pytest.approx(4.156, abs=0.001)
    assert awq_bits_per_weight(64) == pytest.approx(4.3125)


def test_awq_keeps_embeddings_16_bit(catalog: Catalog) -> None:
    arch = catalog.get("qwen2.5-coder-7b").architecture  # type: ignore[union-attr]
    counts = param_counts(arch)
    expected = counts.embedding * 2 + counts.linear * 4.15625 / 8
    assert weight_bytes(arch, "awq") == pytest.approx(expected, rel=1e-6)


def test_fp8_is_about_half_of_bf16(catalog: Catalog) -> None:
    arch = catalog.get("qwen2.5-coder-32b").architecture  # type: ignore[union-attr]
    ratio = weight_bytes(arch, "fp8") / weight_bytes(arch, "bf16")
    assert 0.5 < ratio < 0.56  # linear halves; 16-bit embeddings and per-channel scales stay


@pytest.mark.parametrize(("model", "tp", "kv_bytes"), [
    ("qwen2.5-coder-7b", 1, 2 * 28 * 4 * 128 * 2),
    ("qwen2.5-coder-7b", 2, 2 * 28 * 2 * 128 * 2),
    ("qwen2.5-coder-7b", 8, 2 * 28 * 1 * 128 * 2),  # 4 KV heads over 8 GPUs: replicated, 1 per GPU
    ("codellama-34b", 4, 2 * 48 * 2 * 128 * 2),
    ("starcoder-15b", 1, 2 * 40 * 1 * 128 * 2),  # multi-query attention
    ("deepseek-coder-v2", 8, 60 * (512 + 64) * 2),  # MLA latent, the same on every GPU
], ids=lambda v: str(v))
def test_kv_bytes_per_token(catalog: Catalog, model: str, tp: int, kv_bytes: int) -> None:
    assert kv_bytes_per_token(catalog.get(model).architecture, 2, tp) == kv_bytes  # type: ignore[union-attr]


def test_fp8_kv_cache_halves_kv(catalog: Catalog) -> None:
    arch = catalog.get("qwen2.5-coder-14b").architecture  # type: ignore[union-attr]
    assert kv_bytes_per_token(arch, 1) * 2 == kv_bytes_per_token(arch, 2)


@pytest.mark.parametrize("tp", [2, 4, 8])
def test_tensor_parallel_splits_weights(catalog: Catalog, tp: int) -> None:
    arch = catalog.get("codellama-70b").architecture  # type: ignore[union-attr]
    whole = weight_bytes(arch, "bf16")
    per_gpu = weight_bytes(arch, "bf16", tp)
    # 8 KV heads: split evenly up to 8 GPUs, so the ranks add up to the whole model.
    assert per_gpu * tp == pytest.approx(whole, rel=1e-3)


def test_replicated_kv_heads_cost_extra_weights(catalog: Catalog) -> None:
    arch = catalog.get("qwen2.5-coder-7b").architecture  # type: ignore[union-attr]  # 4 KV heads
    assert weight_bytes(arch, "bf16", 8) * 8 > weight_bytes(arch, "bf16") * 1.005


def test_activation_grows_with_batched_tokens(catalog: Catalog) -> None:
    arch = catalog.get("qwen2.5-coder-7b").architecture  # type: ignore[union-attr]
    small = activation_peak_bytes(arch, 2048, 256)
    large = activation_peak_bytes(arch, 16384, 256)
    assert large > 4 * small


@pytest.mark.parametrize(("layers", "pp", "split"), [
    (32, 2, [16, 16]), (61, 2, [31, 30]), (60, 4, [15, 15, 15, 15]), (62, 4, [15, 16, 16, 15]),
    (63, 4, [16, 16, 16, 15]),
])
def test_pipeline_stages_split_layers_as_vllm_does(layers: int, pp: int, split: list[int]) -> None:
    # vllm/distributed/utils.py get_pp_indices: the remainder goes to the stages before the last, backwards
    from server.planner.memory import pp_stage_layers

    assert pp_stage_layers(layers, pp) == split


def test_pipeline_parallel_holds_a_stage_per_rank(catalog: Catalog) -> None:
    entry = catalog.get("deepseek-coder-v2")
    assert entry is not None
    arch = entry.architecture
    whole, staged = weight_bytes(arch, "bf16", tp=8), weight_bytes(arch, "bf16", tp=8, pp=2)
    assert staged == pytest.approx(whole / 2, rel=0.03)  # the heavier stage: half the layers plus one vocab matrix
    assert staged > whole / 2
    assert kv_bytes_per_token(arch, 2, tp=8, pp=2) == kv_bytes_per_token(arch, 2, tp=8) // 2  # 60 layers: 30 each
    # a tied embedding is held twice under PP: the first stage embeds, the last projects
    tied = catalog.get("qwen2.5-coder-1.5b")
    assert tied is not None and tied.architecture.tied_embeddings
    vocab = tied.architecture.vocab_size * tied.architecture.hidden_size
    assert param_counts(tied.architecture, pp=2).embedding == vocab


@pytest.mark.parametrize(("model_id", "self_layers", "cross_layers", "kv_heads", "head_dim"), [
    ("codet5p-220m", 12, 12, 12, 64),  # T5: every decoder layer cross-attends
    ("codet5p-2b", 32, 1, 32, 80),  # CodeT5+ 2B: the last decoder layer only (modeling_codet5p.py CodeT5pBlock)
    ("codet5p-16b", 34, 1, 24, 256),
])
def test_encoder_decoder_kv_holds_its_cross_attention_layers(catalog: Catalog, model_id: str, self_layers: int,
                                                              cross_layers: int, kv_heads: int, head_dim: int) -> None:
    entry = catalog.get(model_id)
    assert entry is not None
    assert kv_bytes_per_token(entry.architecture, 2) == 2 * (self_layers + cross_layers) * kv_heads * head_dim * 2
