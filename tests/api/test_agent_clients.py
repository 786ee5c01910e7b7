"""Agent clients replayed against /v1/chat/completions on the fake engine: the exact request each sends with tools
(turn one, and turn two's history), read from the client's source, and the client's own parsing of the answer,
encoded below as a small function per client that does with the SSE chunks what the client does.

A request field a client really sends must be honoured or accepted: `reasoning_effort` (Cline, Roo Code, Zed) was the
one refused, and now reaches the chat template as vLLM passes it.

Sources (read 2026-12; newest snapshot of each repository):
- Continue: continuedev/continue core/llm/openaiTypeConverters.ts (toChatBody, toChatMessage, fromChatCompletionChunk,
  fromChatResponse), core/llm/llms/OpenAI.ts (modifyChatBody), core/llm/index.ts (streamChat via the adapter),
  packages/openai-adapters/src/apis/OpenAI.ts (modifyChatBody, chatCompletionStream), gui/src/redux/slices/
  sessionSlice.ts (applyToolCallDelta), gui/src/util/toolCallState.ts (addToolCallDeltaToState).
- Copilot Chat BYOK: microsoft/vscode-copilot-chat src/extension/byok/node/openAIEndpoint.ts (interceptBody,
  getExtraHeaders), src/platform/networking/common/networking.ts (createCapiRequestBody, networkRequest headers),
  src/extension/prompt/node/chatMLFetcher.ts (preparePostOptions), src/extension/conversation/vscode-node/
  languageModelAccess.ts (tools, tool_choice), src/platform/networking/node/stream.ts (StreamingToolCalls, the SSE
  processor); microsoft/vscode-prompt-tsx src/base/output/openaiConvert.ts (message shapes).
- Cline: cline/cline sdk/packages/llms/src/providers/vendors/openai-compatible.ts (createOpenAICompatible with
  includeUsage), sdk/packages/llms/src/providers/ai-sdk.ts (streamText), .../routing/portable-reasoning.ts; through
  vercel/ai packages/openai-compatible/src/chat/openai-compatible-chat-language-model.ts (3.0.35: getArgs, doStream,
  chunk schema), openai-compatible-prepare-tools.ts, convert-to-openai-compatible-chat-messages.ts,
  packages/provider-utils/src/streaming-tool-call-tracker.ts, packages/ai/src/prompt/prepare-tool-choice.ts.
- Roo Code: RooCodeInc/Roo-Code src/api/providers/openai.ts (createMessage, processToolCalls), base-provider.ts
  (convertToolsForOpenAI), src/api/transform/openai-format.ts, src/api/transform/reasoning.ts (getOpenAiReasoning),
  src/core/assistant-message/NativeToolCallParser.ts (processRawChunk), src/core/task/Task.ts (tool_choice "auto").
- Zed: zed-industries/zed crates/open_ai/src/open_ai.rs (Request, RequestMessage, ResponseStreamEvent, ChoiceDelta,
  ToolCallChunk, stream_completion), crates/language_models/src/provider/open_ai.rs (into_open_ai,
  OpenAiEventMapper), crates/language_models/src/provider/open_ai_compatible.rs.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.api.conftest import Served
from tests.fake_engine import FakeEngine

MODEL = "smollm2-135m-instruct"
TEXT = "Let me look."
SYSTEM = "You are a coding agent."
ASK = "Read src/main.py"


def _call(name: str, arguments: dict[str, Any]) -> str:
    """What the model writes for a call under the generic prompt (Hermes' format, parsed by vLLM's hermes parser)."""
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": arguments})}\n</tool_call>'


def _serve(serve_fake, reply: str) -> Served:
    return serve_fake(engine=FakeEngine(reply=reply), model_id=MODEL)


def _post(served: Served, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(served.url + "/v1/chat/completions", json=body, headers=headers or {}, timeout=30)


def _lines(served: Served, body: dict[str, Any], headers: dict[str, str] | None = None) -> list[str]:
    """The raw lines of a streamed answer (every client here checks the status and reads text/event-stream)."""
    response = _post(served, body, headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return response.text.splitlines()


def _data(lines: list[str]) -> list[str]:
    """SSE `data:` payloads as eventsource parsers read them (the openai SDKs, the AI SDK, Copilot's splitter)."""
    return [line[5:].removeprefix(" ") for line in lines if line.startswith("data:")]


def _parsable(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


# ---- Continue (agent mode, provider "openai") ---------------------------------------------------------------------
# core/llm/index.ts streamChat -> toChatBody (openaiTypeConverters.ts) -> OpenAI.modifyChatBody (core/llm/llms/
# OpenAI.ts: parallel_tool_calls false when tools are sent, for models not starting with "o3") -> the openai-adapters'
# modifyChatBody (stream_options include_usage when streaming) -> the openai node SDK. Fields left undefined
# (top_p, penalties, stop, prediction, tool_choice, strict) vanish in JSON.stringify.
CONTINUE_TOOL = {"type": "function", "function": {
    "name": "read_file", "description": "Use this tool if you need to view the contents of an existing file.",
    "parameters": {"type": "object", "required": ["filepath"], "properties": {
        "filepath": {"type": "string", "description": "The path of the file to read"}}}}}
CONTINUE_ARGS = {"filepath": "src/main.py"}


def continue_body(messages: list[Any], stream: bool = True) -> dict[str, Any]:
    body = {"messages": messages, "model": MODEL, "max_tokens": 4096, "stream": stream, "tools": [CONTINUE_TOOL],
            "parallel_tool_calls": False}
    return {**body, "stream_options": {"include_usage": True}} if stream else body


CONTINUE_HEADERS = {"Authorization": "Bearer sk-local", "Content-Type": "application/json",
                    "Accept": "application/json"}


def continue_parse(payloads: list[str]) -> tuple[str, list[dict[str, Any]]]:
    """fromChatCompletionChunk: a delta with content yields only the text (its tool_calls are lost), else its calls
    of type function (or none); sessionSlice.applyToolCallDelta finds the call by id, else takes the last one, and
    addToolCallDeltaToState merges names and appends arguments until they parse as JSON."""
    text, calls = "", list[dict[str, Any]]()
    for payload in payloads:
        if payload == "[DONE]":  # the openai SDK ends the stream there
            break
        chunk = json.loads(payload)
        choices = chunk.get("choices") or [{}]
        delta = choices[0].get("delta")
        if not delta:
            continue
        if delta.get("content"):
            text += delta["content"]
        elif delta.get("tool_calls"):
            for delta_call in delta["tool_calls"]:
                if delta_call.get("type") in (None, "function"):
                    _continue_apply(delta_call, calls)
    return text, calls


def _continue_apply(delta: dict[str, Any], calls: list[dict[str, Any]]) -> None:
    if delta.get("id"):
        at = next((i for i, call in enumerate(calls) if call["id"] == delta["id"]), -1)
    else:
        at = len(calls) - 1
    current = calls[at] if at >= 0 else {"id": "", "name": "", "arguments": ""}
    name, arguments = (delta.get("function") or {}).get("name") or "", (delta.get("function") or {}).get(
        "arguments") or ""
    merged_name = current["name"]
    if name.startswith(current["name"]):
        merged_name = name
    elif not current["name"].startswith(name):
        merged_name = current["name"] + name
    merged_arguments = current["arguments"] if _parsable(current["arguments"]) else current["arguments"] + arguments
    merged = {"id": current["id"] or delta.get("id") or "", "name": merged_name, "arguments": merged_arguments}
    if at >= 0:
        calls[at] = merged
    else:
        calls.append(merged)


def test_continue_agent_turn_one_streams_a_call_continue_keeps(serve_fake) -> None:
    served = _serve(serve_fake, TEXT + _call("read_file", CONTINUE_ARGS))
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ASK}]
    text, calls = continue_parse(_data(_lines(served, continue_body(messages), CONTINUE_HEADERS)))
    assert text == TEXT
    (call,) = calls
    assert call["id"] and call["name"] == "read_file" and json.loads(call["arguments"]) == CONTINUE_ARGS


