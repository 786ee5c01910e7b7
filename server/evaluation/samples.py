"""Holes cut deterministically from real Python code that ships with every Python: the standard library's
packages (files in its subdirectories). Quantization calibrates on the top-level modules
(quantize/recipe.py), so no sample is code the quantizer saw. The same seed, count and Python version give
the same samples; the source names the version, since scores compare only on the same one."""

from __future__ import annotations

import random
import sys
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path

PREFIX_CHARS = 2000  # context before the hole: what an editor plugin typically sends (a screenful or two)
SUFFIX_CHARS = 1000
MIN_FILE_BYTES, MAX_FILE_BYTES = 2000, 200_000
SKIPPED_DIRS = {"test", "tests", "idlelib", "lib2to3", "tkinter", "turtledemo", "site-packages", "dist-packages",
                "ensurepip", "pydoc_data", "__pycache__", "config-3",
                "encodings"}  # encodings: generated tables, not code anyone types


@dataclass(frozen=True)
class Sample:
    id: str  # path:line of the hole
    kind: str  # "single-line" (rest of a line) or "multi-line" (2 to 4 whole lines)
    prefix: str
    suffix: str
    middle: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def source_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def source_name() -> str:
    return f"python{sys.version_info.major}.{sys.version_info.minor}-stdlib-packages"


def source_files(root: Path | None = None) -> list[Path]:
    root = root or source_root()
    files = []
    for path in sorted(root.glob("*/**/*.py")):
        if SKIPPED_DIRS.intersection(path.relative_to(root).parts[:-1]):
            continue
        if MIN_FILE_BYTES <= path.stat().st_size <= MAX_FILE_BYTES:
            files.append(path)
    return files


def cut(count: int, seed: int = 0, root: Path | None = None) -> list[Sample]:
    """`count` holes, alternating single-line and multi-line, each from a randomly chosen file."""
    root = root or source_root()
    files = source_files(root)
    if not files:
        raise FileNotFoundError(f"no Python package sources under {root} to cut evaluation samples from")
    rng = random.Random(seed)
    samples: list[Sample] = []
    while len(samples) < count:
        path = rng.choice(files)
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
        kind = "single-line" if len(samples) % 2 == 0 else "multi-line"
        sample = (_single_line if kind == "single-line" else _multi_line)(rng, lines)
        if sample is not None:
            at, prefix, middle, suffix = sample
            samples.append(Sample(f"{path.relative_to(root)}:{at + 1}", kind, _tail(prefix), _head(suffix), middle))
    return samples


def _is_code(line: str) -> bool:
    text = line.strip()
    return len(text) >= 12 and not text.startswith(("#", '"', "'", "@")) and len(line) <= 120


def _single_line(rng: random.Random, lines: list[str]) -> tuple[int, str, str, str] | None:
    """The rest of a line of code, cut after at least one visible character, at least 4 characters long."""
    candidates = [i for i, line in enumerate(lines) if _is_code(line)]
    if not candidates:
        return None
    at = rng.choice(candidates)
    line = lines[at].rstrip("\n")
    indent = len(line) - len(line.lstrip())
    column = rng.randint(indent + 1, len(line) - 4)
    return at, "".join(lines[:at]) + line[:column], line[column:], "\n" + "".join(lines[at + 1:])


def _multi_line(rng: random.Random, lines: list[str]) -> tuple[int, str, str, str] | None:
    """2 to 4 whole lines of code, from after the first line's indentation (where the cursor sits)."""
    size = rng.randint(2, 4)
    candidates = [i for i in range(len(lines) - size) if all(_is_code(lines[j]) for j in range(i, i + size))]
    if not candidates:
        return None
    at = rng.choice(candidates)
    first = lines[at]
    indent = first[:len(first) - len(first.lstrip())]
    middle = "".join(lines[at:at + size])[len(indent):].rstrip("\n")
    return at, "".join(lines[:at]) + indent, middle, "\n" + "".join(lines[at + size:])


def _tail(prefix: str) -> str:
    if len(prefix) <= PREFIX_CHARS:
        return prefix
    start = prefix.find("\n", len(prefix) - PREFIX_CHARS) + 1
    return prefix[start:] if 0 < start <= prefix.rfind("\n") + 1 else prefix[-PREFIX_CHARS:]


def _head(suffix: str) -> str:
    if len(suffix) <= SUFFIX_CHARS:
        return suffix
    end = suffix.rfind("\n", 0, SUFFIX_CHARS)
    return suffix[:end + 1] if end > 0 else suffix[:SUFFIX_CHARS]
