"""Produce, cache and find quantized checkpoints.

The work runs in its own virtual environment (llm-compressor's pins clash with vLLM's), created under
the cache dir on first use. Output is written to `<dir>.tmp-<pid>` and renamed into place only when
complete, with a marker file; a directory without the marker is never used, so a crash or a kill
leaves nothing loadable, and the next run starts over cleanly.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..fsutil import atomic_directory
from ..settings import DEFAULT_TORCH_INDEX_URL
from .recipe import QuantizeError, QuantSpec

log = logging.getLogger(__name__)

WORKER = Path(__file__).with_name("worker.py")
COMPLETE_MARKER = ".codeserve-quantized.json"
LLMCOMPRESSOR = "llmcompressor==0.14.*"


def quantized_root(cache_dir: Path) -> Path:
    return cache_dir / "quantized"


def find(cache_dir: Path, spec: QuantSpec) -> Path | None:
    path = quantized_root(cache_dir) / spec.dirname
    return path if (path / COMPLETE_MARKER).is_file() else None


def _remove_partials(cache_dir: Path, spec: QuantSpec) -> None:
    for partial in quantized_root(cache_dir).glob(f"{spec.dirname}.tmp-*"):
        pid = partial.name.rsplit("-", 1)[-1]
        if pid.isdigit() and _alive(int(pid)) and int(pid) != os.getpid():
            raise QuantizeError(f"process {pid} is quantizing {spec.model_id} into {partial}; wait for it")
        log.info("removing the partial checkpoint %s left by an interrupted run", partial)
        shutil.rmtree(partial, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class QuantEnv:
    """The llm-compressor virtual environment under the cache dir, created on first use."""

    def __init__(self, cache_dir: Path, torch_index_url: str = DEFAULT_TORCH_INDEX_URL):
        self.root = cache_dir / "quant-venv"
        self.torch_index_url = torch_index_url
        self.python = self.root / "bin" / "python"

    def _stamp(self) -> Path:
        return self.root / ".codeserve-ready"

    def ensure(self, progress: Callable[[str], None]) -> Path:
        torch_pin = _torch_requirement()
        wanted = f"{LLMCOMPRESSOR} {torch_pin}"
        if self._stamp().is_file() and self._stamp().read_text() == wanted:
            return self.python
        progress(f"creating the quantization environment in {self.root} (one time, a few minutes)")
        shutil.rmtree(self.root, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(self.root)], check=True)
        # Same torch as the server's: on a machine with a local wheel it is not downloaded again.
        command = [str(self.python), "-m", "pip", "install", "-q", "--disable-pip-version-check", torch_pin,
                   LLMCOMPRESSOR]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 and "+cpu" in torch_pin:
            # PyPI has no +cpu builds; PyTorch's CPU index does (as in scripts/setup.sh).
            result = subprocess.run([*command, "--extra-index-url", self.torch_index_url], capture_output=True,
                                    text=True)
        if result.returncode != 0:
            raise QuantizeError(f"installing llm-compressor into {self.root} failed:\n{result.stderr[-2000:]}")
        self._stamp().write_text(wanted)
        return self.python


def _torch_requirement() -> str:
    try:
        from importlib.metadata import version

        return f"torch=={version('torch')}"
    except Exception:  # no torch in the server environment (a planning-only install)
        return "torch"


def quantize(spec: QuantSpec, model_dir: Path, cache_dir: Path, progress: Callable[[str], None],
             torch_index_url: str = DEFAULT_TORCH_INDEX_URL, python: Path | None = None,
             worker: Path = WORKER, evaluation: dict[str, Any] | None = None) -> Path:
    """The cached checkpoint for `spec`, producing it first if needed. `evaluation` (evaluation/gate.py's
    job): prompts the worker also answers with the source and the 4-bit weights, stored beside the result."""
    existing = find(cache_dir, spec)
    if existing is not None:
        progress(f"reusing the quantized checkpoint {existing}")
        return existing
    final = quantized_root(cache_dir) / spec.dirname
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_partials(cache_dir, spec)
    python = python or QuantEnv(cache_dir, torch_index_url).ensure(progress)
    started = time.monotonic()
    with atomic_directory(final) as tmp:  # `final` without the marker is only ever an incomplete leftover
        _run_worker(python, worker, spec, model_dir, tmp, progress, evaluation)
        _check_output(tmp)
        marker = {**asdict(spec), "key": spec.key, "seconds": round(time.monotonic() - started, 1),
                  "source_dir": str(model_dir)}
        (tmp / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2))
    progress(f"quantized {spec.model_id} in {time.monotonic() - started:.0f} s -> {final}")
    return final


def export(checkpoint: Path, out: Path) -> None:
    """Copy a finished checkpoint to `out`, atomically (temporary copy, then rename)."""
    with atomic_directory(out) as tmp:
        shutil.copytree(checkpoint, tmp)


def _run_worker(python: Path, worker: Path, spec: QuantSpec, model_dir: Path, out: Path,
                progress: Callable[[str], None], evaluation: dict[str, Any] | None = None) -> None:
    out.mkdir(parents=True)
    job = {"model_dir": str(model_dir), "out_dir": str(out), "bits": spec.bits, "group_size": spec.group_size,
           "seed": spec.calibration.seed, "max_seq_len": spec.calibration.max_seq_len,
           "texts": spec.calibration.texts(), "evaluation": evaluation}
    job_file = out / "job.json"
    job_file.write_text(json.dumps(job))
    tail: list[str] = []
    with subprocess.Popen([str(python), str(worker), str(job_file)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as process:
        assert process.stdout is not None
        for text in process.stdout:
            # tqdm redraws its bars (stderr, merged here) as "\r" + bar with no newline after, so a progress
            # line arrives glued behind the last bar drawn
            line = text.rstrip()
            at = line.find("PROGRESS ")
            if at >= 0:
                progress(line[at:].removeprefix("PROGRESS "))
            elif line.strip():
                tail = [*tail[-40:], line]
    job_file.unlink(missing_ok=True)
    if process.returncode != 0:
        raise QuantizeError(f"quantizing {spec.model_id} failed (exit {process.returncode}):\n" + "\n".join(tail))


def _check_output(out: Path) -> None:
    config = json.loads((out / "config.json").read_text()) if (out / "config.json").is_file() else {}
    if "quantization_config" not in config or not list(out.glob("*.safetensors")):
        raise QuantizeError(f"the quantization run left no quantized checkpoint in {out}")