def test_continue_turn_two_history_is_accepted(serve_fake) -> None:
    served = _serve(serve_fake, "It prints hello.")
    # toChatMessage: an assistant turn's empty content becomes " " (LM Studio refuses ""), arguments default "{}";
    # tool results are strings with tool_call_id; text-only part lists are joined into one string
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": ASK},
        {"role": "assistant", "content": " ", "tool_calls": [{"id": "call_abc", "type": "function", "function": {
            "name": "read_file", "arguments": json.dumps(CONTINUE_ARGS)}}]},
        {"role": "tool", "content": "print('hello')", "tool_call_id": "call_abc"},
        {"role": "user", "content": "What does it do?"},
    ]
    text, calls = continue_parse(_data(_lines(served, continue_body(messages), CONTINUE_HEADERS)))
    assert (text, calls) == ("It prints hello.", [])


def test_continue_non_streamed_call(serve_fake) -> None:
    """A model configured with `stream: false` goes through chatCompletionNonStream; fromChatResponse keeps the
    calls (content "") when message.tool_calls has one."""
    served = _serve(serve_fake, TEXT + _call("read_file", CONTINUE_ARGS))
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ASK}]
    response = _post(served, continue_body(messages, stream=False), CONTINUE_HEADERS)
    assert response.status_code == 200, response.text
    message = response.json()["choices"][0]["message"]
    (call,) = [c for c in message["tool_calls"] if c.get("type") in (None, "function")]
    assert call["function"]["name"] == "read_file" and json.loads(call["function"]["arguments"]) == CONTINUE_ARGS


