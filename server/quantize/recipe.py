"""What a quantization is: source model, method, bits, group size and calibration recipe, and the
cache key and directory name that follow from them. Pure but for reading the calibration files and the
source directory it fingerprints (its config.json and weight file sizes)."""

from __future__ import annotations

import hashlib
import json
import random
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path

from ..planner import candidates
from ..planner.catalog import Architecture

RECIPE_VERSION = 1  # bump when the worker's algorithm or settings change: old checkpoints are not reused


class QuantizeError(RuntimeError):
    """A quantization that cannot be done; the message says why and what to change."""


@dataclass(frozen=True)
class Calibration:
    """Code samples cut from real source files available offline (the Python standard library)."""

    samples: int = 32
    max_seq_len: int = 256
    seed: int = 0
    source: str = "python-stdlib"

    def texts(self, chars_per_token: int = 4) -> list[str]:
        root = Path(sysconfig.get_paths()["stdlib"])
        files = sorted(p for p in root.glob("*.py") if p.stat().st_size > 8 * self.max_seq_len)
        if not files:
            raise QuantizeError(f"no calibration source files under {root}")
        rng = random.Random(self.seed)
        length = self.max_seq_len * chars_per_token
        texts = []
        for _ in range(self.samples):
            text = rng.choice(files).read_text(encoding="utf-8", errors="replace")
            start = rng.randint(0, max(0, len(text) - length))
            texts.append(text[start:start + length])
        return texts


@dataclass(frozen=True)
class QuantSpec:
    model_id: str
    source_fingerprint: str  # what the source weights are (config + weight file sizes), so edits invalidate
    method: str = "awq"
    bits: int = 4
    group_size: int = 128
    calibration: Calibration = Calibration()

    @property
    def key(self) -> str:
        payload = json.dumps({**asdict(self), "recipe_version": RECIPE_VERSION}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @property
    def dirname(self) -> str:
        return f"{self.model_id}-{self.method}-w{self.bits}g{self.group_size}-{self.key}"


def choose_group_size(arch: Architecture, tp: int, requested: int | None = None) -> int:
    """The largest of 128/64/32 dividing every quantized layer's (per-GPU) input features, or the
    requested one if it does; a clear refusal otherwise."""
    features = candidates.quantized_in_features(arch, tp)
    if requested is not None:
        bad = [f for f in features if f % requested]
        if bad:
            raise QuantizeError(f"group size {requested} does not divide input features {bad} "
                                f"(tensor parallel {tp}); leave --group-size unset to choose one")
        return requested
    group = candidates.awq_group_size(arch, tp)
    if group is None:
        raise QuantizeError(f"no AWQ group size in {candidates.AWQ_GROUP_SIZES} divides the input features "
                            f"{features} at tensor parallel {tp}; try another tensor-parallel degree")
    return group


def fingerprint(model_dir: Path) -> str:
    """A cheap identity of a model directory: its config and the names and sizes of its weight files."""
    parts = [(model_dir / "config.json").read_text(encoding="utf-8")]
    for weights in sorted(model_dir.glob("*.safetensors")):
        parts.append(f"{weights.name}:{weights.stat().st_size}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
