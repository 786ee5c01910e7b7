"""Deriving a model from its own files: every catalog model rebuilt as the Transformers config its family writes
gives the catalog's bytes; quantization, FIM format and role read from the files."""

from __future__ import annotations

from typing import Any

import pytest

from server.planner.catalog import Catalog, ModelEntry
from server.planner.derive import (
    DeriveError,
    SentenceTransformers,
    architecture,
    derive,
    fim_format,
    model_id,
    quantization,
)
from server.planner.memory import kv_bytes_per_token, param_counts, weight_bytes


def transformers_config(entry: ModelEntry) -> dict[str, Any] | None:
    """The config.json the entry's family writes (Transformers' own config class, defaults filled in), or None
    for families whose config class is remote code (ChatGLM, CodeGeeX)."""
    import transformers

    a = entry.architecture
    kind = entry.vllm.architecture
    common = {"vocab_size": a.vocab_size, "tie_word_embeddings": a.tied_embeddings}
    llama_like = {**common, "hidden_size": a.hidden_size, "intermediate_size": a.intermediate_size,
                  "num_hidden_layers": a.layers, "num_attention_heads": a.attention_heads,
                  "num_key_value_heads": a.kv_heads, "max_position_embeddings": a.max_position_embeddings}
    gpt = {**common, "n_layer": a.layers, "n_embd": a.hidden_size, "n_head": a.attention_heads,
           "n_inner": a.intermediate_size, "n_positions": a.max_position_embeddings}
    config: Any
    if kind in ("LlamaForCausalLM", "Qwen2ForCausalLM", "Starcoder2ForCausalLM", "MistralForCausalLM"):
        cls = {"LlamaForCausalLM": transformers.LlamaConfig, "Qwen2ForCausalLM": transformers.Qwen2Config,
               "Starcoder2ForCausalLM": transformers.Starcoder2Config,
               "MistralForCausalLM": transformers.MistralConfig}[kind]
        config = cls(**llama_like, **({"head_dim": a.head_dim} if a.head_dim else {}))
    elif kind == "PhiForCausalLM":
        config = transformers.PhiConfig(**llama_like)
    elif kind == "GPTNeoXForCausalLM":
        config = transformers.GPTNeoXConfig(**llama_like)
    elif kind == "GPTBigCodeForCausalLM":
        config = transformers.GPTBigCodeConfig(**gpt, multi_query=a.kv_heads == 1)
    elif kind == "CodeGenForCausalLM":
        config = transformers.CodeGenConfig(**gpt, n_ctx=a.max_position_embeddings)
    elif kind == "XGLMForCausalLM":
        config = transformers.XGLMConfig(**common, num_layers=a.layers, d_model=a.hidden_size,
                                         attention_heads=a.attention_heads, ffn_dim=a.intermediate_size,
                                         max_position_embeddings=a.max_position_embeddings)
    elif kind == "T5ForConditionalGeneration":
        config = transformers.T5Config(**common, num_layers=a.encoder_layers, num_decoder_layers=a.layers,
                                       d_model=a.hidden_size, num_heads=a.attention_heads, d_ff=a.intermediate_size,
                                       d_kv=a.hidden_size // a.attention_heads)
    elif kind == "DeepseekV2ForCausalLM":
        assert a.moe is not None and a.mla is not None
        config = transformers.DeepseekV2Config(
            **llama_like, n_routed_experts=a.moe.experts, num_experts_per_tok=a.moe.active_experts,
            n_shared_experts=a.moe.shared_experts, moe_intermediate_size=a.moe.expert_intermediate_size,
            first_k_dense_replace=a.moe.dense_layers, q_lora_rank=a.mla.q_lora_rank, kv_lora_rank=a.mla.kv_lora_rank,
            qk_nope_head_dim=a.mla.qk_nope_head_dim, qk_rope_head_dim=a.mla.qk_rope_head_dim,
            v_head_dim=a.mla.v_head_dim)
    elif kind == "Qwen3MoeForCausalLM":
        assert a.moe is not None
        config = transformers.Qwen3MoeConfig(**llama_like, head_dim=a.head_dim, num_experts=a.moe.experts,
                                             num_experts_per_tok=a.moe.active_experts,
                                             moe_intermediate_size=a.moe.expert_intermediate_size,
                                             decoder_sparse_step=1, mlp_only_layers=[])
    elif kind == "GptOssForCausalLM":
        assert a.moe is not None
        config = transformers.GptOssConfig(**llama_like, head_dim=a.head_dim, num_local_experts=a.moe.experts,
                                           num_experts_per_tok=a.moe.active_experts)
        config.quantization_config = {"quant_method": "mxfp4"}  # as the authors publish it
    elif kind == "CodeT5pEncoderDecoderModel":
        return codet5p_config(entry)
    else:
        return None
    return {**config.to_dict(), "architectures": [kind]}


def codet5p_config(entry: ModelEntry) -> dict[str, Any]:
    """CodeT5+ 2B-16B's config.json (remote CodeT5pConfig: CodeGen-style "encoder" and "decoder" dicts), as
    Salesforce/codet5p-2b publishes it, with the entry's numbers."""
    a = entry.architecture
    assert a.encoder is not None

    def module(layers: int, hidden: int, heads: int, decoder: bool) -> dict[str, Any]:
        return {"model_type": "codet5p_module", "architectures": ["CodeT5pForCausalLM" if decoder else "CodeT5pModel"],
                "n_layer": layers, "n_embd": hidden, "n_head": heads, "n_inner": None, "n_positions": 2048,
                "n_ctx": 2048, "rotary_dim": 64 if decoder else 32, "vocab_size": a.vocab_size,
                "activation_function": "gelu_new", "add_cross_attention": decoder, "is_decoder": decoder,
                "tie_word_embeddings": False, "cross_attention_hidden_size": None}

    return {"architectures": ["CodeT5pEncoderDecoderModel"], "model_type": "codet5p", "is_encoder_decoder": True,
            "auto_map": {"AutoConfig": "configuration_codet5p.CodeT5pConfig",
                         "AutoModelForSeq2SeqLM": "modeling_codet5p.CodeT5pEncoderDecoderModel"},
            "encoder": module(a.encoder.layers, a.encoder.hidden_size, a.encoder.attention_heads, False),
            "decoder": module(a.layers, a.hidden_size, a.attention_heads, True)}


def _entries(catalog: Catalog) -> list[ModelEntry]:
    return list(catalog.models)


@pytest.fixture(scope="module")
def derivable(catalog: Catalog) -> list[tuple[ModelEntry, dict[str, Any]]]:
    pairs = [(entry, transformers_config(entry)) for entry in catalog.models]
    return [(entry, config) for entry, config in pairs if config is not None]


def test_every_buildable_catalog_config_derives_the_catalogs_bytes(derivable) -> None:
    kinds = {entry.vllm.architecture for entry, _ in derivable}
    assert len(kinds) >= 11 and len(derivable) >= 40  # all but the remote-code families
    wrong = {}
    for entry, config in derivable:
        derived = architecture(config)
        for tp in (1, 2):
            if (param_counts(derived, tp), kv_bytes_per_token(derived, 2, tp)) != (
                    param_counts(entry.architecture, tp), kv_bytes_per_token(entry.architecture, 2, tp)):
                wrong[entry.id] = (param_counts(derived, tp), param_counts(entry.architecture, tp))
        for precision in ("bf16", "fp8", "awq", "mxfp4"):
            if weight_bytes(derived, precision) != weight_bytes(entry.architecture, precision):  # type: ignore[arg-type]
                wrong[entry.id] = precision
    assert wrong == {}


def test_derived_entry_plans_like_the_catalog_one(derivable) -> None:
    entry, config = next((e, c) for e, c in derivable if e.id == "qwen2.5-coder-7b")
    derived = derive("My-Finetune", "/models/my-finetune", config, {"<|fim_prefix|>", "<|fim_suffix|>",
                                                                    "<|fim_middle|>"}, None)
    assert derived.entry.id == "my-finetune" and derived.entry.repo == "/models/my-finetune"
    assert (derived.entry.fim, derived.entry.role, derived.precision) == ("qwen", "base", None)
    assert derived.entry.vllm.status == "native" and derived.entry.vllm.architecture == "Qwen2ForCausalLM"
    assert derived.entry.params == param_counts(entry.architecture).total
    assert any("config.json" in fact for fact in derived.facts)


@pytest.mark.parametrize(("kind", "status"), [("CodeGenForCausalLM", "unsupported"), ("XGLMForCausalLM", "unsupported"),
                                              ("T5ForConditionalGeneration", "unsupported"),
                                              ("CodeT5pEncoderDecoderModel", "unsupported"),
                                              ("GPTBigCodeForCausalLM", "native")])
def test_architectures_vllm_refuses_are_marked(derivable, kind: str, status: str) -> None:
    _, config = next((e, c) for e, c in derivable if e.vllm.architecture == kind)
    assert derive("m", "/m", config, set(), None).entry.vllm.status == status


@pytest.mark.parametrize(("quant", "expected"), [
    ({"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True}, ("awq", 128)),
    ({"quant_method": "gptq", "bits": 4, "group_size": 64}, ("awq", 64)),
    ({"quant_method": "fp8", "activation_scheme": "dynamic"}, ("fp8", None)),
    ({"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn", "lm_head"]}, ("mxfp4", None)),
    ({"quant_method": "compressed-tensors", "config_groups": {"group_0": {"weights": {
        "num_bits": 4, "type": "int", "group_size": 32, "strategy": "group"}}}}, ("awq", 32)),
    ({"quant_method": "compressed-tensors", "config_groups": {"group_0": {"weights": {
        "num_bits": 8, "type": "float", "strategy": "channel"}}}}, ("fp8", None)),
])
def test_quantization_config_gives_precision_and_group(quant: dict[str, Any], expected: tuple[str, int | None]) -> None:
    assert quantization({"quantization_config": quant})[:2] == expected


def test_an_unknown_quantization_is_refused_naming_it() -> None:
    with pytest.raises(DeriveError, match="bitsandbytes"):
        quantization({"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}})


def test_a_quantized_checkpoint_is_its_own_published_weights(derivable) -> None:
    _, config = next((e, c) for e, c in derivable if e.id == "smollm2-135m-instruct")
    quantized = {**config, "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 64}}
    derived = derive("smol-awq", "/q/smol-awq", quantized, set(), "{{ messages }}")
    assert derived.precision == "awq" and derived.entry.role == "instruct"
    assert (derived.entry.prequantized.awq, derived.entry.prequantized.awq_group_size) == ("/q/smol-awq", 64)


@pytest.mark.parametrize(("tokens", "fim"), [
    ({"<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<file_sep>"}, "starcoder"),
    ({"<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"}, "deepseek"),
    ({"<|mask:0|>", "<|mask:1|>"}, "incoder"),
    ({"<mask_1>", "<sep>"}, "codegen2"),
    ({"<fim_prefix>", "<fim_suffix>"}, None),  # incomplete: not a format
    (set(), None),
])
def test_fim_format_from_special_tokens(tokens: set[str], fim: str | None) -> None:
    assert fim_format(tokens) == fim


def test_a_gpt_oss_directory_is_its_own_mxfp4_weights(derivable) -> None:
    entry, config = next((e, c) for e, c in derivable if e.id == "gpt-oss-20b")
    derived = derive("my-gpt-oss", "/m/my-gpt-oss", config, set(), "{{ messages }}")
    assert (derived.precision, derived.entry.weights, derived.entry.role) == ("mxfp4", "mxfp4", "instruct")
    assert derived.entry.architecture == entry.architecture  # gpt_oss is gated: experts are SwiGLU
    assert any("mxfp4 experts" in fact for fact in derived.facts)


def test_codet5p_derives_its_encoder_cross_attention_and_remote_code(derivable) -> None:
    entry, config = next((e, c) for e, c in derivable if e.id == "codet5p-2b")
    derived = derive("codet5p-2b-ft", "/m/codet5p-2b-ft", config, set(), None).entry
    assert derived.architecture == entry.architecture  # encoder 20 x 1024, cross-attention in the last layer only
    assert derived.trust_remote_code and derived.vllm.status == "unsupported" and derived.fim is None
    assert derived.transformers_version == entry.transformers_version == "<4.50"
    assert derived.params == pytest.approx(entry.params, rel=0.001)  # biases and norms are all it leaves out


def test_a_composite_encoder_decoder_counts_every_matrix_of_the_real_model(tmp_path, catalog: Catalog) -> None:
    """Transformers' EncoderDecoderModel (CodeT5+'s base class) with a narrower CodeGen encoder and a GPT-2 decoder
    cross-attending in every layer: the count is exactly its weight matrices and embeddings."""
    import json

    from transformers import AutoModelForSeq2SeqLM

    from server.prepare import prepare_bundled
    from tests.conftest import make_settings
    from tests.tiny_models import build

    tokenizer = prepare_bundled(make_settings().cache_dir, catalog.bundled())
    path = build("encoder_decoder", tmp_path / "composite", tokenizer)
    derived = architecture(json.loads((path / "config.json").read_text()))
    assert derived.encoder is not None and derived.encoder.hidden_size < derived.hidden_size
    assert derived.cross_attention_layers == derived.layers
    model = AutoModelForSeq2SeqLM.from_pretrained(path)
    assert param_counts(derived).total == sum(p.numel() for p in model.parameters() if p.dim() >= 2)


def test_numbers_that_do_not_fit_together_are_a_derive_error_naming_them() -> None:
    config = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 14, "num_key_value_heads": 3,
              "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 100}
    with pytest.raises(DeriveError, match="attention_heads 14 is not a multiple of kv_heads 3"):
        architecture(config)


def test_a_config_without_the_numbers_names_what_is_missing() -> None:
    with pytest.raises(DeriveError, match="hidden size"):
        architecture({"model_type": "mystery", "num_hidden_layers": 2})
    with pytest.raises(DeriveError, match=r"layer count.*'encoder' part"):
        architecture({"encoder": {"n_embd": 64, "n_head": 2}, "decoder": {"n_embd": 64, "n_head": 2, "n_layer": 2,
                                                                        "vocab_size": 10}})


@pytest.mark.parametrize(("name", "expected"), [("My Fine-Tune v2", "my-fine-tune-v2"),
                                                ("org/Model_7B", "org-model_7b"), ("???", "model")])
def test_model_ids(name: str, expected: str) -> None:
    assert model_id(name) == expected


# --- retrieval models recognised from their config (and sentence-transformers files) ---------------------------------
BERT = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 384, "num_attention_heads": 12,
        "num_hidden_layers": 6, "intermediate_size": 1536, "vocab_size": 30522, "max_position_embeddings": 512}
QWEN3 = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 1024, "num_attention_heads": 16,
         "num_key_value_heads": 8, "head_dim": 128, "num_hidden_layers": 28, "intermediate_size": 3072,
         "vocab_size": 151669, "max_position_embeddings": 32768, "tie_word_embeddings": True}


@pytest.mark.parametrize(("config", "sentence", "role", "pooling", "dimensions", "tokens"), [
    (BERT, None, "embedding", "cls", 384, 512),
    (BERT, SentenceTransformers("mean", True, 256), "embedding", "mean", 384, 256),
    (QWEN3, SentenceTransformers("last", True, 8192), "embedding", "last", 1024, 8192),
    ({**BERT, "architectures": ["XLMRobertaForSequenceClassification"], "model_type": "xlm-roberta",
      "id2label": {"0": "LABEL_0"}}, None, "reranker", "cls", None, 512),
], ids=["headless-encoder", "sentence-transformers-mean", "decoder-embedding", "cross-encoder"])
def test_retrieval_models_are_recognised(config: dict[str, Any], sentence: SentenceTransformers | None, role: str,
                                         pooling: str, dimensions: int | None, tokens: int) -> None:
    entry = derive("m", "/m", config, set(), None, sentence=sentence).entry
    assert entry.role == role and entry.retrieval is not None and entry.fim is None
    assert (entry.retrieval.pooling, entry.retrieval.dimensions, entry.retrieval.max_input_tokens) == \
        (pooling, dimensions, tokens)


@pytest.mark.parametrize("config", [
    QWEN3,  # a causal LM without sentence-transformers files generates
    {**BERT, "architectures": ["BertForSequenceClassification"], "id2label": {"0": "neg", "1": "pos"}},  # 2 labels
], ids=["causal-lm", "two-label-classifier"])
def test_generative_and_multi_label_models_are_not_retrieval_models(config: dict[str, Any]) -> None:
    entry = derive("m", "/m", config, set(), None).entry
    assert entry.retrieval is None and entry.role in ("base", "instruct")