# ---- GitHub Copilot Chat, BYOK custom OpenAI-compatible endpoint, apiType chatCompletions ---------------------------
# createCapiRequestBody: messages (prompt-tsx's OpenAI conversion: strings, assistant content "" beside tool_calls) and
# model, plus postOptions from chatMLFetcher.preparePostOptions (temperature, top_p, n 1, stream true) and the LM
# API wrapper's tools / tool_choice; OpenAIEndpoint.interceptBody deletes max_tokens, fills missing parameters with an
# empty object schema and adds stream_options include_usage. Tool choice is named only in the LM API's Required mode.
COPILOT_TOOLS = [
    {"type": "function", "function": {
        "name": "read_file", "description": "Read the contents of a file.",
        "parameters": {"type": "object", "properties": {
            "filePath": {"type": "string", "description": "The absolute path of the file to read."},
            "startLine": {"type": "number"}, "endLine": {"type": "number"}},
            "required": ["filePath", "startLine", "endLine"]}}},
    {"type": "function", "function": {"name": "get_changed_files", "description": "Get git diffs.",
                                      "parameters": {"type": "object", "properties": {}}}},
]
COPILOT_ARGS = {"filePath": "/repo/src/main.py", "startLine": 1, "endLine": 40}
COPILOT_HEADERS = {"Authorization": "Bearer sk-local", "Content-Type": "application/json",
                   "X-Request-Id": "0b5e7a0e-2d1f-4f7e-9a51-3c1f0e6b9d11", "X-GitHub-Api-Version": "2025-05-01",
                   "X-Interaction-Type": "conversation-agent", "x-onbehalf-extension-id": "GitHub.copilot-chat/0.33.0"}


def copilot_body(messages: list[Any], **extra: Any) -> dict[str, Any]:
    return {"messages": messages, "model": MODEL, "temperature": 0.1, "top_p": 1, "n": 1, "stream": True,
            "tools": COPILOT_TOOLS, "stream_options": {"include_usage": True}, **extra}


def copilot_parse(payloads: list[str]) -> tuple[str, list[dict[str, Any]], list[str]]:
    """The SSE processor: usage is taken from any chunk; a chunk whose choices is null or missing is an error
    (logged); StreamingToolCalls.update finds a call by id, else continues the last one, and starts a new one when
    the delta's id differs; the calls complete on finish_reason tool_calls or stop."""
    text, errors = "", list[str]()
    calls: list[dict[str, Any]] = []
    done: list[dict[str, Any]] | None = None
    for payload in payloads:
        if payload == "[DONE]":
            break
        chunk = json.loads(payload)
        if chunk.get("choices") is None:
            errors.append(payload)
            continue
        for choice in chunk["choices"]:
            delta = choice.get("delta") or {}
            text += delta.get("content") or ""
            for delta_call in delta.get("tool_calls") or ():
                _copilot_update(delta_call, calls)
            if choice.get("finish_reason") in ("tool_calls", "stop") and calls:
                done = [{"id": c["id"], "name": c["name"], "arguments": c["arguments"]} for c in calls]
    return text, done or [], errors


def _copilot_update(delta: dict[str, Any], calls: list[dict[str, Any]]) -> None:
    current = next((c for c in calls if delta.get("id") and c["id"] == delta["id"]), None) or (
        calls[-1] if calls else None)
    if current is None or (delta.get("id") and current["id"] and current["id"] != delta["id"]):
        current = {"id": None, "name": None, "arguments": ""}
        calls.append(current)
    function = delta.get("function") or {}
    current["id"] = delta.get("id") or current["id"]
    current["name"] = function.get("name") or current["name"]
    current["arguments"] += function.get("arguments") or ""


