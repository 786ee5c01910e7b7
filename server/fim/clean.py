"""Fill-in-the-middle output an editor can insert as is.

An editor inserts whatever comes back at the cursor, so the middle must be only the middle. Models break
that in known ways: they restate the code before the cursor (a chat model quoting the line it completes, a
small model starting the file over), run on into the code after it, leak template tokens as text, and wrap
code in Markdown. And a completion that keeps going past the block the developer is in costs tokens (and
time) that the editor throws away. Each rule is a streaming stage; `InfillCleaner` chains them.

Streaming: a stage holds text back only while it cannot yet tell whether that text is kept (it could still
be a restated prefix, the start of the suffix, a leaked marker, the start of a dedented line); everything
else passes at once. Every stage is pure string work, no engine and no HTTP.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

from .stage import Stage
from .suffix import SuffixCut, SuffixLines
from .templates import HOLE_MARKER

# Openers after which the next lines form a new, deeper block (Python's ":", C-family braces, open calls).
BLOCK_OPENERS = (":", "{", "(", "[", "=>")
BRACKETS = {"(": ")", "[": "]", "{": "}"}
CLOSERS = {v: k for k, v in BRACKETS.items()}
TAB_WIDTH = 4  # for comparing indentation that mixes tabs and spaces
_LINE_BREAK = re.compile("\n")
CLOSING_FENCE = "\n```"  # after a chat model's code, its Markdown fence closes: the answer ends there


@dataclass(frozen=True)
class InfillContext:
    """What the cleaner needs to know about a fill-in-the-middle request."""

    prefix: str
    suffix: str
    markers: tuple[str, ...] = ()  # template tokens that end the middle if they appear as text
    chat: bool = False  # the hole is filled through a chat template: the reply may carry a role line and fences
    code_stops: bool = False  # end at the line's end (cursor mid-line), on a dedent, or on closing an outer bracket
    min_indent: int | None = None  # llama.cpp's n_indent: lines indented less than this end the completion

    @cached_property
    def line_starts(self) -> list[int]:
        # by the regex engine: a Python loop over a 6,000-character prefix took ~0.8 ms of every keystroke
        return [0, *(m.end() for m in _LINE_BREAK.finditer(self.prefix))]


class CutAtMarkers(Stage):
    """Ends the completion at the first template token that leaked as text (`<|fim_middle|>`,
    `<|im_start|>`, `<file_sep>`): no code contains them, and what follows is not the middle."""

    def __init__(self, markers: tuple[str, ...], reason: str = "marker"):
        self.markers = tuple(m for m in markers if m)
        self._reason = reason
        self._held = ""

    def feed(self, text: str) -> str:
        if self.reason:
            return ""
        seen = self._held + text
        at = min((i for m in self.markers if (i := seen.find(m)) >= 0), default=-1)
        if at >= 0:
            self.reason, self._held = self._reason, ""
            return seen[:at]
        hold = max((k for m in self.markers for k in range(1, len(m)) if seen.endswith(m[:k])), default=0)
        self._held = seen[len(seen) - hold:]
        return seen[:len(seen) - hold]

    def close(self) -> str:
        held, self._held = self._held, ""
        return held


# A line a chat model writes around its code: a Markdown fence opening, or its own role name.
_LEAD_LINE = re.compile(r"[ \t]*(```[\w+#.-]*|(<\|)?(assistant|Assistant|ASSISTANT)(\|>)?:?)[ \t]*")
_LEAD_FORMS = ("```", "assistant:", "Assistant:", "ASSISTANT:", "<|assistant|>")


class _AtStart(Stage):
    """A stage that decides once, about how the completion starts, and then lets everything through."""

    def __init__(self) -> None:
        self._buffer = ""
        self._done = False
        self.dropped = 0  # characters (RepeatedPrefix) or lines (LeadLines) it removed

    def feed(self, text: str) -> str:
        if self._done:
            return text
        self._buffer += text
        return self._start()

    def _start(self) -> str:
        raise NotImplementedError


class LeadLines(_AtStart):
    """Drops what a chat model puts before the code: lines with a ```lang fence or a role name, and an echo of
    the hole marker our instruction uses. Holds only the first line, and only while it could still be one."""

    def _start(self) -> str:
        while True:
            head = self._buffer.lstrip(" \t")
            if head.startswith(HOLE_MARKER):
                rest = head[len(HOLE_MARKER):]
                self._buffer, self.dropped = (rest[1:] if rest.startswith("\n") else rest), self.dropped + 1
                continue
            if HOLE_MARKER.startswith(head) and head:
                return ""
            line, newline, rest = self._buffer.partition("\n")
            if newline and _LEAD_LINE.fullmatch(line):
                self._buffer, self.dropped = rest, self.dropped + 1
                continue
            if not newline and _could_lead(line):
                return ""
            self._done = True
            out, self._buffer = self._buffer, ""
            return out

    def close(self) -> str:
        if self._done:
            return ""
        self._done = True
        out, self._buffer = self._buffer, ""
        return "" if _LEAD_LINE.fullmatch(out) else out


def _could_lead(partial: str) -> bool:
    head = partial.lstrip(" \t")
    return head.startswith("```") or any(form.startswith(head) for form in _LEAD_FORMS)


