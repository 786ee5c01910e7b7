"""A Responses request as the generation core's chat: input items -> OpenAI chat messages, function tools ->
generation Tools, tool_choice -> ToolChoice, text.format -> the structured output the chat endpoint uses too.

As vLLM's construct_input_messages (vllm/entrypoints/openai/responses/utils.py): function_call items join the
assistant message before them as its tool_calls, function_call_output items become tool messages. Unlike it, a
`developer` message is a system message (OpenAI's new name for it; open models' templates know only `system`), and
a reasoning item is dropped when it carries no reasoning text (a summary is a digest for people, encrypted content
is readable by OpenAI alone); one with reasoning text is refused in protocol.items.
"""

from __future__ import annotations

from typing import Any

from ...engine.base import StructuredOutput
from ...errors import InvalidRequest
from ...generation.tools import Tool, ToolChoice
from .protocol import FunctionCall, FunctionCallOutput, FunctionTool, Item, Message, ResponsesRequest, text_of


def messages(items: list[Item]) -> tuple[list[dict[str, Any]], list[int]]:
    """The items as chat messages, and for each message the index of the item it began with (for a 400 naming it)."""
    out: list[dict[str, Any]] = []
    origins: list[int] = []
    for i, item in enumerate(items):
        if isinstance(item, Message):
            role = "system" if item.role == "developer" else item.role
            out.append({"role": role, "content": text_of(item.content, f"input.{i}.content")})
        elif isinstance(item, FunctionCall):
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments}}
            if out and out[-1]["role"] == "assistant":  # the text (or the calls) this call goes with
                out[-1].setdefault("tool_calls", []).append(call)
                continue
            out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutput):
            out.append({"role": "tool", "tool_call_id": item.call_id,
                        "content": text_of(item.output, f"input.{i}.output")})
        else:  # a reasoning item without reasoning text: nothing a template could show the model
            continue
        origins.append(i)
    return out, origins


def answer_message(text: str, calls: list[tuple[str, str, str]]) -> dict[str, Any]:
    """A response's output as the assistant message a later turn's conversation carries: (call_id, name, arguments)."""
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = [{"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
                                 for call_id, name, args in calls]
    return message


def tool_set(body: ResponsesRequest, tools: list[FunctionTool]) -> tuple[tuple[Tool, ...], ToolChoice]:
    """The tools and the choice as generation takes them; 400 for a choice the tools cannot meet."""
    choice = body.tool_choice
    if isinstance(choice, str):
        if choice == "required" and not tools:
            raise InvalidRequest("tool_choice 'required' needs tools", param="tool_choice")
        mode = ToolChoice(mode=choice, parallel=body.parallel_tool_calls)
    else:
        if choice.name not in {tool.name for tool in tools}:
            raise InvalidRequest(f"tool_choice names '{choice.name}', which is not among the tools",
                                 param="tool_choice.name")
        mode = ToolChoice(mode="named", name=choice.name, parallel=body.parallel_tool_calls)
    offered = tuple(Tool(name=tool.name, description=tool.description or "",
                         parameters=tool.parameters or {"type": "object", "properties": {}}) for tool in tools)
    return offered, mode


def structured(body: ResponsesRequest) -> StructuredOutput | None:
    """text.format as the engine's constraint (server/api/protocol.py's structured_output does the same for chat)."""
    if body.text is None or body.text.format.type == "text":
        return None
    if body.text.format.type == "json_object":
        return StructuredOutput(json_object=True, param="text.format")
    return StructuredOutput(json_schema=body.text.format.schema_, param="text.format.schema")
