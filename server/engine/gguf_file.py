"""A GGUF file (llama.cpp's model format) read with llama.cpp's own Python reader (the `gguf` package,
gguf-py/gguf/gguf_reader.py): validated, and described for the planner (planner/gguf.py GgufFile) and for
planner/derive.py (its metadata spelled as the config.json fields derive reads).

Refused here, before any child process starts: a file that is not GGUF, one cut short (its tensors run past the
end), and an architecture llama.cpp does not know."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..planner.gguf import GgufFile
from .gguf_convert import converted_bytes

MAGIC = b"GGUF"  # gguf-py/gguf/constants.py GGUF_MAGIC, as the file's first four bytes
# tokenizer.ggml.token_type values that mark template markers (gguf-py/gguf/constants.py TokenType): CONTROL,
# USER_DEFINED
SPECIAL_TOKEN_TYPES = (3, 4)


class GgufError(ValueError):
    """The file cannot be served; the message says what is wrong with it."""


@dataclass(frozen=True)
class GgufDescription:
    file: GgufFile
    config: dict[str, Any]  # config.json's field names for planner/derive.py
    special_tokens: set[str]
    chat_template: str | None


def known_architectures() -> frozenset[str]:
    """The architectures llama.cpp's GGUF names (gguf-py/gguf/constants.py MODEL_ARCH_NAMES, the Python twin of
    src/llama-arch.cpp's LLM_ARCH_NAMES)."""
    import gguf

    return frozenset(gguf.MODEL_ARCH_NAMES.values())


def _value(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    return field.contents() if field is not None else None


def _largest(value: Any) -> int | None:
    """A per-layer array (some architectures vary heads or FFN width by layer) as its largest entry."""
    if isinstance(value, list):
        return max(int(v) for v in value) if value else None
    return int(value) if value is not None else None


def read_cached(path: Path, cache_dir: Path) -> GgufDescription:
    """read(), remembered in the cache dir by the file's path, size and modification time: reading a large
    vocabulary takes seconds, and every start reads the bundled model's file."""
    if not path.is_file():
        raise GgufError(f"{path} is not a file")
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    memo = cache_dir / "gguf" / f"{key}.json"
    try:
        saved = json.loads(memo.read_text(encoding="utf-8"))
        return GgufDescription(GgufFile.model_validate(saved["file"]), saved["config"], set(saved["special_tokens"]),
                               saved["chat_template"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    described = read(path)
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"file": described.file.model_dump(), "config": described.config,
                                   "special_tokens": sorted(described.special_tokens),
                                   "chat_template": described.chat_template}), encoding="utf-8")
        tmp.replace(memo)
    except OSError:  # a read-only cache dir only costs the next start the read
        pass
    return described


def read(path: Path) -> GgufDescription:
    if not path.is_file():
        raise GgufError(f"{path} is not a file")
    with path.open("rb") as handle:
        if handle.read(4) != MAGIC:
            raise GgufError(f"{path} is not a GGUF file (it does not start with {MAGIC!r})")
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:  # the reader raises ValueError/IndexError/struct errors on a cut-short header
        raise GgufError(f"{path} is not a readable GGUF file, truncated or damaged ({type(exc).__name__}: {exc})") \
            from exc
    size = path.stat().st_size
    end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    if not reader.tensors or end > size:
        raise GgufError(f"{path} is truncated: its tensors need {end} bytes, the file has {size}")
    arch = str(_value(reader, "general.architecture") or "")
    if arch not in known_architectures():
        raise GgufError(f"{path}: llama.cpp cannot run the architecture {arch or '(none named)'!r}")
    context = _largest(_value(reader, f"{arch}.context_length"))
    if not context:
        raise GgufError(f"{path} names no {arch}.context_length")
    file_type = _value(reader, "general.file_type")
    try:
        weights_type = gguf.LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_") if file_type is not None \
            else "unknown"
    except ValueError:
        weights_type = f"file_type {file_type}"
    tokens = _value(reader, "tokenizer.ggml.tokens") or []
    kinds = _value(reader, "tokenizer.ggml.token_type") or []
    names = {t.name for t in reader.tensors}
    config = {
        "architectures": [f"{arch} (GGUF)"], "model_type": arch,
        "num_hidden_layers": _largest(_value(reader, f"{arch}.block_count")),
        "hidden_size": _largest(_value(reader, f"{arch}.embedding_length")),
        "num_attention_heads": _largest(_value(reader, f"{arch}.attention.head_count")),
        "num_key_value_heads": _largest(_value(reader, f"{arch}.attention.head_count_kv")),
        "head_dim": _largest(_value(reader, f"{arch}.attention.key_length")),
        "intermediate_size": _largest(_value(reader, f"{arch}.feed_forward_length")),
        "vocab_size": _largest(_value(reader, f"{arch}.vocab_size")) or len(tokens) or None,
        "tie_word_embeddings": "output.weight" not in names,
        "max_position_embeddings": context,
        # a gate matrix in the first block: SwiGLU (llama.cpp's tensor names, gguf-py/gguf/tensor_mapping.py)
        "feed_forward_proj": "gated" if "blk.0.ffn_gate.weight" in names else "",
    }
    special = {str(token) for token, kind in zip(tokens, kinds, strict=False) if int(kind) in SPECIAL_TOKEN_TYPES}
    template = _value(reader, "tokenizer.chat_template")
    described = GgufFile(path=str(path.resolve()), architecture=arch, weights_type=weights_type,
                         tensor_bytes=sum(int(t.n_bytes) for t in reader.tensors), context_length=context,
                         bytes_as=converted_bytes(reader))
    return GgufDescription(described, config, special, str(template) if template else None)
