"""Where CODESERVE_MODEL points: a catalog id, a local model directory, or a Hugging Face repo id. A model outside
the catalog is described from its own files (planner/derive.py) and joins the catalog for this plan.

A repo id is fetched (config and tokenizer files only; the engine downloads the weights into the same standard
Hugging Face cache) where the network allows; offline it fails at once, naming HF_HUB_OFFLINE and the directory
alternative.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from .engine import gguf_file
from .engine.support import vllm_refusal
from .planner.adapters import Adapter
from .planner.catalog import Catalog, ModelEntry
from .planner.derive import Derived, DeriveError, SentenceTransformers, derive, is_composite
from .planner.plan import NoFit
from .prepare import PrepareError, bundled_gguf_path
from .settings import Precision, Settings

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# What describing a model needs from a repo: no weights.
DESCRIPTION_FILES = ["config.json", "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json",
                     "modules.json", "1_Pooling/config.json", "sentence_bert_config.json",
                     "chat_template.jinja", "chat_template.json", "generation_config.json"]


# The settings that pin a model, and their variables: each may name a directory or repo to derive.
PINNED = (("model", "CODESERVE_MODEL"), ("chat_model", "CODESERVE_CHAT_MODEL"),
          ("embedding_model", "CODESERVE_EMBEDDING_MODEL"), ("rerank_model", "CODESERVE_RERANK_MODEL"))


@dataclass(frozen=True)
class Pins:
    """What planning uses in place of the user's settings once derived models joined the catalog: the model and chat
    model as the derived entry's location (the resolved directory, or the repo id: the catalog finds it by that),
    the precision as a quantized checkpoint's own. None: the setting as the user gave it."""

    model: str | None = None
    chat_model: str | None = None
    precision: Precision | None = None
    embedding_model: str | None = None
    rerank_model: str | None = None

    def applied(self, settings: Settings) -> Settings:
        """`settings` as the planner takes them: a copy with these pins over the user's values."""
        updates = {k: v for k, v in (("model", self.model), ("chat_model", self.chat_model),
                                     ("precision", self.precision), ("embedding_model", self.embedding_model),
                                     ("rerank_model", self.rerank_model)) if v is not None}
        return settings.model_copy(update=updates) if updates else settings


@dataclass(frozen=True)
class Source:
    catalog: Catalog  # with the derived entries added
    pins: Pins  # the settings that point at them
    facts: tuple[str, ...]  # what was derived and from where ('' for catalog models)
    adapters: tuple[Adapter, ...] = ()  # CODESERVE_LORA_ADAPTERS, read from their adapter_config.json


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise DeriveError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise DeriveError(f"{path} is not a JSON object (found {type(value).__name__})")
    return value


def special_tokens(directory: Path) -> set[str]:
    """Every token the tokenizer files mark special (tokenizer.json's added tokens, tokenizer_config.json's
    added_tokens_decoder and named special tokens)."""
    tokens: set[str] = set()
    for added in _read_json(directory / "tokenizer.json").get("added_tokens") or []:
        if isinstance(added, dict) and added.get("special"):
            tokens.add(str(added.get("content")))
    config = _read_json(directory / "tokenizer_config.json")
    for added in (config.get("added_tokens_decoder") or {}).values():
        if isinstance(added, dict) and added.get("special"):
            tokens.add(str(added.get("content")))
    named = [*(config.get("additional_special_tokens") or []),
             *(_read_json(directory / "special_tokens_map.json").get("additional_special_tokens") or [])]
    tokens |= {t if isinstance(t, str) else str(t.get("content")) for t in named}
    return tokens


def chat_template(directory: Path) -> str | None:
    if (directory / "chat_template.jinja").is_file():
        return (directory / "chat_template.jinja").read_text(encoding="utf-8")
    template = _read_json(directory / "tokenizer_config.json").get("chat_template") or \
        _read_json(directory / "chat_template.json").get("chat_template")
    return str(template) if template else None


def full_config(directory: Path) -> dict[str, Any]:
    """config.json as its Transformers config class completes it (the family's defaults filled in); the raw
    file where the class is remote code."""
    raw = _read_json(directory / "config.json")
    if not raw:
        raise DeriveError(f"{directory / 'config.json'} is missing: a model directory holds the config.json, "
                          f"tokenizer and weights that Transformers' save_pretrained writes")
    try:
        from transformers import AutoConfig

        completed: dict[str, Any] = AutoConfig.from_pretrained(directory, trust_remote_code=False).to_dict()
    except Exception:  # remote-code configs (ChatGLM, CodeGeeX): the file as it is
        return raw
    return {**completed, **{k: v for k, v in raw.items() if k not in completed}}