class RepeatedPrefix(_AtStart):
    """Drops a restatement of the code before the cursor at the start of the completion: the longest tail of
    the prefix that starts at a line start (the line being typed, or whole lines before it, up to the whole
    file) and that the completion begins with. A tail must hold visible text, except for a chat model, which
    also restates the cursor line's indentation."""

    def __init__(self, context: InfillContext):
        super().__init__()
        self.prefix = context.prefix
        last = len(self.prefix.rstrip())
        self._viable = [j for j in context.line_starts if j < last]
        cursor_line = context.line_starts[-1]
        if context.chat and cursor_line >= last and cursor_line < len(self.prefix):
            self._viable.append(cursor_line)  # the cursor line's indentation, which a chat model restates

    def _start(self) -> str:
        size, seen = len(self.prefix), self._buffer
        self._viable = [j for j in self._viable if self.prefix.startswith(seen[:size - j], j)]
        if any(size - j > len(seen) for j in self._viable):
            return ""  # the completion so far could still be the start of a restated tail
        return self._decide()

    def _decide(self) -> str:
        self._done = True
        seen, self._buffer = self._buffer, ""
        complete = [j for j in self._viable if len(self.prefix) - j <= len(seen)]
        if complete:
            self.dropped = len(self.prefix) - min(complete)
        return seen[self.dropped:]

    def close(self) -> str:
        return "" if self._done else self._decide()


def _width(whitespace: str) -> int:
    return len(whitespace.expandtabs(TAB_WIDTH))


def _indent(line: str) -> str:
    return line[:len(line) - len(line.lstrip(" \t"))]


@dataclass
class _Scan:
    """Where CodeStops' scan of the completion stands."""

    position: int = 0
    line: int = 0  # lines started so far in the completion (0: the cursor's line)
    line_start: int = 0
    visible_on_line: bool = False
    last_visible_end: int = 0  # just past the last visible character: text after it may yet be cut
    depth: int = 0  # brackets opened minus closed since the cursor
    quote: str | None = None
    comment: bool = False
    closing_line: bool = False  # this line closed a bracket opened before the cursor
    stack: list[str] = field(default_factory=list)


