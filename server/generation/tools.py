"""Tool calling, engine-neutral and wire-neutral: the tools a chat offers, the choice the client made, and a reader
that turns one choice's generated text into plain text and tool calls as it streams. Every API that calls tools
(chat completions, Responses, Messages) converts its request into these and its answer out of them.

A chat's tools reach the model through its chat template where the template renders tools, else through a generic
prompt (the tools described in the system message, calls asked for in Hermes' <tool_call> format); its answer is read
by vLLM's parser for the family (engine/tool_parsing.py). A forced choice (required, or a named tool) is a constraint
on the output: JSON the arguments always parse from and validate against (vLLM's get_json_schema_from_tools shape).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class Tool:
    """A function the model may call: its name, what it does, and its arguments' JSON Schema."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass(frozen=True)
class ToolChoice:
    """auto: the model decides; none: no call; required: at least one call; named: a call of `name`."""

    mode: Literal["auto", "none", "required", "named"] = "auto"
    name: str | None = None
    parallel: bool = True  # several calls in one answer allowed


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text of an object


@dataclass(frozen=True)
class TextPiece:
    """Text of the answer that is not a tool call."""

    text: str


@dataclass(frozen=True)
class CallStart:
    """A tool call begins: its index among the answer's calls, its id and the function's name."""

    index: int
    id: str
    name: str


@dataclass(frozen=True)
class CallArguments:
    """More of call `index`'s arguments (JSON text; the pieces of one call concatenate to its arguments)."""

    index: int
    text: str


ReaderEvent = TextPiece | CallStart | CallArguments


GENERIC_PARSER = "hermes"  # the generic prompt asks for Hermes' format, which vLLM's hermes parser reads
GENERIC_INSTRUCTION = (
    "You can call functions to answer. The functions, each with its parameters' JSON Schema:\n{tools}\n\n"
    "To call functions, answer with one block per call, each a JSON object with the function's \"name\" and its "
    "\"arguments\" object:\n<tool_call>\n{{\"name\": \"function_name\", \"arguments\": {{\"parameter\": \"value\"}}}}"
    "\n</tool_call>\nOtherwise answer directly, without any <tool_call> block."
)


def openai_tools(tools: tuple[Tool, ...]) -> list[dict[str, Any]]:
    """The tools as OpenAI chat tools: what chat templates and vLLM's parsers take."""
    return [{"type": "function", "function": {"name": t.name, "description": t.description,
                                              "parameters": t.parameters}} for t in tools]


def unmatched_tool_result(messages: list[dict[str, Any]]) -> int | None:
    """The index of the first tool result whose tool_call_id answers no earlier assistant call, or None."""
    called: set[str] = set()
    for index, message in enumerate(messages):
        for call in message.get("tool_calls") or ():
            called.add(call.get("id", ""))
        if message.get("role") == "tool" and message.get("tool_call_id") not in called:
            return index
    return None


def for_template(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """History for a template that renders tools: call arguments as objects (templates apply `tojson` to them, as
    vLLM's chat renderer prepares them), no null content."""
    out = []
    for message in messages:
        message = {**message, "content": message.get("content") or ""}
        if message.get("tool_calls"):
            message["tool_calls"] = [{**call, "function": {**call["function"],
                                                           "arguments": _object(call["function"]["arguments"])}}
                                     for call in message["tool_calls"]]
        out.append(message)
    return out


def generic(messages: list[dict[str, Any]], tools: tuple[Tool, ...]) -> list[dict[str, Any]]:
    """History and tools for a template that knows nothing of tools (llama.cpp's server does the same for any
    model): the tools described in the system message, calls written as the <tool_call> blocks the model is asked
    for, results as user turns in <tool_response> blocks (Hermes' convention)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        role, content = message.get("role"), message.get("content") or ""
        if role == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
            continue
        calls = "".join(
            "<tool_call>\n" + json.dumps({"name": c["function"]["name"],
                                          "arguments": _object(c["function"]["arguments"])}) + "\n</tool_call>"
            for c in message.get("tool_calls") or ())
        out.append({"role": role, "content": (content + "\n" + calls).strip() if calls else content})
    if tools:
        described = "\n".join(json.dumps(t) for t in openai_tools(tools))
        instruction = GENERIC_INSTRUCTION.format(tools=described)
        if out and out[0]["role"] in ("system", "developer"):
            out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + instruction}
        else:
            out.insert(0, {"role": "system", "content": instruction})
    return out


def _object(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return arguments