def sentence_transformers(directory: Path) -> SentenceTransformers | None:
    """A sentence-transformers directory's pooling, normalisation and input limit (its modules.json names the
    modules; 1_Pooling/config.json's pooling_mode_* flags; sentence_bert_config.json), or None without one."""
    modules = directory / "modules.json"
    if not modules.is_file():
        return None
    try:
        listed = json.loads(modules.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DeriveError(f"{modules}: not readable JSON ({exc})") from exc
    types = [str(m.get("type", "")) for m in listed if isinstance(m, dict)] if isinstance(listed, list) else []
    paths = [str(m.get("path", "")) for m in listed if isinstance(m, dict)] if isinstance(listed, list) else []
    pooling_dir = next((p for p, t in zip(paths, types, strict=True) if t.endswith(".Pooling")), "1_Pooling")
    modes = _read_json(directory / pooling_dir / "config.json")
    pooling = next((name for flag, name in (("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"),
                                            ("pooling_mode_lasttoken", "last")) if modes.get(flag)), None)
    limit = _read_json(directory / "sentence_bert_config.json").get("max_seq_length")
    return SentenceTransformers(pooling, any(t.endswith(".Normalize") for t in types),  # type: ignore[arg-type]
                                limit if isinstance(limit, int) and limit > 0 else None)


def describe(directory: Path, location: str, name: str) -> Derived:
    config = full_config(directory)
    architectures = config.get("architectures") or ["unknown"]
    refusal = vllm_refusal(str(architectures[0]), bool(config.get("is_encoder_decoder")) or is_composite(config),
                           bool(config.get("auto_map")))
    return derive(name, location, config, special_tokens(directory), chat_template(directory), refusal,
                  sentence_transformers(directory))


def describe_gguf(path: Path, cache_dir: Path) -> Derived:
    """A catalog entry for a GGUF file: its metadata read as config.json's fields, its weights served as stored by
    llama.cpp's server (planner/engine_choice.py)."""
    try:
        found = gguf_file.read_cached(path, cache_dir)
    except gguf_file.GgufError as exc:
        raise DeriveError(str(exc)) from exc
    derived = derive(path.stem, found.file.path, found.config, found.special_tokens, found.chat_template,
                     "vLLM has no GGUF loader: llama.cpp's server serves it")
    entry = derived.entry.model_copy(update={"gguf": found.file, "context_length": found.file.context_length})
    arch = entry.architecture
    facts = (f"architecture  {found.file.architecture} from the GGUF metadata: {arch.layers} layers, hidden "
             f"{arch.hidden_size}, {arch.attention_heads} heads / {arch.kv_heads} KV, {entry.params / 1e9:.2f}B "
             f"parameters", f"context       {found.file.context_length} tokens (GGUF metadata)",
             f"weights       {found.file.weights_type}, {found.file.tensor_bytes / 1e6:.0f} MB as stored (llama.cpp)",
             *derived.facts[3:])
    return Derived(entry, None, facts)


def bundled_gguf(entry: ModelEntry, cache_dir: Path) -> ModelEntry:
    """The bundled entry with its shipped GGUF described (llama.cpp serves it, converted once to Q8_0 by
    engine/gguf_convert.py); as it is when the package is not installed (vLLM then converts it, prepare.py)."""
    assert entry.bundled is not None
    try:
        path = bundled_gguf_path(entry.bundled)
        return entry.model_copy(update={"gguf": gguf_file.read_cached(path, cache_dir).file})
    except (PrepareError, gguf_file.GgufError):
        return entry


def _fetch(repo: str) -> Path:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    advice = (f"download it where the network allows (huggingface-cli download {repo} --local-dir DIR) and set "
              f"CODESERVE_MODEL=DIR")
    if offline:
        raise NoFit(f"CODESERVE_MODEL={repo} is a Hugging Face repo id, but HF_HUB_OFFLINE is set and it is not in "
                    f"the local Hugging Face cache; {advice}", [])
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, allow_patterns=DESCRIPTION_FILES, etag_timeout=10))
    except Exception as exc:  # no network, no such repo, gated: say what was needed
        raise NoFit(f"CODESERVE_MODEL={repo}: fetching its config from the Hugging Face Hub failed "
                    f"({type(exc).__name__}: {str(exc)[:200]}); without a network set HF_HUB_OFFLINE=1 to fail "
                    f"at once, or {advice}", []) from exc