def test_copilot_agent_turn_one_streams_a_call_copilot_completes(serve_fake) -> None:
    served = _serve(serve_fake, TEXT + _call("read_file", COPILOT_ARGS))
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ASK}]
    text, calls, errors = copilot_parse(_data(_lines(served, copilot_body(messages), COPILOT_HEADERS)))
    assert errors == [] and text == TEXT
    (call,) = calls
    assert call["id"] and call["name"] == "read_file" and json.loads(call["arguments"]) == COPILOT_ARGS


def test_copilot_required_tool_mode_names_the_tool(serve_fake) -> None:
    """languageModelAccess: LanguageModelChatToolMode.Required with one tool -> tool_choice names it."""
    served = _serve(serve_fake, json.dumps(COPILOT_ARGS))
    body = copilot_body([{"role": "user", "content": ASK}], tools=COPILOT_TOOLS[:1],
                        tool_choice={"type": "function", "function": {"name": "read_file"}})
    text, calls, errors = copilot_parse(_data(_lines(served, body, COPILOT_HEADERS)))
    assert errors == [] and text == "" and [c["name"] for c in calls] == ["read_file"]
    assert json.loads(calls[0]["arguments"]) == COPILOT_ARGS


def test_copilot_turn_two_history_and_thinking_model_fields_are_accepted(serve_fake) -> None:
    served = _serve(serve_fake, "Done.")
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": ASK},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "function": {
            "name": "read_file", "arguments": json.dumps(COPILOT_ARGS)}, "type": "function"}]},
        {"role": "tool", "content": "print('hello')", "tool_call_id": "call_1"},
        {"role": "user", "content": "Explain it."},
    ]
    # a BYOK model marked thinking-capable: temperature deleted, max_completion_tokens = max_tokens (then undefined)
    body = copilot_body(messages)
    del body["temperature"]
    text, calls, errors = copilot_parse(_data(_lines(served, {**body, "max_completion_tokens": 8192},
                                                     COPILOT_HEADERS)))
    assert (text, calls, errors) == ("Done.", [], [])


# ---- Cline (OpenAI Compatible provider): the Vercel AI SDK's @ai-sdk/openai-compatible 3.x --------------------------
# getArgs + doStream: model, max_tokens (maxOutputTokens: the model's max output), messages, tools ({type, function:
# {name, description, parameters}}), tool_choice "auto" (streamText's default when tools are given), stream true and
# stream_options include_usage (Cline's createOpenAICompatible sets includeUsage). Undefined keys (temperature unless
# configured, user, seed, verbosity) vanish.
CLINE_TOOL = {"type": "function", "function": {
    "name": "read_file", "description": "Read the contents of a file.",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"],
                   "additionalProperties": False, "$schema": "http://json-schema.org/draft-07/schema#"}}}
CLINE_ARGS = {"path": "src/main.py"}
AI_SDK_HEADERS = {"Authorization": "Bearer sk-local", "Content-Type": "application/json",
                  "User-Agent": "ai-sdk/openai-compatible/3.0.35"}


def cline_body(messages: list[Any], **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 8192, "messages": messages, "tools": [CLINE_TOOL],
            "tool_choice": "auto", "stream": True, "stream_options": {"include_usage": True}, **extra}


def _ai_sdk_chunk_ok(chunk: Any) -> bool:
    """The chunk schema (zod): choices is a required array; a tool call delta's function object is required, its
    index a number or null; role 'assistant' or ''; usage numbers or null."""
    def optional(value: Any, kind: type | tuple[type, ...]) -> bool:
        return value is None or (isinstance(value, kind) and not isinstance(value, bool))

    if not isinstance(chunk, dict) or not isinstance(chunk.get("choices"), list):
        return isinstance(chunk, dict) and isinstance((chunk.get("error") or {}).get("message"), str)
    for choice in chunk["choices"]:
        delta = choice.get("delta")
        if not optional(choice.get("finish_reason"), str) or not (delta is None or isinstance(delta, dict)):
            return False
        for call in (delta or {}).get("tool_calls") or ():
            if not isinstance(call.get("function"), dict) or not optional(call.get("index"), int):
                return False
            if not optional(call.get("id"), str) or not optional(call["function"].get("name"), str):
                return False
        if (delta or {}).get("role") not in (None, "assistant", ""):
            return False
    usage = chunk.get("usage")
    return usage is None or all(optional(usage.get(k), (int, float)) for k in ("prompt_tokens", "completion_tokens"))


