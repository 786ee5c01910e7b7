"""How the served model takes tools: through its own chat template and vLLM's parser for its format (native), or
through the generic prompt, whose Hermes-format calls vLLM's hermes parser reads (any model with a chat template)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..engine.base import SamplingSettings
from ..errors import InvalidRequest
from .codec import Codec
from .tool_reader import ToolCalling
from .tools import GENERIC_PARSER, for_template, generic, openai_tools

if TYPE_CHECKING:
    from .core import Chat

# Tool-call tags some tokenizers mark special (Qwen2.5's): the engine must keep them in the text for the parser
# to see them (vLLM's hermes parser turns skip_special_tokens off for the same reason, adjust_request).
CALL_TAGS = ("<tool_call>", "</tool_call>")


class Toolbox:
    def __init__(self, codec: Codec, parser: str | None):
        self.codec = codec
        self.native = parser is not None and codec.template_takes_tools()
        self.parser = parser if self.native and parser is not None else GENERIC_PARSER

    def describe(self) -> dict[str, Any]:
        """What clients and operators read on /v1/models and in the plan."""
        return {"tool_calls": "native" if self.native else "generic", "tool_parser": self.parser}

    def chat_text(self, chat: Chat) -> str:
        offered = chat.tools if chat.tool_choice.mode != "none" else ()
        history = any(m.get("tool_calls") or m.get("role") == "tool" for m in chat.messages)
        variables = chat.template_variables or None
        if not offered and not history:
            return self.codec.chat_text(chat.messages, None, variables)
        if self.native:
            return self.codec.chat_text(for_template(chat.messages), openai_tools(offered) or None, variables)
        return self.codec.chat_text(generic(chat.messages, offered), None, variables)

    def calling(self, chat: Chat) -> ToolCalling:
        tools = openai_tools(chat.tools)
        engine, parser = self.codec.engine, self.parser
        return ToolCalling(chat.tools, chat.tool_choice, lambda: engine.tool_parser(parser, tools))

    def sampling(self, tools: ToolCalling, sampling: SamplingSettings) -> SamplingSettings:
        constraint = tools.constraint()
        if constraint is not None:
            if sampling.structured is not None:
                raise InvalidRequest("tool_choice forces a tool call, whose arguments are constrained to the tool's "
                                     "schema: a response format cannot constrain the same answer", param="tool_choice")
            return replace(sampling, structured=constraint)
        if self.native and any(tag in self.codec.engine.special_tokens for tag in CALL_TAGS):
            return replace(sampling, skip_special_tokens=False)
        return sampling
