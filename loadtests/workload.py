"""The load test's completion workload, shared by the locust profile and the scripts that replay it: holes
cut from real code (the standard library's top-level modules), seeded. No locust or gevent import here."""

from __future__ import annotations

import random
import sysconfig
from pathlib import Path

CHARS_PER_TOKEN = 4  # source code averages ~3.5-4.5 characters per BPE token
COMPLETION_MAX_TOKENS = "16-128"  # what IDE completions ask for
COMPLETION_STOP = ["\n\n\n"]


class SourceFiles:
    """Real code to cut prompts from: the standard library's .py files, read lazily and seeded."""

    def __init__(self, seed: int) -> None:
        root = Path(sysconfig.get_paths()["stdlib"])
        self.files = sorted(p for p in root.glob("*.py") if p.stat().st_size > 4000)
        self.random = random.Random(seed)

    def cut(self, max_prefix_tokens: int, max_suffix_tokens: int) -> tuple[str, str]:
        text = self.random.choice(self.files).read_text(encoding="utf-8", errors="replace")
        cursor = self.random.randint(len(text) // 5, len(text) - 1)
        prefix_chars = self.random.randint(200, max_prefix_tokens * CHARS_PER_TOKEN)
        suffix_chars = self.random.randint(0, max_suffix_tokens * CHARS_PER_TOKEN)
        return text[max(0, cursor - prefix_chars):cursor], text[cursor:cursor + suffix_chars]


def pick(rng: random.Random, spec: str) -> int:
    """A value from a "low-high" range."""
    low, _, high = spec.partition("-")
    return rng.randint(int(low), int(high or low))
