"""Function tools on /v1/responses, on the fake engine: Codex CLI's tools and history, Copilot's two turns over
previous_response_id, forced choices; calls read by the SDK and by raw SSE as Codex CLI reads them (from
`response.output_item.done` only)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from server.generation.tools import Tool, generic
from tests.api.conftest import Served
from tests.fake_engine import FakeEngine
from tests.serverutil import openai_error, wait_until

MODEL = "smollm2-135m-instruct"  # no native tool format: the generic (Hermes) prompt and parser
SHELL = {"type": "function", "name": "shell", "description": "Runs a command", "strict": False,
         "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}},
                        "required": ["command"], "additionalProperties": False}}
TOOLS = (Tool("shell", "Runs a command", SHELL["parameters"]),)  # as generation takes it
TIMEOUT_S = 120  # the first request loads vLLM's tool parser
CALL = '<tool_call>\n{"name": "shell", "arguments": {"command": ["ls"]}}\n</tool_call>'


def _client(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.url + "/v1", api_key="none", max_retries=0)


def _sse(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    names = [line[7:] for line in response.text.splitlines() if line.startswith("event: ")]
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert names == [e["type"] for e in events]
    return events


def _prompt(served: Served, messages: list[dict[str, Any]], tools: tuple[Tool, ...] = TOOLS,
            variables: dict[str, Any] | None = None) -> list[int]:
    """What the fake engine receives: the history and tools in the generic prompt, through its chat template."""
    return served.engine.tokenize(served.engine.chat_prompt(generic(messages, tools), None, None, variables))


@pytest.fixture
def calls(serve_fake) -> Served:
    return serve_fake(FakeEngine(reply="Let me look." + CALL), model_id=MODEL)


def test_codex_cli_turn_with_tools_and_history(calls: Served) -> None:
    """Codex CLI's request (codex-rs ResponsesApiRequest): instructions, the whole history as items with its earlier
    call and that call's output, function tools with strict, store false, streamed."""
    history = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "list the files"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": None},
        {"type": "function_call", "call_id": "call_1", "name": "shell", "arguments": '{"command":["pwd"]}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "/repo"},
    ]
    body = {"model": MODEL, "instructions": "You are Codex.", "input": history, "tools": [SHELL],
            "tool_choice": "auto", "parallel_tool_calls": False, "reasoning": {"effort": "medium", "summary": "auto"},
            "store": False, "stream": True, "include": ["reasoning.encrypted_content"], "prompt_cache_key": "c-1"}
    events = _sse(httpx.post(calls.url + "/v1/responses", json=body, timeout=TIMEOUT_S))
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    message, call = done
    assert message["type"] == "message" and message["content"][0]["text"] == "Let me look."
    assert call["type"] == "function_call" and call["name"] == "shell" and call["status"] == "completed"
    assert call["call_id"].startswith("call_") and call["id"].startswith("fc_")
    assert json.loads(call["arguments"]) == {"command": ["ls"]}
    kinds = [e["type"] for e in events if e.get("output_index") == 1]
    assert kinds[0] == "response.output_item.added" and kinds[-2:] == ["response.function_call_arguments.done",
                                                                       "response.output_item.done"]
    assert set(kinds[1:-2]) == {"response.function_call_arguments.delta"}
    added = next(e["item"] for e in events if e["type"] == "response.output_item.added" and e["output_index"] == 1)
    assert added["arguments"] == "" and added["status"] == "in_progress" and added["call_id"] == call["call_id"]
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
    assert deltas == call["arguments"]
    assert events[-1]["type"] == "response.completed" and events[-1]["response"]["output"] == done
    assert events[-1]["response"]["tools"] == [SHELL] and events[-1]["response"]["parallel_tool_calls"] is False
    earlier = {"id": "call_1", "type": "function", "function": {"name": "shell", "arguments": '{"command":["pwd"]}'}}
    expected = [{"role": "system", "content": "You are Codex."}, {"role": "user", "content": "list the files"},
                {"role": "assistant", "content": None, "tool_calls": [earlier]},
                {"role": "tool", "tool_call_id": "call_1", "content": "/repo"}]
    assert calls.engine.prompts[-1] == _prompt(calls, expected, variables={"reasoning_effort": "medium"})
    assert wait_until(lambda: calls.engine.num_unfinished_requests() == 0)