class CodeStops(Stage):
    """Ends a completion where an editor would: with the cursor mid-line (text after it on the line), at the
    end of that line; otherwise when a line is indented less than the cursor's block (llama.cpp's n_indent
    rule, with the block found from the cursor line), or after the line that closes a bracket opened before
    the cursor. Brackets inside single-line strings and comments (#, //) are not counted (an approximation:
    no lexer per language)."""

    def __init__(self, context: InfillContext):
        cursor_line = context.prefix[context.prefix.rfind("\n") + 1:]
        self.single_line = bool(context.suffix.split("\n", 1)[0].strip())
        self.column = _width(cursor_line)
        self.block: int | None = context.min_indent
        self._block_from_line = 0
        if self.block is None and cursor_line.strip():
            if cursor_line.rstrip().endswith(BLOCK_OPENERS):
                self._block_from_line = 1  # the block is the one this line opens: the next line sets it
            else:
                self.block = _width(_indent(cursor_line))
        self._seen = ""
        self._released = 0
        self._scan = _Scan()

    def feed(self, text: str) -> str:
        if self.reason:
            return ""
        self._seen += text
        if self.single_line:
            at = self._seen.find("\n", self._released)
            return self._stop("line", at) if at >= 0 else self._release(len(self._seen))
        stop = self._advance()
        if stop is not None:
            return self._stop(*stop)
        return self._release(self._scan.last_visible_end)

    def close(self) -> str:
        return "" if self.reason else self._release(len(self._seen))

    def _release(self, upto: int) -> str:
        out = self._seen[self._released:upto] if upto > self._released else ""
        self._released = max(self._released, upto)
        return out

    def _stop(self, reason: str, at: int) -> str:
        self.reason = reason
        return self._release(at)

    def _advance(self) -> tuple[str, int] | None:
        s, seen = self._scan, self._seen
        while s.position < len(seen):
            char = seen[s.position]
            if char == "\n":
                if s.closing_line:
                    return "bracket", s.position
                s.line, s.line_start, s.visible_on_line = s.line + 1, s.position + 1, False
                s.quote, s.comment = None, False
            elif char not in " \t":
                if not s.visible_on_line:
                    s.visible_on_line = True
                    # a dedented line that closes a bracket opened before the cursor (`]` under `x = [`)
                    # belongs to the completion: the bracket rule ends it after that line
                    closes_outer = char in CLOSERS and s.depth == 0 and s.quote is None
                    if self._dedented(s, seen) and not closes_outer:
                        return "indent", s.last_visible_end
                s.last_visible_end = s.position + 1
                self._bracket(s, seen, char)
            s.position += 1
        return None

    def _dedented(self, s: _Scan, seen: str) -> bool:
        indent = _width(seen[s.line_start:s.position]) + (self.column if s.line == 0 else 0)
        if self.block is None:
            if s.line >= self._block_from_line:
                self.block = indent
            return False
        return s.line > 0 and indent < self.block

    def _bracket(self, s: _Scan, seen: str, char: str) -> None:
        if s.comment:
            return
        if s.quote is not None:
            if char == s.quote and seen[s.position - 1:s.position] != "\\":
                s.quote = None
            return
        previous = seen[s.position - 1] if s.position else ""
        if char in "\"'`" and not (char == "'" and previous.isalnum()):  # an apostrophe in a word is no quote
            s.quote = char
        elif char == "#" or (char == "/" and previous == "/"):
            s.comment = True
        elif char in BRACKETS:
            s.depth += 1
        elif char in CLOSERS:
            s.depth -= 1
            if s.depth < 0:
                s.closing_line = True


class InfillCleaner:
    """The stages in order, for one choice: markers, a chat model's lead lines and closing fence, a restated
    prefix, the run into the suffix (from its start, then from a few lines down), then the code-aware stops.
    `reason` says why the cleaner ended the completion (None while it has not); `actions` lists every rule that
    changed the text, for the metrics."""

    def __init__(self, context: InfillContext):
        self.lead = LeadLines() if context.chat else None
        self.repeat = RepeatedPrefix(context)
        stages: list[Stage] = [CutAtMarkers(context.markers)]
        if self.lead is not None:
            stages += [self.lead, CutAtMarkers((CLOSING_FENCE,), reason="fence"),
                       CutAtMarkers((HOLE_MARKER,))]  # a second marker: it restates the prompt
        stages += [self.repeat, SuffixCut(context.suffix), SuffixLines(context.prefix, context.suffix)]
        if context.code_stops:
            stages.append(CodeStops(context))
        self.stages = stages
        self.reason: str | None = None

    def feed(self, text: str, final: bool = False) -> str:
        if self.reason is not None:
            return ""
        out, closing = text, final
        for stage in self.stages:
            out = stage.feed(out)
            if closing or stage.reason is not None:
                out += stage.close()
            if stage.reason is not None:  # decided on this text, or on what it held at the end
                self.reason, closing = stage.reason, True  # the completion ends here: later stages flush
        return out

    @property
    def actions(self) -> list[str]:
        done = [name for name, stage in (("lead", self.lead), ("repeat", self.repeat))
                if stage is not None and stage.dropped]
        return done + ([self.reason] if self.reason else [])


def clean(context: InfillContext, text: str) -> str:
    """The whole completion at once (what a non-streamed response and the evaluation use)."""
    return InfillCleaner(context).feed(text, final=True)