def ai_sdk_parse(payloads: list[str]) -> tuple[str, list[dict[str, Any]], list[str]]:
    """doStream: a chunk failing the schema is an error part; text from delta.content; tool-call deltas are held by
    index until a name arrives, then StreamingToolCallTracker finds the call by id, else by index, else the latest;
    a new call needs a string id and name (else InvalidResponseDataError); flush emits every call at the end."""
    text, errors, calls = "", [], []
    by_id: dict[str, dict[str, Any]] = {}
    by_index: dict[int, dict[str, Any]] = {}
    for payload in payloads:
        if payload == "[DONE]":
            continue
        chunk = json.loads(payload)
        if not _ai_sdk_chunk_ok(chunk) or "error" in chunk:
            errors.append(payload)
            continue
        delta = (chunk["choices"][0] if chunk["choices"] else {}).get("delta") or {}
        text += delta.get("content") or ""
        for delta_call in delta.get("tool_calls") or ():
            found = by_id.get(delta_call.get("id") or "") or by_index.get(delta_call.get("index"))
            if found is None:
                if not isinstance(delta_call.get("id"), str) or delta_call["function"].get("name") is None:
                    errors.append(f"InvalidResponseDataError: {delta_call}")
                    continue
                found = {"id": delta_call["id"], "name": delta_call["function"]["name"], "arguments": ""}
                calls.append(found)
                by_id[found["id"]] = found
            found["arguments"] += delta_call["function"].get("arguments") or ""
            if delta_call.get("index") is not None:
                by_index[delta_call["index"]] = found
    return text, calls, errors


def test_cline_turn_one_streams_a_call_the_ai_sdk_accepts(serve_fake) -> None:
    served = _serve(serve_fake, TEXT + _call("read_file", CLINE_ARGS))
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ASK}]
    text, calls, errors = ai_sdk_parse(_data(_lines(served, cline_body(messages), AI_SDK_HEADERS)))
    assert errors == [] and text == TEXT
    (call,) = calls
    assert call["name"] == "read_file" and json.loads(call["arguments"]) == CLINE_ARGS


def test_cline_turn_two_history_is_accepted(serve_fake) -> None:
    served = _serve(serve_fake, "Done.")
    # convertToOpenAICompatibleChatMessages: a lone text part becomes a string, several stay a part list; an
    # assistant turn with only calls has content null, reasoning goes in reasoning_content; a tool result's JSON
    # output is stringified
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": [{"type": "text", "text": ASK}, {"type": "text", "text": "<environment_details>"}]},
        {"role": "assistant", "content": None, "reasoning_content": "I need the file.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "read_file", "arguments": json.dumps(
                CLINE_ARGS)}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"content": "print('hello')"})},
        {"role": "assistant", "content": "The file prints hello."},
        {"role": "user", "content": "Thanks."},
    ]
    text, calls, errors = ai_sdk_parse(_data(_lines(served, cline_body(messages), AI_SDK_HEADERS)))
    assert (text, calls, errors) == ("Done.", [], [])


def test_cline_with_reasoning_on_sends_reasoning_effort(serve_fake) -> None:
    served = _serve(serve_fake, TEXT + _call("read_file", CLINE_ARGS))
    body = cline_body([{"role": "user", "content": ASK}], reasoning_effort="medium")
    text, calls, errors = ai_sdk_parse(_data(_lines(served, body, AI_SDK_HEADERS)))
    assert errors == [] and text == TEXT and [c["name"] for c in calls] == ["read_file"]


def test_the_ai_sdk_non_streamed_call(serve_fake) -> None:
    """doGenerate (generateText): choices[0].message.content (string or null) and tool_calls with function.name
    and function.arguments as strings; the id may be null."""
    served = _serve(serve_fake, TEXT + _call("read_file", CLINE_ARGS))
    body = {k: v for k, v in cline_body([{"role": "user", "content": ASK}]).items()
            if k not in ("stream", "stream_options")}
    response = _post(served, body, AI_SDK_HEADERS)
    assert response.status_code == 200, response.text
    message = response.json()["choices"][0]["message"]
    assert message["content"] in (None, TEXT)
    (call,) = message["tool_calls"]
    assert isinstance(call["function"]["name"], str) and isinstance(call["function"]["arguments"], str)
    assert json.loads(call["function"]["arguments"]) == CLINE_ARGS


# ---- Roo Code (OpenAI Compatible provider, src/api/providers/openai.ts) ---------------------------------------------
# createMessage (streaming on by default): model, temperature (0 unless set), messages, stream, stream_options,
# tools through convertToolsForOpenAI (strict true, additionalProperties false, every property required, nullable
# type arrays reduced), tool_choice "auto" and parallel_tool_calls true (Task.ts metadata); max_completion_tokens only
# with includeMaxTokens. A model with prompt caching puts cache_control on text parts.
ROO_TOOL = {"type": "function", "function": {
    "name": "read_file", "description": "Read a file.", "strict": True,
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}, "mode": {"type": "string"}},
                   "required": ["path", "mode"], "additionalProperties": False}}}