def test_the_sdk_reads_function_calls(calls: Served) -> None:
    client = _client(calls)
    response = client.responses.create(model=MODEL, input="list the files", tools=[SHELL])  # type: ignore[list-item]
    assert response.status == "completed" and response.output_text == "Let me look."
    call = response.output[1]
    assert call.type == "function_call" and call.name == "shell"
    assert json.loads(call.arguments) == {"command": ["ls"]}
    with client.responses.stream(model=MODEL, input="list the files", tools=[SHELL]) as stream:  # type: ignore[list-item]
        final = stream.get_final_response()
    streamed = final.output[1]
    assert streamed.type == "function_call" and json.loads(streamed.arguments) == {"command": ["ls"]}


def test_copilot_answers_a_call_on_turn_two(calls: Served) -> None:
    client = _client(calls)
    first = client.responses.create(model=MODEL, input="list the files", tools=[SHELL])  # type: ignore[list-item]
    call = first.output[1]
    assert call.type == "function_call"
    answer = {"type": "function_call_output", "call_id": call.call_id, "output": "a.py"}
    second = client.responses.create(model=MODEL, previous_response_id=first.id, tools=[SHELL],  # type: ignore[list-item]
                                     input=[answer])  # type: ignore[list-item]
    assert second.status == "completed" and second.usage is not None
    assert second.usage.input_tokens_details.cached_tokens == 0
    made = {"id": call.call_id, "type": "function", "function": {"name": "shell", "arguments": call.arguments}}
    expected = [{"role": "user", "content": "list the files"},
                {"role": "assistant", "content": "Let me look.", "tool_calls": [made]},
                {"role": "tool", "tool_call_id": call.call_id, "content": "a.py"}]
    assert calls.engine.prompts[-1] == _prompt(calls, expected)
    wrong = httpx.post(calls.url + "/v1/responses", timeout=TIMEOUT_S, json={
        "previous_response_id": first.id, "tools": [SHELL],
        "input": [{"type": "function_call_output", "call_id": "call_nope", "output": "a.py"}]})
    error = openai_error(wrong, 400)
    assert error["param"] == "input.0.call_id" and "call_nope" in error["message"]


@pytest.mark.parametrize(("choice", "reply"), [
    ({"type": "function", "name": "shell"}, '{"command": ["ls"]}'),
    ("required", '[{"name": "shell", "parameters": {"command": ["ls"]}}]'),
], ids=["named", "required"])
def test_a_forced_choice_is_constrained_and_answered_with_a_call(serve_fake, choice: Any, reply: str) -> None:
    served = serve_fake(FakeEngine(reply=reply), model_id=MODEL)
    events = _sse(httpx.post(served.url + "/v1/responses", timeout=TIMEOUT_S, json={
        "input": "ls", "tools": [SHELL], "tool_choice": choice, "stream": True}))
    (call,) = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert call["type"] == "function_call" and json.loads(call["arguments"]) == {"command": ["ls"]}
    structured = served.engine.samplings[-1].structured
    assert structured is not None and structured.json_schema is not None  # vLLM's forced-tool schema
    assert events[-1]["response"]["tool_choice"] == choice


def test_tool_choice_none_offers_no_tool(calls: Served) -> None:
    response = _client(calls).responses.create(model=MODEL, input="hi", tools=[SHELL],  # type: ignore[list-item]
                                               tool_choice="none")
    assert [item.type for item in response.output] == ["message"]
    assert calls.engine.prompts[-1] == calls.engine.tokenize(calls.engine.chat_prompt([{"role": "user",
                                                                                         "content": "hi"}]))


def test_a_forced_call_and_a_text_format_cannot_both_constrain(calls: Served) -> None:
    body = {"input": "x", "tools": [SHELL], "tool_choice": "required",
            "text": {"format": {"type": "json_object"}}}
    assert openai_error(httpx.post(calls.url + "/v1/responses", json=body, timeout=TIMEOUT_S), 400)["param"] == \
        "tool_choice"
