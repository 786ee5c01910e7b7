"""A Messages request as the generation core's engine-neutral chat (generation/core.py Chat): OpenAI chat messages,
the tools, the tool choice. The conversion follows vLLM 0.32's Anthropic server (vllm/entrypoints/anthropic/
serving.py: _convert_system_message, _convert_messages, _convert_tool_choice, _convert_tools); what it would pass on
silently or drop (a result for no call, a prefill, a tool block in the wrong turn) is refused here by name."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Literal

from ...errors import InvalidRequest
from ...generation.core import Chat
from ...generation.tools import Tool, ToolChoice
from .protocol import InputMessage, TextBlock, ToolResultBlock, ToolUseBlock, _Conversation

# Claude Code's attribution block, first in its system prompt: a hash that changes every request, so left out (as
# vLLM's server leaves it out) it keeps the prompt's prefix the same from one request to the next for the prefix cache.
BILLING_HEADER = "x-anthropic-billing-header"
JOIN = "\n"  # a message's text blocks, joined as vLLM joins a chat message's text parts (entrypoints/chat_utils.py)
# Which blocks each role's turn may hold (Anthropic's API: calls are the assistant's, their results the user's).
ALLOWED = {"system": (TextBlock,), "assistant": (TextBlock, ToolUseBlock), "user": (TextBlock, ToolResultBlock)}
# Anthropic's tool_choice type -> ToolChoice's mode
CHOICES: dict[str, Literal["auto", "none", "required", "named"]] = {
    "auto": "auto", "any": "required", "tool": "named", "none": "none"}


def chat(body: _Conversation) -> Chat:
    return Chat(messages(body), tools(body), choice(body))


def tools(body: _Conversation) -> tuple[Tool, ...]:
    return tuple(Tool(t.name, t.description, t.input_schema) for t in body.tools)


def choice(body: _Conversation) -> ToolChoice:
    chosen = body.tool_choice
    if chosen is None:
        return ToolChoice()
    return ToolChoice(CHOICES[chosen.type], chosen.name, parallel=not chosen.disable_parallel_tool_use)


def messages(body: _Conversation) -> list[dict[str, Any]]:
    """The conversation as OpenAI chat messages: the system prompt first, tool calls as assistant `tool_calls`, their
    results as `tool` messages; 400 naming the block that cannot be served."""
    out: list[dict[str, Any]] = []
    system = _system_text(body.system)
    if system:
        out.append({"role": "system", "content": system})
    called: set[str] = set()  # tool_use ids of the turns so far
    for index, message in enumerate(body.messages):
        out += _message(message, f"messages.{index}", called)
    if body.messages[-1].role == "assistant":
        last = f"messages.{len(body.messages) - 1}"
        raise InvalidRequest(f"'{last}' is an assistant turn at the end (a prefill): the chat template closes every "
                             "assistant turn, so it cannot be continued; end with a user message", param=last)
    return out


def _message(message: InputMessage, where: str, called: set[str]) -> list[dict[str, Any]]:
    for position, block in enumerate(message.content):
        if not isinstance(block, ALLOWED[message.role]):
            raise InvalidRequest(f"'{where}.content.{position}' is a {block.type} block, which a {message.role} "
                                 "message cannot carry (tool_use blocks are the assistant's, tool_result blocks the "
                                 "user's)", param=f"{where}.content.{position}")
    text = _text(block for block in message.content if isinstance(block, TextBlock))
    if message.role == "system":
        system = _system_text(block for block in message.content if isinstance(block, TextBlock))
        return [{"role": "system", "content": system}] if system else []
    if message.role == "assistant":
        uses = [block for block in message.content if isinstance(block, ToolUseBlock)]
        called.update(use.id for use in uses)
        if not uses:
            return [{"role": "assistant", "content": text}]
        return [{"role": "assistant", "content": text or None, "tool_calls": [
            {"id": use.id, "type": "function",
             "function": {"name": use.name, "arguments": json.dumps(use.input, ensure_ascii=False)}} for use in uses]}]
    results = []
    for position, block in enumerate(message.content):
        if isinstance(block, ToolResultBlock):
            if block.tool_use_id not in called:
                raise InvalidRequest(f"'{where}.content.{position}' is the result of tool_use '{block.tool_use_id}', "
                                     "which no earlier assistant message made",
                                     param=f"{where}.content.{position}.tool_use_id")
            result = _text(part for part in block.content if isinstance(part, TextBlock))  # the rest: refused
            results.append({"role": "tool", "tool_call_id": block.tool_use_id,
                            "content": f"Error: {result}" if block.is_error else result})
    # Results answer the calls of the turn before, so they come first; the user's own text follows them.
    return results + ([{"role": "user", "content": text}] if text or not results else [])


def _text(blocks: Iterable[TextBlock]) -> str:
    return JOIN.join(block.text for block in blocks)


def _system_text(blocks: Iterable[TextBlock]) -> str:
    return _text(block for block in blocks if not block.text.startswith(BILLING_HEADER))