ROO_MCP_TOOL = {"type": "function", "function": {  # mcp-- tools keep their schema and get strict false
    "name": "mcp--github--search", "description": "Search.", "strict": False,
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}, "limit": {"type": ["integer", "null"]},
                                                    "sort": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
                   "required": ["q"]}}}
ROO_ARGS = {"path": "src/main.py", "mode": "slice"}
ROO_HEADERS = {"Authorization": "Bearer sk-local", "HTTP-Referer": "https://github.com/RooVetGit/Roo-Cline",
               "X-Title": "Roo Code", "User-Agent": "RooCode/3.40.0"}


def roo_body(messages: list[Any], stream: bool = True, **extra: Any) -> dict[str, Any]:
    body = {"model": MODEL, "messages": messages, "tools": [ROO_TOOL, ROO_MCP_TOOL], "tool_choice": "auto",
            "parallel_tool_calls": True, **extra}
    if stream:
        body.update(temperature=0, stream=True, stream_options={"include_usage": True})
    return body


def roo_parse(payloads: list[str]) -> tuple[str, list[dict[str, Any]]]:
    """createMessage's loop: `chunk.choices?.[0]?.delta ?? {}`; processToolCalls forwards each delta's (index, id,
    name, arguments) to NativeToolCallParser.processRawChunk, which tracks calls by index, starts one only on a
    delta carrying an id, and ends them on finish_reason tool_calls (or finalizeRawChunks at the stream's end)."""
    text, tracked = "", dict[int, dict[str, Any]]()
    for payload in payloads:
        if payload == "[DONE]":
            break
        chunk = json.loads(payload)
        choice = (chunk.get("choices") or [{}])[0]
        delta = choice.get("delta") or {}
        text += delta.get("content") or ""
        for raw in delta.get("tool_calls") or ():
            call = tracked.get(raw["index"])
            if call is None and raw.get("id"):
                call = tracked[raw["index"]] = {"id": raw["id"], "name": "", "arguments": ""}
            if call is None:
                continue
            call["name"] = (raw.get("function") or {}).get("name") or call["name"]
            call["arguments"] += (raw.get("function") or {}).get("arguments") or ""
    return text, [tracked[index] for index in sorted(tracked)]


ROO_TURN_ONE = [
    {"role": "system", "content": [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]},
    {"role": "user", "content": [{"type": "text", "text": "<task>Read src/main.py</task>"},
                                 {"type": "text", "text": "<environment_details>",
                                  "cache_control": {"type": "ephemeral"}}]},
]


def test_roo_turn_one_streams_a_call_roo_tracks_by_index(serve_fake) -> None:
    served = _serve(serve_fake, TEXT + _call("read_file", ROO_ARGS))
    text, calls = roo_parse(_data(_lines(served, roo_body(ROO_TURN_ONE), ROO_HEADERS)))
    assert text == TEXT
    (call,) = calls
    assert call["id"] and call["name"] == "read_file" and json.loads(call["arguments"]) == ROO_ARGS


def test_roo_turn_two_history_is_accepted(serve_fake) -> None:
    served = _serve(serve_fake, "Done.")
    # convertToOpenAiMessages: assistant content "" beside tool_calls, tool results as strings ("(empty)" when
    # empty), user turns as text-part lists
    messages = [*ROO_TURN_ONE,
                {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function", "function": {
                    "name": "read_file", "arguments": json.dumps(ROO_ARGS)}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "(empty)"},
                {"role": "user", "content": [{"type": "text", "text": "<environment_details>"}]}]
    text, calls = roo_parse(_data(_lines(served, roo_body(messages, max_completion_tokens=4096), ROO_HEADERS)))
    assert (text, calls) == ("Done.", [])


def test_roo_non_streamed_call(serve_fake) -> None:
    """openAiStreamingEnabled false: the same tools, no temperature; message.tool_calls of type function become
    tool_call events, message.content (or "") the text."""
    served = _serve(serve_fake, TEXT + _call("read_file", ROO_ARGS))
    response = _post(served, roo_body(ROO_TURN_ONE, stream=False), ROO_HEADERS)
    assert response.status_code == 200, response.text
    message = response.json()["choices"][0]["message"]
    (call,) = [c for c in message["tool_calls"] if c["type"] == "function"]
    assert call["function"]["name"] == "read_file" and json.loads(call["function"]["arguments"]) == ROO_ARGS
    assert (message["content"] or "") == TEXT