def _derived(setting: str, variable: str, cache_dir: Path) -> Derived | None:
    """The derived description for a pin that is not a catalog id, or None for 'auto'."""
    if setting == "auto":
        return None
    path = Path(setting).expanduser()
    try:
        if path.suffix.lower() == ".gguf" or (path.is_file() and _starts_gguf(path)):
            return describe_gguf(path, cache_dir)
        if path.is_dir():
            return describe(path, str(path.resolve()), path.resolve().name)
        if REPO_ID.fullmatch(setting):
            return describe(_fetch(setting), setting, setting.split("/")[-1])
    except DeriveError as exc:
        raise NoFit(f"{variable}={setting}: {exc}", []) from exc
    raise NoFit(f"{variable}={setting!r} is neither a catalog id (`codeserve models` lists them), a local model "
                f"directory, nor a Hugging Face repo id (org/name)", [])


def _starts_gguf(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) == gguf_file.MAGIC


def adapters(settings: Settings) -> tuple[Adapter, ...]:
    """Each CODESERVE_LORA_ADAPTERS entry described from its adapter_config.json (PEFT's)."""
    found = []
    for name, path in settings.adapters():
        directory = Path(path).expanduser()
        try:
            config = _read_json(directory / "adapter_config.json")
        except DeriveError as exc:
            raise NoFit(f"CODESERVE_LORA_ADAPTERS: {name}={path}: {exc}", []) from exc
        rank = config.get("r")
        if not isinstance(rank, int) or rank <= 0:
            raise NoFit(f"CODESERVE_LORA_ADAPTERS: {name}={path} has no adapter_config.json with a rank 'r' (a "
                        f"directory PEFT's save_pretrained writes)", [])
        targets = config.get("target_modules") or []
        found.append(Adapter(name, str(directory.resolve()), rank,
                             tuple(targets) if isinstance(targets, list) else (str(targets),),
                             str(config.get("base_model_name_or_path") or "")))
    names = [a.name for a in found]
    if len(set(names)) != len(names):
        raise NoFit(f"CODESERVE_LORA_ADAPTERS names an adapter twice: {', '.join(names)}", [])
    return tuple(found)


def resolve(settings: Settings, catalog: Catalog) -> Source:
    """The catalog to plan with, and the pins that point at what it added: a pinned model outside the catalog is
    derived and added; a quantized checkpoint pins its own precision. `settings` are read, never changed."""
    entries = list(catalog.models)
    pinned: dict[str, str] = {}
    precision: Precision | None = None
    facts: list[str] = []
    for field, variable in PINNED:
        setting = getattr(settings, field)
        if setting == "auto" or catalog.get(setting) is not None:
            continue
        derived = _derived(setting, variable, settings.cache_dir)
        assert derived is not None
        if any(e.id == derived.entry.id for e in entries):  # a directory named like a catalog model
            derived = Derived(derived.entry.model_copy(update={"id": f"{derived.entry.id}-local"}),
                              derived.precision, derived.facts)
        entries.append(derived.entry)
        pinned[field] = derived.entry.repo
        facts += [f"{variable}: {derived.entry.id} from {derived.entry.repo}", *derived.facts]
        if derived.precision is not None and field == "model":
            if settings.precision not in ("auto", derived.precision):
                raise NoFit(f"{derived.entry.repo} holds {derived.precision} weights; CODESERVE_PRECISION="
                            f"{settings.precision} cannot be served from it (set it to auto)", [])
            precision = cast(Precision, derived.precision)  # derive() reads only config.json's methods
    found = adapters(settings)
    facts += [f"LoRA          {a.name}: rank {a.rank} on {', '.join(a.targets) or 'its modules'} ({a.path}; trained "
              f"over {a.base or 'an unnamed base'})" for a in found]
    pins = Pins(pinned.get("model"), pinned.get("chat_model"), precision, pinned.get("embedding_model"),
                pinned.get("rerank_model"))
    # the bundled model's shipped GGUF, for llama.cpp, where the bundled model may be planned
    if settings.engine != "vllm" and any(e.bundled and (settings.model in ("auto", e.id) or settings.chat_model ==
                                                        e.id) for e in entries):
        entries = [bundled_gguf(e, settings.cache_dir) if e.bundled else e for e in entries]
        return Source(Catalog(models=tuple(entries)), pins, tuple(facts), found)
    return Source(Catalog(models=tuple(entries)) if pinned else catalog, pins, tuple(facts), found)
