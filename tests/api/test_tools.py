"""Tool calling on /v1/chat/completions with the openai SDK as the client, on the fake engine: the request shapes agent
clients send (Continue, Copilot Chat, Cline, Roo Code, Zed), answered as they parse them, streamed and not."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.api.conftest import Served
from tests.fake_engine import FakeEngine
from tests.serverutil import openai_error

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                   "properties": {"city": {"type": "string"}, "days": {"type": ["integer", "null"]},
                                  "unit": {"anyOf": [{"type": "string", "enum": ["c", "f"]}, {"type": "null"}]}},
                   "required": ["city"], "additionalProperties": False},
    "strict": True}}
READ = {"type": "function", "function": {"name": "read_file", "parameters": {
    "type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>'
MODEL = "smollm2-135m-instruct"
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def _client(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.url + "/v1", api_key="x", max_retries=0)


@pytest.fixture
def calls(serve_fake) -> Served:
    return serve_fake(engine=FakeEngine(reply="Let me look." + CALL), model_id="smollm2-135m-instruct")


def test_tools_without_tool_choice_mean_auto(calls: Served) -> None:
    answer = _client(calls).chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, READ])
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me look."
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"city": "Paris", "days": 2}


def _stream(served: Served, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream("POST", served.url + "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        return [json.loads(line[6:]) for line in response.iter_lines()
                if line.startswith("data: ") and line != "data: [DONE]"]


def test_streamed_calls_as_clients_merge_them(calls: Served) -> None:
    chunks = _stream(calls, {"messages": ASK, "tools": [WEATHER], "tool_choice": "auto",
                             "stream_options": {"include_usage": True}})
    assert all(isinstance(c["choices"], list) for c in chunks)  # the usage chunk too (Zed, the AI SDK)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    deltas = [choice["delta"] for c in chunks for choice in c["choices"]]
    assert not [d for d in deltas if d.get("content") and d.get("tool_calls")]  # Continue drops such calls
    calls_ = [call for d in deltas for call in d.get("tool_calls") or ()]
    first = calls_[0]
    assert (first["index"], first["type"], first["function"]["name"]) == (0, "function", "get_weather")
    assert first["id"] and all(c.get("id") in (None, first["id"]) for c in calls_)  # the id never changes
    assert all(isinstance(c["index"], int) for c in calls_)
    arguments = "".join(c["function"].get("arguments", "") for c in calls_)
    assert json.loads(arguments) == {"city": "Paris", "days": 2}
    assert "".join(d.get("content") or "" for d in deltas) == "Let me look."
    finishes = [choice["finish_reason"] for c in chunks for choice in c["choices"] if choice["finish_reason"]]
    assert finishes == ["tool_calls"]


def test_the_sdk_accumulates_the_stream(calls: Served) -> None:
    client = _client(calls)
    with client.chat.completions.stream(model=MODEL, messages=ASK, tools=[WEATHER]) as stream:
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] == "Paris"


def test_required_is_constrained_to_the_tools_schema(serve_fake) -> None:
    served = serve_fake(engine=FakeEngine(reply='[{"name": "read_file", "parameters": {"path": "a.py"}}]'),
                        model_id="smollm2-135m-instruct")
    answer = _client(served).chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, READ],
                                                     tool_choice="required", parallel_tool_calls=False)
    schema = served.engine.samplings[-1].structured.json_schema
    assert schema["type"] == "array" and schema["maxItems"] == 1  # vLLM's shape: one call without parallel calls
    assert {o["properties"]["name"]["enum"][0] for o in schema["items"]["anyOf"]} == {"get_weather", "read_file"}
    (call,) = answer.choices[0].message.tool_calls or []
    assert (call.function.name, json.loads(call.function.arguments)) == ("read_file", {"path": "a.py"})
    assert answer.choices[0].finish_reason == "tool_calls"


def test_a_named_tool_is_constrained_to_its_parameters(serve_fake) -> None:
    served = serve_fake(engine=FakeEngine(reply='{"path": "src/main.py"}'), model_id="smollm2-135m-instruct")
    body = {"messages": ASK, "tools": [WEATHER, READ],
            "tool_choice": {"type": "function", "function": {"name": "read_file"}}}
    chunks = _stream(served, body)
    assert served.engine.samplings[-1].structured.json_schema == READ["function"]["parameters"]
    calls_ = [call for c in chunks for ch in c["choices"] for call in ch["delta"].get("tool_calls") or ()]
    assert calls_[0]["function"]["name"] == "read_file"
    assert json.loads("".join(c["function"].get("arguments", "") for c in calls_)) == {"path": "src/main.py"}


def test_tool_choice_none_leaves_the_answer_as_text(calls: Served) -> None:
    answer = _client(calls).chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="none")
    assert answer.choices[0].finish_reason != "tool_calls" and not answer.choices[0].message.tool_calls
    assert "<tool_call>" in (answer.choices[0].message.content or "")


HISTORY = [
    {"role": "system", "content": [{"type": "text", "text": "You are a coding agent."}]},
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": None, "reasoning_content": "I should call the tool.",
     "tool_calls": [{"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21C"},
    {"role": "assistant", "content": " ", "tool_calls": [{"id": "call_2", "type": "function",
                                                          "function": {"name": "read_file", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "print('hi')"}]},
    {"role": "assistant", "content": ""},
    {"role": "user", "content": "Thanks. And tomorrow?"},
]


def test_every_history_shape_clients_send_is_accepted(calls: Served) -> None:
    answer = _client(calls).chat.completions.create(model=MODEL, messages=HISTORY, tools=[WEATHER, READ])
    assert answer.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(("change", "param"), [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}]},
     "tools.0.function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
    ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "read_file"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
    ({"messages": [*ASK, {"role": "tool", "tool_call_id": "call_9", "content": "x"}]}, "messages.1.tool_call_id"),
    ({"messages": [*ASK, {"role": "tool", "content": "x"}]}, "messages.1"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "messages.0"),
    ({"functions": [{"name": "f"}]}, "functions"),
], ids=lambda v: v if isinstance(v, str) else next(iter(v)))
def test_bad_tool_input_is_a_400_naming_the_field(calls: Served, change: dict[str, Any], param: str) -> None:
    response = httpx.post(calls.url + "/v1/chat/completions", json={"messages": ASK, **change})
    error = openai_error(response, 400)
    assert error["param"] == param, error
    assert calls.engine.samplings == []
    assert calls.value("in_flight", "chat") == 0


def test_reasoning_effort_and_template_kwargs_reach_the_chat_template(fake: Served) -> None:
    """Cline, Roo Code and Zed send reasoning_effort; vLLM passes it (and chat_template_kwargs) to the template."""
    body = {"messages": ASK, "max_tokens": 2, "reasoning_effort": "xhigh",
            "chat_template_kwargs": {"enable_thinking": False}}
    assert httpx.post(fake.url + "/v1/chat/completions", json=body).status_code == 200
    expected = fake.engine.chat_prompt([{"role": "user", "content": ASK[0]["content"]}], None, None,
                                       {"enable_thinking": False, "reasoning_effort": "xhigh"})
    assert fake.engine.prompts[-1] == fake.engine.tokenize(expected, add_special_tokens=False)


def test_without_parallel_calls_an_unforced_answer_keeps_its_first_call(serve_fake) -> None:
    two = CALL + '<tool_call>\n{"name": "read_file", "arguments": {"path": "a.py"}}\n</tool_call>'
    served = serve_fake(engine=FakeEngine(reply=two), model_id="smollm2-135m-instruct")
    client = _client(served)
    both = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, READ])
    assert [c.function.name for c in both.choices[0].message.tool_calls or []] == ["get_weather", "read_file"]
    one = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, READ], parallel_tool_calls=False)
    assert [c.function.name for c in one.choices[0].message.tool_calls or []] == ["get_weather"]
    chunks = _stream(served, {"messages": ASK, "tools": [WEATHER, READ], "parallel_tool_calls": False})
    names = [c["function"]["name"] for ch in chunks for choice in ch["choices"]
             for c in choice["delta"].get("tool_calls") or () if "name" in c["function"]]
    assert names == ["get_weather"]