def test_roo_with_reasoning_effort_enabled(serve_fake) -> None:
    served = _serve(serve_fake, TEXT + _call("read_file", ROO_ARGS))
    text, calls = roo_parse(_data(_lines(served, roo_body(ROO_TURN_ONE, reasoning_effort="medium"), ROO_HEADERS)))
    assert text == TEXT and [c["name"] for c in calls] == ["read_file"]


# ---- Zed (language_models.openai_compatible) -------------------------------------------------------------------------
# into_open_ai + open_ai::Request: model, messages, stream, stream_options (include_usage true), max_completion_tokens
# (the model's max_output_tokens), temperature (request's or 1.0), tools ({type, function: {name, description,
# parameters}}), tool_choice only when the agent sets one ("required" for Any), parallel_tool_calls false with tools
# where the model's capabilities allow it, prompt_cache_key (the thread id) where allowed, reasoning_effort from the
# model's settings. An assistant turn of only calls has content null; reasoning_content rides on assistant turns.
ZED_TOOL = {"type": "function", "function": {
    "name": "read_file", "description": "Reads the content of the given file in the project.",
    "parameters": {"type": "object", "properties": {
        "path": {"type": "string"}, "start_line": {"type": ["integer", "null"], "format": "uint32", "minimum": 0},
        "end_line": {"type": ["integer", "null"], "format": "uint32", "minimum": 0}},
        "required": ["path"], "additionalProperties": False}}}
ZED_ARGS = {"path": "project/src/main.py"}
ZED_HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-local"}


def zed_body(messages: list[Any], **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": messages, "stream": True, "stream_options": {"include_usage": True},
            "max_completion_tokens": 8192, "temperature": 1.0, "tools": [ZED_TOOL], "parallel_tool_calls": False,
            "prompt_cache_key": "5f0c2a7e-thread", **extra}


def _zed_event(line: str) -> dict[str, Any]:
    """serde into ResponseStreamResult (untagged): Ok(ResponseStreamEvent { choices: Vec<ChoiceDelta>, usage:
    Option<Usage> }) or Err { error: { message } }; ChoiceDelta needs an integer index, ToolCallChunk an integer
    index (usize), Usage three integers; a delta's role must be one of Zed's Role names. Anything else fails the
    whole stream."""
    value = json.loads(line)

    def uint(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    def opt_str(v: Any) -> bool:
        return v is None or isinstance(v, str)

    if isinstance(value.get("error"), dict) and isinstance(value["error"].get("message"), str) \
            and "choices" not in value:
        raise AssertionError(f"Zed reads an error: {value['error']['message']}")
    assert isinstance(value.get("choices"), list), f"Zed fails on a chunk without choices: {line}"
    usage = value.get("usage")
    assert usage is None or all(uint(usage.get(k)) for k in ("prompt_tokens", "completion_tokens", "total_tokens"))
    for choice in value["choices"]:
        assert uint(choice.get("index")) and opt_str(choice.get("finish_reason")), line
        delta = choice.get("delta")
        if delta is None:
            continue
        assert delta.get("role") in (None, "user", "assistant", "system", "tool"), line
        assert opt_str(delta.get("content")) and opt_str(delta.get("reasoning_content")), line
        for call in delta.get("tool_calls") or ():
            assert uint(call.get("index")) and opt_str(call.get("id")), line
            function = call.get("function")
            assert function is None or (opt_str(function.get("name")) and opt_str(function.get("arguments"))), line
    return value


def zed_parse(lines: list[str]) -> tuple[str, list[dict[str, Any]], str | None]:
    """stream_completion strips "data: " (or "data:"), stops at [DONE]; OpenAiEventMapper takes the first choice:
    content is text, tool-call deltas merge by index, and only finish_reason "tool_calls" turns them into tool uses
    (with arguments parsed as JSON); "stop" ends the turn without them."""
    text, stop = "", None
    by_index: dict[int, dict[str, Any]] = {}
    uses: list[dict[str, Any]] = []
    for line in lines:
        payload = line.removeprefix("data: ") if line.startswith("data: ") else line.removeprefix("data:") \
            if line.startswith("data:") else None
        if payload is None:
            continue
        if payload == "[DONE]":
            break
        event = _zed_event(payload)
        if not event["choices"]:
            continue
        choice = event["choices"][0]
        delta = choice.get("delta") or {}
        text += delta.get("content") or ""
        for chunk in delta.get("tool_calls") or ():
            entry = by_index.setdefault(chunk["index"], {"id": "", "name": "", "arguments": ""})
            entry["id"] = chunk.get("id") or entry["id"]
            function = chunk.get("function") or {}
            entry["name"] = function.get("name") or entry["name"]
            entry["arguments"] += function.get("arguments") or ""
        if choice.get("finish_reason") == "tool_calls":
            uses += [{**entry, "input": json.loads(entry["arguments"])} for entry in by_index.values()]
            by_index.clear()
        if choice.get("finish_reason"):
            stop = "tool_use" if choice["finish_reason"] == "tool_calls" else "end_turn"
    return text, uses, stop


def test_zed_turn_one_streams_a_call_zed_parses_strictly(serve_fake) -> None:
    served = _serve(serve_fake, TEXT + _call("read_file", ZED_ARGS))
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ASK}]
    text, uses, stop = zed_parse(_lines(served, zed_body(messages), ZED_HEADERS))
    assert (text, stop) == (TEXT, "tool_use")
    (use,) = uses
    assert use["id"] and use["name"] == "read_file" and use["input"] == ZED_ARGS


