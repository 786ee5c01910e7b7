"""Where a fill-in-the-middle completion runs into the code after the cursor: the editor already has that code,
so the completion ends where it starts repeating it."""

from __future__ import annotations

from .stage import Stage


def suffix_head_length(suffix: str) -> int:
    """How much of the suffix a completion must reproduce before it is cut there: through the last visible
    character of the suffix's first non-blank line, and of the next one too when that line holds a single
    visible character (a lone `}` or `)` in the completion is too common to prove anything). 0: never cut."""
    offset, visible = 0, 0
    for line in suffix.splitlines(keepends=True):
        shown = len(line.strip())
        if shown:
            visible += shown
            if visible >= 2:
                return offset + len(line.rstrip())
        offset += len(line)
    return 0


class SuffixCut(Stage):
    """Cuts the completion where it runs into the code after the cursor: at the first point from which the
    completion reproduces the suffix's head (see suffix_head_length). Holds text only while it agrees with
    the start of the suffix and is not yet long enough to decide."""

    def __init__(self, suffix: str):
        self.suffix = suffix
        self.required = suffix_head_length(suffix)
        self._held = ""

    def feed(self, text: str) -> str:
        if self.reason:
            return ""
        if not self.required:
            return text
        seen = self._held + text
        for at in range(len(seen)):
            agree = _common_prefix(seen, at, self.suffix)
            if agree >= self.required:
                self.reason, self._held = "suffix", ""
                return seen[:at]
            if agree == len(seen) - at:  # everything from here matches the suffix so far: undecided
                self._held = seen[at:]
                return seen[:at]
        self._held = ""
        return seen

    def close(self) -> str:
        held, self._held = self._held, ""
        return held


def _common_prefix(text: str, start: int, other: str) -> int:
    n = 0
    limit = min(len(text) - start, len(other))
    while n < limit and text[start + n] == other[n]:
        n += 1
    return n
