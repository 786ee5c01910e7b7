"""A model outside the catalog, described from its own files: the architecture numbers, context and quantization
from config.json, the FIM format from the tokenizer's special tokens, the role from its chat template. Pure:
dicts and strings in, a catalog entry out (model_source.py reads the files). Each fact says where it came from.

Field names follow each family's config class in Transformers (Llama/Qwen2/Mistral/Starcoder2, GPT-2/BigCode
`n_*`, CodeGen, GPT-NeoX, XGLM, T5, DeepSeek-V2's MoE and MLA fields).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from ..fim.templates import TEMPLATES
from .catalog import Architecture, Encoder, Mla, ModelEntry, Moe, Prequantized, Retrieval, VllmSupport
from .memory import WeightPrecision, param_counts


class DeriveError(ValueError):
    """config.json lacks what the planner needs; the message names the file and the field."""


# Families whose MLP has a gate (three matrices): the SwiGLU/GeGLU models.
GATED_TYPES = {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2",
               "deepseek", "deepseek_v2", "deepseek_v3", "phi3", "chatglm", "glm", "glm4", "internlm2", "olmo",
               "olmo2", "cohere", "granite", "stablelm", "baichuan", "yi", "gpt_oss"}
# Learned absolute position tables (GPT-2 lineage).
LEARNED_POSITION_TYPES = {"gpt2", "gpt_bigcode", "gpt_neo", "opt", "codegeex"}
# Architectures vLLM 0.32 refuses, measured on tiny random models (also with model_impl="transformers").
VLLM_REFUSES = {
    "CodeGenForCausalLM": "CodeGenForCausalLM is not in vLLM's model registry",
    "XGLMForCausalLM": "XGLMForCausalLM is not in vLLM's model registry",
    "T5ForConditionalGeneration": "encoder-decoder T5 is not in vLLM's model registry",
    "CodeT5pEncoderDecoderModel": "CodeT5+'s encoder-decoder (remote code) is not in vLLM's model registry",
    "EncoderDecoderModel": "Transformers' composite encoder-decoder is not in vLLM's model registry",
}
# Composite encoder-decoders whose decoder cross-attends in its last layer only (modeling_codet5p.py CodeT5pBlock).
LAST_LAYER_CROSS_ATTENTION_TYPES = {"codet5p"}
# Remote code known to need an older Transformers (configs/models.yaml says why), by model_type.
REMOTE_CODE_TRANSFORMERS = {"codet5p": "<4.50"}
DEFAULT_RELATIVE_CONTEXT = 512  # T5-style relative positions have no table: the length it was trained at


@dataclass(frozen=True)
class Derived:
    entry: ModelEntry
    precision: WeightPrecision | None  # the checkpoint's own quantization (None: 16-bit weights)
    facts: tuple[str, ...]  # what was derived and from where, for `codeserve plan`


def _first(config: dict[str, Any], *names: str) -> Any:
    for name in names:
        if config.get(name) is not None:
            return config[name]
    return None


def _need(config: dict[str, Any], what: str, *names: str) -> int:
    value = _first(config, *names)
    if not isinstance(value, int) or value <= 0:
        raise DeriveError(f"config.json has no {what} (looked for {', '.join(names)})")
    return value


def architecture(config: dict[str, Any]) -> Architecture:
    """The planner's numbers from a config.json (as Transformers' config class completes it with defaults)."""
    try:
        if is_composite(config):
            return _composite(config)
        return _single(config)
    except ValidationError as exc:  # numbers present but inconsistent (heads vs KV heads, ...)
        reasons = "; ".join(str(error["msg"]).removeprefix("Value error, ") for error in exc.errors())
        raise DeriveError(f"config.json's numbers do not fit together: {reasons}") from exc


def is_composite(config: dict[str, Any]) -> bool:
    """An encoder and a decoder with a config each (Transformers' EncoderDecoderModel, CodeT5+ 2B-16B)."""
    return isinstance(config.get("encoder"), dict) and isinstance(config.get("decoder"), dict)


def _single(config: dict[str, Any]) -> Architecture:
    model_type = str(config.get("model_type", ""))
    hidden = _need(config, "hidden size", "hidden_size", "n_embd", "d_model")
    heads = _need(config, "attention head count", "num_attention_heads", "n_head", "num_heads", "attention_heads")
    encoder_layers = 0
    if config.get("is_encoder_decoder"):
        encoder_layers = _need(config, "encoder layer count", "num_layers", "encoder_layers")
        layers = _need(config, "decoder layer count", "num_decoder_layers", "decoder_layers", "num_layers")
    else:
        layers = _need(config, "layer count", "num_hidden_layers", "n_layer", "num_layers")
    kv_heads = 1 if config.get("multi_query") else (_first(config, "num_key_value_heads", "multi_query_group_num",
                                                           "num_kv_heads") or heads)
    head_dim = _first(config, "head_dim", "d_kv")
    intermediate = _first(config, "intermediate_size", "n_inner", "d_ff", "ffn_dim", "ffn_hidden_size")
    feed_forward = str(config.get("feed_forward_proj", ""))
    mlp: Literal["gated", "plain"] = "gated" if model_type in GATED_TYPES or feed_forward.startswith("gated") else \
        "plain"
    positions = _first(config, "max_position_embeddings", "n_positions", "seq_length", "n_ctx")
    moe = mla = None
    experts = _first(config, "n_routed_experts", "num_experts", "num_local_experts")
    if experts:
        moe = Moe(experts=experts, active_experts=_need(config, "experts per token", "num_experts_per_tok"),
                  shared_experts=config.get("n_shared_experts") or 0,
                  expert_intermediate_size=_need(config, "expert size", "moe_intermediate_size", "intermediate_size"),
                  dense_layers=config.get("first_k_dense_replace") or 0)
    if config.get("kv_lora_rank"):
        mla = Mla(q_lora_rank=config.get("q_lora_rank"), kv_lora_rank=config["kv_lora_rank"],
                  qk_nope_head_dim=config["qk_nope_head_dim"], qk_rope_head_dim=config["qk_rope_head_dim"],
                  v_head_dim=config["v_head_dim"])
        head_dim = config["qk_nope_head_dim"]
    return Architecture(
        layers=layers, hidden_size=hidden, attention_heads=heads, kv_heads=kv_heads,
        head_dim=head_dim if head_dim and head_dim != hidden // heads else None,
        intermediate_size=intermediate or 4 * hidden,  # GPT-2 lineage: n_inner None means 4 x hidden
        vocab_size=_need(config, "vocabulary size", "vocab_size", "padded_vocab_size"),
        tied_embeddings=bool(config.get("tie_word_embeddings", True)),
        max_position_embeddings=positions or DEFAULT_RELATIVE_CONTEXT, mlp=mlp,
        learned_positions=model_type in LEARNED_POSITION_TYPES, encoder_layers=encoder_layers, moe=moe, mla=mla)


def _composite(config: dict[str, Any]) -> Architecture:
    """An encoder and a decoder, each with a config of its own (Transformers' EncoderDecoderModel, CodeT5+ 2B-16B):
    the decoder's numbers, with the encoder's layers and width beside them."""
    parts: dict[str, Architecture] = {}
    for part in ("encoder", "decoder"):
        try:
            parts[part] = architecture(config[part])
        except DeriveError as exc:
            raise DeriveError(f"{exc}, in its {part!r} part") from exc
    encoder = parts["encoder"]
    cross = 1 if config.get("model_type") in LAST_LAYER_CROSS_ATTENTION_TYPES else parts["decoder"].layers
    return Architecture.model_validate({
        **parts["decoder"].model_dump(), "cross_attention_layers": cross,
        "encoder": Encoder(layers=encoder.layers, hidden_size=encoder.hidden_size,
                           attention_heads=encoder.attention_heads, intermediate_size=encoder.intermediate_size)})


def quantization(config: dict[str, Any]) -> tuple[WeightPrecision | None, int | None, str]:
    """(precision, group size, how it was read) from config.json's quantization_config."""
    quant = config.get("quantization_config")
    if not isinstance(quant, dict):
        return None, None, ""
    method = str(quant.get("quant_method", "")).lower()
    if method in ("awq", "gptq") and quant.get("bits", 4) == 4:
        group = quant.get("group_size") or 128
        return "awq", group if group > 0 else None, f"{method} 4-bit, group {group} (planned as W4A16)"
    if method == "fp8":
        return "fp8", None, "fp8"
    if method == "mxfp4":  # gpt-oss: MXFP4 experts, the rest bf16 (vLLM's GptOssMxfp4Config)
        return "mxfp4", None, "mxfp4 experts (the rest 16-bit)"
    if method == "compressed-tensors":
        for group in (quant.get("config_groups") or {}).values():
            weights = (group or {}).get("weights") or {}
            bits, kind = weights.get("num_bits"), weights.get("type")
            if bits == 4 and kind == "int":
                size = weights.get("group_size") or 128
                return "awq", size, f"compressed-tensors W4A16, group {size}"
            if bits == 8 and kind == "float":
                return "fp8", None, "compressed-tensors FP8"
    raise DeriveError(f"config.json's quantization_config ({method or 'no quant_method'}) is none the planner "
                      f"knows: AWQ/GPTQ 4-bit, FP8, compressed-tensors W4A16 or FP8, MXFP4")


def fim_format(special_tokens: set[str]) -> str | None:
    """The FIM template whose markers are all special tokens of this tokenizer, or None."""
    for template in TEMPLATES.values():
        if set(template.markers) <= special_tokens:
            return template.id
    return None


def model_id(name: str) -> str:
    """A served name from a directory or repo name: lower case, [a-z0-9._-]."""
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-") or "model"


# A chat template that writes tool calls in a format vLLM has a parser for: the parser's name (vllm/tool_parsers/).
# Hermes' <tool_call> tags are Qwen2.5's, Hermes' and many fine-tunes'; others get the generic prompt.
TOOL_CALL_FORMATS = (("<tool_call>", "hermes"),)


def tool_parser(chat_template: str | None) -> str | None:
    return next((parser for tag, parser in TOOL_CALL_FORMATS if chat_template and tag in chat_template), None)


@dataclass(frozen=True)
class SentenceTransformers:
    """What a sentence-transformers directory says beside config.json: 1_Pooling/config.json's mode, whether
    modules.json ends in Normalize, sentence_bert_config.json's max_seq_length (each None where absent)."""

    pooling: Literal["cls", "mean", "last"] | None = None
    normalized: bool = False
    max_seq_length: int | None = None


# Backbones without a head: what sentence-transformers and vLLM's embedding runner pool (vLLM's registry names).
ENCODER_ARCHITECTURES = {"BertModel", "RobertaModel", "XLMRobertaModel", "NomicBertModel", "ModernBertModel",
                         "GteModel", "NewModel", "JinaBertModel", "DistilBertModel"}


def retrieval_kind(config: dict[str, Any], sentence: SentenceTransformers | None
                   ) -> tuple[Literal["embedding", "reranker"], Retrieval] | None:
    """An embedding model or a cross-encoder reranker, recognised from its config (and sentence-transformers files):
    a *ForSequenceClassification with one label scores pairs; a sentence-transformers directory or a headless encoder
    makes vectors. None: a generative model."""
    architecture_name = str((config.get("architectures") or [""])[0])
    labels = config.get("num_labels") or len(config.get("id2label") or {}) or 2
    hidden = _first(config, "hidden_size", "n_embd", "d_model")
    positions = _first(config, "max_position_embeddings", "n_positions") or DEFAULT_RELATIVE_CONTEXT
    if architecture_name.endswith("ForSequenceClassification") and labels == 1:
        # the classifier reads the first token of an encoder, the last of a decoder (vLLM's pooling defaults)
        pooling = "last" if config.get("is_decoder") or "CausalLM" in str(config.get("model_type")) else "cls"
        return "reranker", Retrieval.model_validate({"pooling": pooling, "max_input_tokens": positions})
    if sentence is None and architecture_name not in ENCODER_ARCHITECTURES:
        return None
    decoder = architecture_name.endswith("ForCausalLM")
    given = sentence.pooling if sentence else None
    width = int(hidden) if isinstance(hidden, int) else None
    if width is None:
        raise DeriveError("config.json has no hidden size (looked for hidden_size, n_embd, d_model): the width")
    limit = min(positions, sentence.max_seq_length) if sentence and sentence.max_seq_length else positions
    return "embedding", Retrieval.model_validate({
        "pooling": given or ("last" if decoder else "cls"), "dimensions": width, "max_input_tokens": limit,
        "normalized": bool(sentence and sentence.normalized)})


def derive(name: str, location: str, config: dict[str, Any], special_tokens: set[str],
           chat_template: str | None, vllm_refusal: str | None = None,
           sentence: SentenceTransformers | None = None) -> Derived:
    """A catalog entry for the model at `location` (a directory or a repo id), served as `name`; `vllm_refusal`:
    why the installed vLLM cannot serve it (engine/support.py), beyond the measured list; `sentence`: its
    sentence-transformers files, if any."""
    arch = architecture(config)
    architectures = config.get("architectures") or ["unknown"]
    precision, group, quant_how = quantization(config)
    fim = fim_format(special_tokens)
    role: Literal["base", "instruct", "embedding", "reranker"] = "instruct" if chat_template else "base"
    kind = retrieval_kind(config, sentence)
    retrieval = None
    if kind is not None:
        role, retrieval = kind
        fim = None
    refused = VLLM_REFUSES.get(architectures[0]) or vllm_refusal
    prequantized: dict[str, Any] = {}
    if precision == "awq":
        prequantized = {"awq": location, "awq_group_size": group or 128}
    elif precision == "fp8":
        prequantized = {"fp8": location}
    entry = ModelEntry(
        id=model_id(name), repo=location, family=str(config.get("model_type") or "unknown"), role=role,
        architecture=arch, params=param_counts(arch).total, params_source="config.json",
        context_length=arch.max_position_embeddings, license="unknown", fim=fim, tool_parser=tool_parser(chat_template),
        humaneval=None, code_benchmark=None, manual_reason=None, auto=True,
        weights="mxfp4" if precision == "mxfp4" else "16-bit",
        superseded_by=None, bundled=None, retrieval=retrieval, gguf=None,
        prequantized=Prequantized.model_validate(prequantized),
        vllm=VllmSupport(status="unsupported" if refused else "native", architecture=architectures[0],
                         reason=refused),
        trust_remote_code=bool(config.get("auto_map")),
        transformers_version=REMOTE_CODE_TRANSFORMERS.get(str(config.get("model_type"))) if config.get("auto_map")
        else None)
    moe = f", MoE {arch.moe.experts} experts ({arch.moe.active_experts} active)" if arch.moe else ""
    facts = (
        f"architecture  {architectures[0]} from config.json: {arch.layers} layers, hidden {arch.hidden_size}, "
        f"{arch.attention_heads} heads / {arch.kv_heads} KV{moe}{', MLA' if arch.mla else ''}"
        f"{', encoder-decoder' if arch.encoder_decoder else ''}, {entry.params / 1e9:.2f}B parameters",
        f"context       {arch.max_position_embeddings} tokens (config.json)",
        f"weights       {quant_how or '16-bit'} (config.json quantization_config)",
        f"FIM           {fim or 'none'} (the tokenizer's special tokens)",
        f"role          {role} ({_role_source(role, chat_template, retrieval)})",
    )
    return Derived(entry, precision, facts)


def _role_source(role: str, chat_template: str | None, retrieval: Retrieval | None) -> str:
    if retrieval is not None:
        what = f"{retrieval.dimensions}-dimensional vectors" if retrieval.dimensions else "one relevance score a pair"
        return f"{what}, {retrieval.pooling} pooling, {retrieval.max_input_tokens} tokens an input: config.json"
    return "a chat template" if chat_template else "no chat template"