def test_zed_required_tool_choice(serve_fake) -> None:
    """LanguageModelToolChoice::Any -> "required": the answer is constrained to a call of one of the tools."""
    served = _serve(serve_fake, json.dumps([{"name": "read_file", "parameters": ZED_ARGS}]))
    body = zed_body([{"role": "user", "content": ASK}], tool_choice="required")
    text, uses, stop = zed_parse(_lines(served, body, ZED_HEADERS))
    assert (text, stop) == ("", "tool_use") and [(u["name"], u["input"]) for u in uses] == [("read_file", ZED_ARGS)]


def test_zed_turn_two_history_is_accepted(serve_fake) -> None:
    served = _serve(serve_fake, "Done.")
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": ASK},
        {"role": "assistant", "content": None, "reasoning_content": "Read it first.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "read_file",
                                                              "arguments": json.dumps(ZED_ARGS)}}]},
        {"role": "tool", "content": "print('hello')", "tool_call_id": "call_1"},
        {"role": "assistant", "content": [{"type": "text", "text": "It prints."}, {"type": "text", "text": " Done"}]},
        {"role": "user", "content": "And the tests?"},
    ]
    text, uses, stop = zed_parse(_lines(served, zed_body(messages), ZED_HEADERS))
    assert (text, uses, stop) == ("Done.", [], "end_turn")


def test_zed_model_with_reasoning_effort_setting(serve_fake) -> None:
    served = _serve(serve_fake, TEXT + _call("read_file", ZED_ARGS))
    body = zed_body([{"role": "user", "content": ASK}], reasoning_effort="medium")
    text, uses, stop = zed_parse(_lines(served, body, ZED_HEADERS))
    assert (text, stop) == (TEXT, "tool_use") and [u["name"] for u in uses] == ["read_file"]


# ---- the replayed parsers themselves: as strict as their clients, on hand-made chunks --------------------------------
def _chunk(delta: dict[str, Any], finish: str | None = None) -> str:
    return json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def test_the_replayed_parsers_refuse_what_their_clients_refuse() -> None:
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    no_index = {k: v for k, v in call.items() if k != "index"}
    usage_only = '{"usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}'
    assert continue_parse([_chunk({"content": "x", "tool_calls": [call]})]) == ("x", [])  # calls beside content lost
    with pytest.raises(AssertionError):
        zed_parse(["data: " + _chunk({"tool_calls": [no_index]})])  # ToolCallChunk.index is required
    with pytest.raises(AssertionError):
        zed_parse(["data: " + usage_only])  # ResponseStreamEvent.choices is required
    assert zed_parse(["data: " + _chunk({"tool_calls": [call]}, "stop")])[1] == []  # only "tool_calls" yields uses
    assert ai_sdk_parse([usage_only])[2]  # the chunk schema requires choices
    assert ai_sdk_parse([_chunk({"tool_calls": [{**call, "id": None}]})])[2]  # a new call needs its id
    assert copilot_parse(['{"choices": null}'])[2]
    assert copilot_parse([_chunk({"tool_calls": [call]})])[1] == []  # completed only on tool_calls or stop
    assert roo_parse([_chunk({"tool_calls": [{**call, "id": None}]})])[1] == []  # tracked only from an id
