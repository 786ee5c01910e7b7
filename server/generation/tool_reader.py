"""One answer read as text and tool calls while it streams: through vLLM's parser for the model's format (auto), or
as the JSON a forced choice constrained it to (required: an array of {"name", "parameters"}; a named function: its
arguments object)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from ..engine.base import StructuredOutput
from ..engine.tool_parsing import CallDelta, ToolParserSession, forced_schema
from ..errors import InvalidRequest
from .tools import CallArguments, CallStart, ReaderEvent, TextPiece, Tool, ToolCall, ToolChoice, openai_tools


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class ToolReader:
    """Feed an answer's text; get its events. `calls` and `content` hold what was read so far."""

    def __init__(self) -> None:
        self.content = ""
        self._calls: list[list[str]] = []  # [id, name, arguments]

    @property
    def calls(self) -> list[ToolCall]:
        return [ToolCall(i, n, a) for i, n, a in self._calls]

    def feed(self, text: str) -> list[ReaderEvent]:
        raise NotImplementedError

    def close(self) -> list[ReaderEvent]:
        return []

    def _text(self, text: str) -> list[ReaderEvent]:
        self.content += text
        return [TextPiece(text)] if text else []

    def _start(self, name: str, id_: str | None = None) -> ReaderEvent:
        self._calls.append([id_ or call_id(), name, ""])
        return CallStart(len(self._calls) - 1, self._calls[-1][0], name)

    def _arguments(self, index: int, text: str) -> list[ReaderEvent]:
        if not text:
            return []
        self._calls[index][2] += text
        return [CallArguments(index, text)]


class ParsedReader(ToolReader):
    """The model chose (tool_choice auto): its answer in its family's format, read by vLLM's parser. Without
    parallel calls (parallel_tool_calls false, Anthropic's disable_parallel_tool_use) only its first call counts:
    nothing constrains how many an unforced answer writes."""

    def __init__(self, session: ToolParserSession, parallel: bool = True):
        super().__init__()
        self.session = session
        self.parallel = parallel

    def feed(self, text: str) -> list[ReaderEvent]:
        return self._events(*self.session.feed(text))

    def close(self) -> list[ReaderEvent]:
        return self._events(*self.session.finish())

    def _events(self, text: str, deltas: list[CallDelta]) -> list[ReaderEvent]:
        # Whitespace between calls is the template's framing, not an answer (vLLM's parsers pass the newline between
        # two <tool_call> blocks through as content when a chunk ends on it; its tool_parsers/__init__.py notes it)
        events = [] if self._calls and not text.strip() else self._text(text)
        for delta in deltas:
            if delta.index > 0 and not self.parallel:
                continue
            if delta.name is not None and delta.index == len(self._calls):
                events.append(self._start(delta.name))
            if delta.index < len(self._calls):
                events += self._arguments(delta.index, delta.arguments)
        return events


class NamedReader(ToolReader):
    """A named function was forced: the whole answer is its arguments object, streamed as it comes."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def feed(self, text: str) -> list[ReaderEvent]:
        events = [] if self._calls else [self._start(self.name)]
        return events + self._arguments(0, text)

    def close(self) -> list[ReaderEvent]:
        return [] if self._calls else [self._start(self.name)]


# The constrained answer, call by call: `[{"name":"f","parameters":{...}}, ...]` (vLLM's forced-tool schema, properties
# in its order, which the grammar keeps).
CALL_HEAD = re.compile(r'(?:\s*\[|\s*\}\s*,)\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"parameters"\s*:\s*')


class RequiredReader(ToolReader):
    """tool_choice required: the answer is a JSON array of calls, constrained; each call starts as soon as its name
    is read and its arguments stream as they come. An answer in another shape (cut before the first name) is read
    whole at the end."""

    def __init__(self) -> None:
        super().__init__()
        self.raw = ""
        self.pos = 0  # how far the raw text is read
        self.depth = 0  # inside a call's arguments: open brackets
        self.inside = self.in_string = self.escaped = False

    def feed(self, text: str) -> list[ReaderEvent]:
        self.raw += text
        events: list[ReaderEvent] = []
        while True:
            if not self.inside:
                head = CALL_HEAD.match(self.raw, self.pos)
                if head is None:
                    return events
                events.append(self._start(json.loads(head.group(1))))
                self.pos, self.inside, self.depth = head.end(), True, 0
            start = self.pos
            closed = self._arguments_end()
            events += self._arguments(len(self._calls) - 1, self.raw[start:self.pos])
            if not closed:
                return events
            self.inside = False

    def _arguments_end(self) -> bool:
        """Advance over the arguments' JSON; True where its outermost bracket closed."""
        while self.pos < len(self.raw):
            char = self.raw[self.pos]
            self.pos += 1
            if self.in_string:
                self.escaped, self.in_string = (False, True) if self.escaped else (char == "\\", char != '"')
            elif char == '"':
                self.in_string = True
            elif char in "{[":
                self.depth += 1
            elif char in "}]":
                self.depth -= 1
                if self.depth == 0:
                    return True
        return False

    def close(self) -> list[ReaderEvent]:
        if self._calls:
            return []
        try:
            calls = json.loads(self.raw)
        except json.JSONDecodeError:
            return self._text(self.raw)  # cut short by max_tokens before a call began: the answer's text
        events: list[ReaderEvent] = []
        for call in calls:
            events.append(self._start(call["name"]))
            events += self._arguments(len(self._calls) - 1, json.dumps(call["parameters"], ensure_ascii=False))
        return events


@dataclass(frozen=True)
class ToolCalling:
    """A request's tools as generation runs them: how each answer is read, and the constraint a forced choice puts
    on the output."""

    tools: tuple[Tool, ...]
    choice: ToolChoice
    open_parser: Callable[[], ToolParserSession]

    def __post_init__(self) -> None:
        if self.choice.mode == "named" and self.choice.name not in {t.name for t in self.tools}:
            sent = ", ".join(t.name for t in self.tools) or "none"
            raise InvalidRequest(f"tool_choice names '{self.choice.name}', which is not among the tools sent "
                                 f"({sent})", param="tool_choice")
        if self.choice.mode == "required" and not self.tools:
            raise InvalidRequest("tool_choice 'required' needs tools", param="tool_choice")

    @property
    def forced(self) -> bool:
        return self.choice.mode in ("required", "named")

    def constraint(self) -> StructuredOutput | None:
        if not self.forced:
            return None
        choice: str | dict = ("required" if self.choice.mode == "required"
                              else {"type": "function", "function": {"name": self.choice.name}})
        return StructuredOutput(json_schema=forced_schema(openai_tools(self.tools), choice, self.choice.parallel),
                                param="tools")

    def reader(self) -> ToolReader:
        if self.choice.mode == "named":
            assert self.choice.name is not None
            return NamedReader(self.choice.name)
        if self.choice.mode == "required":
            return RequiredReader()
        return ParsedReader(self.open_parser(), self.choice.parallel)
