"""Where a fill-in-the-middle completion runs into the code after the cursor: the editor already has that code,
so the completion ends where it starts repeating it. Two rules: `SuffixCut`, the suffix from its very start
(the rest of the cursor's line and its first non-blank line), and `SuffixLines`, a few whole lines below the
cursor's line, which a model reaches when it leaves out or rewrites a line before them."""

from __future__ import annotations

import re

from .stage import Stage

# How many of the suffix's non-blank lines below the cursor's line a repeated run may start at (with the cursor
# at a line's end, the suffix's first three non-blank lines). Each further line cuts more correct answers short,
# where a line of theirs really recurs close by: of the holes loadtests/suffix_lines.py cuts from real code,
# 0.36% by the first-line rule alone, 0.51% / 0.80% / 1.18% / 1.58% / 1.95% with 1 / 2 / 3 / 4 / 5 lines here.
# 3 reaches a line or two past one the answer left out or rewrote (the answers that left duplicates repeated a
# line a few lines down) and keeps the cost near 1%.
SUFFIX_LINES = 3
# What a repeated run must show before it counts: its content (words, numbers and operators; brackets and
# separators are no evidence, a `});` proves nothing), plus one for each line after its first, since agreeing
# line after line is evidence too. A run from the first line below the cursor's: 2, what SuffixCut asks of
# that line (a `return result`, not a lone `}` or `pass`). Further down: 3, since one keyword and one name
# (`return None`, `raise NotImplementedError`, `@property`) recur on their own in real code: 2 would cut 1.66%
# of those holes short instead of 1.18% (same script, 3 lines).
FIRST_LINE_EVIDENCE, LATER_LINE_EVIDENCE = 2, 3
_CONTENT = re.compile(r"\w+|[^\w\s()\[\]{};,:]+")


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


def evidence(line: str) -> int:
    """The content a repeated line shows: its words, numbers and operators (`x = 1`: 3; `return None`: 2)."""
    return len(_CONTENT.findall(line))


class SuffixLines(Stage):
    """Cuts the completion before a run of its lines that repeats the suffix's non-blank lines, starting at one
    of the first `lines` below the cursor's line, once the run shows enough (see the constants above). Lines
    compare as the editor will show them (the completion's first line after the cursor line's text), trailing
    whitespace aside, blank lines skipped on both sides. The cut is at the line break before the run. Holds a
    line break and what follows only while that could still start or continue such a run."""

    def __init__(self, prefix: str, suffix: str, lines: int = SUFFIX_LINES,
                 needed: tuple[int, int] = (FIRST_LINE_EVIDENCE, LATER_LINE_EVIDENCE)):
        self.cursor_line = prefix[prefix.rfind("\n") + 1:]
        below = [line.rstrip() for line in suffix.split("\n")[1:] if line.strip()]
        self.lines, self.needed = lines, needed
        self.targets = below[:lines + max(needed)]  # a run decides within max(needed) + 1 lines: each adds one
        self._held = ""
        self._on_cursor_line = True  # the held text starts where the completion does

    def feed(self, text: str) -> str:
        if self.reason:
            return ""
        if not self.targets:
            return text
        return self._decide(self._held + text, final=False)

    def close(self) -> str:
        if self.reason or not self._held:
            return ""
        return self._decide(self._held, final=True)

    def _decide(self, seen: str, final: bool) -> str:
        lines = seen.split("\n")
        if self._on_cursor_line:
            lines[0] = self.cursor_line + lines[0]
        first = 0 if self._on_cursor_line else 1  # else lines[0] ends a line already let through
        breaks = [i for i, char in enumerate(seen) if char == "\n"]
        for start in range(first, len(lines)):
            verdict = self._verdict(lines, start, final)
            if verdict is None:
                continue
            at = breaks[start - 1] if start else 0
            at -= 1 if at and seen[at - 1] == "\r" else 0
            if verdict == "cut":
                self.reason, self._held = "suffix", ""
            else:  # the earliest run still open: what follows it waits with it
                self._held, self._on_cursor_line = seen[at:], start == 0
            return seen[:at]
        keep = 1 if seen.endswith("\r") and not final else 0  # perhaps the first half of a line break
        self._held, self._on_cursor_line = seen[len(seen) - keep:], False
        return seen[:len(seen) - keep]

    def _verdict(self, lines: list[str], start: int, final: bool) -> str | None:
        """"cut", "wait" (the line at `start` may still begin a run that counts) or None."""
        complete = final or start < len(lines) - 1
        if complete and not lines[start].strip():
            return None  # a blank line begins no run
        verdicts = {self._run(lines, start, k, final) for k in range(min(self.lines, len(self.targets)))}
        return "cut" if "cut" in verdicts else "wait" if "wait" in verdicts else None

    def _run(self, lines: list[str], start: int, k: int, final: bool) -> str | None:
        """The run of lines from `start` against the suffix's lines from its k-th non-blank one."""
        need, shown = self.needed[0 if k == 0 else 1], -1
        for n in range(start, len(lines)):
            line, target = lines[n], self.targets[k] if k < len(self.targets) else None
            if n == len(lines) - 1 and not final:  # still being written
                if target is not None and (target.startswith(line) or line.rstrip() == target):
                    return "wait"
                return "wait" if n > start and not line.strip() and target is not None else None
            if not line.strip():
                continue
            if line.rstrip() != target:
                return None
            shown += evidence(line) + 1
            if shown >= need:
                return "cut"
            k += 1
        return None
