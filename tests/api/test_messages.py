"""Anthropic's Messages API as Claude Code uses it, with the official `anthropic` SDK as the client, over the fake
engine on a real socket: answers as the SDK parses them, Claude Code's request shapes, tool use, count_tokens, and
every error in Anthropic's shape naming what is wrong, with nothing leaked."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx
import pytest

from tests.api.conftest import Served
from tests.fake_engine import FakeEngine
from tests.serverutil import wait_until

MODEL = "qwen2.5-coder-7b"  # what the fixtures serve
INSTRUCT = "qwen2.5-coder-7b-instruct"  # the catalog gives it Hermes' parser: with Recording, tools go native
USER = [{"role": "user", "content": "hi"}]
READ = {"name": "read_file", "description": "Read a file",
        "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}
CALL = '<tool_call>\n{"name": "read_file", "arguments": {"path": "a.py"}}\n</tool_call>'  # Hermes' format


@dataclass
class Recording(FakeEngine):
    """Records the chat messages and tools each prompt was made from (a template that renders tools, as Qwen's:
    serve it as INSTRUCT)."""

    tool_template: bool = True
    chats: list[tuple[list[dict[str, Any]], Any]] = field(default_factory=list)

    def chat_prompt(self, messages: list[dict[str, Any]], template: str | None = None,
                    tools: list[dict[str, Any]] | None = None, variables: dict[str, Any] | None = None) -> str:
        self.chats.append((messages, tools))
        return super().chat_prompt(messages, template, tools, variables)


def client(served: Served, **options: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=served.url, api_key=options.pop("api_key", "x"), max_retries=0, **options)


def anthropic_error(response: httpx.Response, status: int, kind: str = "invalid_request_error") -> str:
    """The message of an error in Anthropic's shape with this status and type."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] == kind, body
    return str(body["error"]["message"])


def events(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """(name, data) of every event; each names itself as its data's type."""
    found = []
    for chunk in response.text.strip().split("\n\n"):
        name, data = chunk.split("\n")
        assert name.startswith("event: ") and data.startswith("data: "), chunk
        found.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return found


# ---- answers as the SDK parses them --------------------------------------------------------------
def test_a_blocking_answer_is_a_message(serve_fake) -> None:
    served = serve_fake(engine=FakeEngine(reply="def add(a, b): return a + b"))
    message = client(served).messages.create(model=MODEL, max_tokens=100, messages=USER)
    assert message.id.startswith("msg_") and message.model == MODEL and message.role == "assistant"
    assert [b.type for b in message.content] == ["text"] and message.content[0].text == "def add(a, b): return a + b"
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens == len(served.engine.prompts[0]) and message.usage.output_tokens > 0


def test_a_streamed_answer_is_the_same_message_in_named_events(serve_fake) -> None:
    served = serve_fake(engine=FakeEngine(reply="def add(a, b): return a + b"))
    sdk = client(served)
    blocking = sdk.messages.create(model=MODEL, max_tokens=100, messages=USER)
    with sdk.messages.stream(model=MODEL, max_tokens=100, messages=USER) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == final.content[0].text == blocking.content[0].text  # type: ignore[union-attr]
    assert (final.stop_reason, final.usage.input_tokens, final.usage.output_tokens) == \
        (blocking.stop_reason, blocking.usage.input_tokens, blocking.usage.output_tokens)


def test_claude_codes_stream_wire_format(serve_fake) -> None:
    """Accept: application/json while streaming, ?beta=true, x-api-key: the body's `stream` decides."""
    served = serve_fake(engine=FakeEngine(reply="one two"), keys=["k"])
    headers = {"accept": "application/json", "x-api-key": "k", "anthropic-version": "2023-06-01",
               "anthropic-beta": "claude-code-20250219"}
    response = httpx.post(served.url + "/v1/messages?beta=true", headers=headers,
                          json={"model": MODEL, "max_tokens": 50, "stream": True, "messages": USER})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    found = events(response)
    assert all(name == data["type"] for name, data in found)
    names = [name for name, _ in found]
    assert names[:2] == ["message_start", "content_block_start"] and names[-3:] == \
        ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[2:-3]) == {"content_block_delta"}
    start = found[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["output_tokens"] == 0
    assert "".join(data["delta"]["text"] for _, data in found[2:-3]) == "one two"
    assert found[-2][1] == {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                            "usage": {"output_tokens": 4}}  # "one", " ", "two" and the end


@pytest.mark.parametrize("stream", [False, True], ids=["blocking", "stream"])
def test_stop_reasons(serve_fake, stream: bool) -> None:
    served = serve_fake(engine=FakeEngine(reply="alpha beta gamma delta"))
    sdk = client(served)

    def ask(**extra: Any) -> anthropic.types.Message:
        if not stream:
            return sdk.messages.create(model=MODEL, messages=USER, **{"max_tokens": 100, **extra})
        with sdk.messages.stream(model=MODEL, messages=USER, **{"max_tokens": 100, **extra}) as answer:
            return answer.get_final_message()

    cut = ask(max_tokens=2)
    assert (cut.stop_reason, cut.usage.output_tokens) == ("max_tokens", 2)
    stopped = ask(stop_sequences=["never", "gamma"])
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", "gamma")
    assert stopped.content[0].text == "alpha beta "  # type: ignore[union-attr]
    assert ask().stop_reason == "end_turn"


# ---- what Claude Code sends ------------------------------------------------------------------------
def test_claude_codes_request_is_served_as_it_means(serve_fake) -> None:
    served = serve_fake(engine=Recording(reply="ok"), keys=["k"], model_id=INSTRUCT)
    sdk = client(served, api_key="k")
    cached = {"type": "ephemeral"}
    message = sdk.beta.messages.create(  # ?beta=true, as Claude Code calls it
        model=INSTRUCT, max_tokens=16000, metadata={"user_id": "user_abc_account_x_session_y"},
        system=[{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.0.1; cch=1234;"},
                {"type": "text", "text": "You are Claude Code.", "cache_control": cached},
                {"type": "text", "text": "Be brief.", "cache_control": cached}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
                                               {"type": "text", "text": "fix it", "cache_control": cached}]}],
        tools=[{**READ, "cache_control": cached}], betas=["claude-code-20250219"],
        extra_body={"temperature": 0.5})  # this SDK no longer types the sampling fields Claude Code still sends
    assert message.content[0].text == "ok"  # type: ignore[union-attr]
    chat, tools = served.engine.chats[-1]
    assert chat == [{"role": "system", "content": "You are Claude Code.\nBe brief."},  # the per-request hash left out
                    {"role": "user", "content": "<system-reminder>ctx</system-reminder>\nfix it"}]
    assert [t["function"]["name"] for t in tools] == ["read_file"]
    assert served.engine.samplings[-1].temperature == 0.5


def test_the_key_may_come_as_x_api_key_or_bearer_on_every_route(serve_fake) -> None:
    served = serve_fake(keys=["k"])
    body = {"model": MODEL, "max_tokens": 1, "messages": USER}
    for headers in ({"x-api-key": "k"}, {"authorization": "Bearer k"}, {"authorization": "Bearer", "x-api-key": "k"}):
        assert httpx.post(served.url + "/v1/messages", json=body, headers=headers).status_code == 200
    assert httpx.post(served.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1},
                      headers={"x-api-key": "k"}).status_code == 200
    assert "x-api-key" in anthropic_error(httpx.post(served.url + "/v1/messages", json=body), 401,
                                          "authentication_error")
    anthropic_error(httpx.post(served.url + "/v1/messages", json=body, headers={"x-api-key": "no"}), 401,
                    "authentication_error")
    with pytest.raises(anthropic.AuthenticationError):
        client(served, api_key="wrong").messages.count_tokens(model=MODEL, messages=USER)


def test_history_with_tool_use_and_results_reaches_the_template_as_chat_messages(serve_fake) -> None:
    served = serve_fake(engine=Recording(reply="done"), model_id=INSTRUCT)
    client(served).messages.create(model=INSTRUCT, max_tokens=10, tools=[READ], messages=[
        {"role": "user", "content": "read a.py and b.py"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Reading."},
            {"type": "tool_use", "id": "toolu_1", "name": "read_file", "input": {"path": "a.py"}},
            {"type": "tool_use", "id": "toolu_2", "name": "read_file", "input": {"path": "b.py"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "x = 1"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
             "content": [{"type": "text", "text": "no such file"}]},
            {"type": "text", "text": "go on"}]},
        {"role": "system", "content": "Reminder: be brief."},
        {"role": "user", "content": "and?"}])
    chat, _ = served.engine.chats[-1]
    assert chat == [
        {"role": "user", "content": "read a.py and b.py"},
        {"role": "assistant", "content": "Reading.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "read_file", "arguments": {"path": "a.py"}}},
            {"id": "toolu_2", "type": "function", "function": {"name": "read_file", "arguments": {"path": "b.py"}}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "x = 1"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: no such file"},
        {"role": "user", "content": "go on"},
        {"role": "system", "content": "Reminder: be brief."},
        {"role": "user", "content": "and?"}]


# ---- tool use -------------------------------------------------------------------------------------
def test_a_call_is_a_tool_use_block_blocking_and_streamed(serve_fake) -> None:
    served = serve_fake(engine=FakeEngine(reply="Let me look." + CALL))
    sdk = client(served)
    message = sdk.messages.create(model=MODEL, max_tokens=200, tools=[READ], messages=USER)
    assert message.stop_reason == "tool_use"
    text, use = message.content
    assert text.type == "text" and text.text == "Let me look."
    assert use.type == "tool_use" and use.id.startswith("toolu_")
    assert (use.name, use.input) == ("read_file", {"path": "a.py"})

    response = httpx.post(served.url + "/v1/messages", json={
        "model": MODEL, "max_tokens": 200, "stream": True, "tools": [READ], "messages": USER})
    found = events(response)
    starts = [data["content_block"] for name, data in found if name == "content_block_start"]
    assert [b["type"] for b in starts] == ["text", "tool_use"] and starts[1]["input"] == {}
    pieces = [data["delta"]["partial_json"] for name, data in found
              if name == "content_block_delta" and data["delta"]["type"] == "input_json_delta"]
    assert len(pieces) > 1 and json.loads("".join(pieces)) == {"path": "a.py"}
    assert found[-2][1]["delta"]["stop_reason"] == "tool_use"
    with sdk.messages.stream(model=MODEL, max_tokens=200, tools=[READ], messages=USER) as stream:
        final = stream.get_final_message()
    assert [(b.type, getattr(b, "input", None)) for b in final.content] == \
        [("text", None), ("tool_use", {"path": "a.py"})]


def test_forced_choices_and_one_call_only(serve_fake) -> None:
    served = serve_fake(engine=FakeEngine(reply='{"path": "a.py"}'))
    named = client(served).messages.create(model=MODEL, max_tokens=100, tools=[READ], messages=USER,
                                           tool_choice={"type": "tool", "name": "read_file"})
    assert named.stop_reason == "tool_use" and named.content[0].input == {"path": "a.py"}  # type: ignore[union-attr]
    assert served.engine.samplings[-1].structured is not None  # constrained to the tool's input schema

    two = serve_fake(engine=FakeEngine(reply=CALL + CALL.replace("a.py", "b.py")))
    both = client(two).messages.create(model=MODEL, max_tokens=200, tools=[READ], messages=USER)
    assert [b.input for b in both.content] == [{"path": "a.py"}, {"path": "b.py"}]  # type: ignore[union-attr]
    one = client(two).messages.create(model=MODEL, max_tokens=200, tools=[READ], messages=USER,
                                      tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    assert [b.input for b in one.content] == [{"path": "a.py"}]  # type: ignore[union-attr]
    off = client(two).messages.create(model=MODEL, max_tokens=200, tools=[READ], messages=USER,
                                      tool_choice={"type": "none"})
    assert off.stop_reason == "end_turn" and [b.type for b in off.content] == ["text"]


# ---- count_tokens ---------------------------------------------------------------------------------
def test_count_tokens_counts_the_prompt_the_model_gets(serve_fake) -> None:
    served = serve_fake(engine=FakeEngine(reply="ok"))
    sdk = client(served)
    asked = {"model": MODEL, "system": "You are terse.", "messages": USER}
    counted = sdk.messages.count_tokens(**asked).input_tokens  # type: ignore[arg-type]
    assert counted == sdk.messages.create(max_tokens=5, **asked).usage.input_tokens  # type: ignore[arg-type]
    with_tools = sdk.beta.messages.count_tokens(tools=[READ], **asked).input_tokens  # type: ignore[arg-type]
    assert with_tools > counted
    assert with_tools == sdk.messages.create(max_tokens=5, tools=[READ], **asked).usage.input_tokens  # type: ignore


def test_count_tokens_takes_no_engine_slot(serve_fake) -> None:
    served = serve_fake(engine=FakeEngine(token_delay_s=0.05), max_concurrent=1, max_queued=0)
    runner = threading.Thread(target=lambda: httpx.post(served.url + "/v1/messages", timeout=30, json={
        "model": MODEL, "max_tokens": 20, "messages": USER}))
    runner.start()
    assert wait_until(lambda: served.runtime.limiter.active == 1)
    full = httpx.post(served.url + "/v1/messages", json={"model": MODEL, "max_tokens": 1, "messages": USER})
    anthropic_error(full, 429, "rate_limit_error")
    counted = httpx.post(served.url + "/v1/messages/count_tokens?beta=true", json={"model": MODEL, "messages": USER})
    assert counted.status_code == 200 and counted.json()["input_tokens"] > 0
    runner.join()
    assert served.engine.num_unfinished_requests() == 0


# ---- bad input: 400 in Anthropic's shape, naming what is wrong -------------------------------------
def _turns(*content: Any) -> list[dict[str, Any]]:
    """A call of read_file (toolu_1), then a user turn with `content`."""
    return [{"role": "user", "content": "go"}, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "read_file", "input": {"path": "a.py"}}]},
        {"role": "user", "content": list(content)}]


BAD: dict[str, tuple[dict[str, Any], str]] = {  # id: (fields over a valid request, what the message names)
    "no max_tokens": ({"max_tokens": None}, "max_tokens"),
    "malformed block": ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
                        "messages.0.content.0.text"),
    "block without a type": ({"messages": [{"role": "user", "content": [{"text": "x"}]}]}, "messages.0.content.0"),
    "unknown block type": ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, "messages.0.content.0"),
    "image block": ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}]}, "image blocks"),
    "document in a result": ({"messages": _turns({"type": "tool_result", "tool_use_id": "toolu_1", "content": [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}]})},
        "messages.2.content.0.content.0"),
    "result of no call": ({"messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_9", "content": "x"}]}]}, "messages.0.content.0"),
    "result of another call": ({"messages": _turns({"type": "tool_result", "tool_use_id": "toolu_2"})},
                               "messages.2.content.0"),
    "tool_use in a user turn": ({"messages": [{"role": "user", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "read_file", "input": {}}]}]}, "messages.0.content.0"),
    "prefill": ({"messages": [*USER, {"role": "assistant", "content": "Sure,"}]}, "messages.1"),
    "input_schema not an object": ({"tools": [{**READ, "input_schema": {"type": "string"}}]}, "tools.0.input_schema"),
    "invalid input_schema": ({"tools": [{**READ, "input_schema": {"type": "object", "properties": {
        "path": {"type": "strin"}}}}]}, "tools.0.input_schema"),
    "server tool": ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0.type"),
    "a tool twice": ({"tools": [READ, READ]}, "tools.1.name"),
    "choice names a tool not sent": ({"tools": [READ], "tool_choice": {"type": "tool", "name": "write_file"}},
                                     "write_file"),
    "any without tools": ({"tool_choice": {"type": "any"}}, "tool_choice"),
    "thinking": ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, "thinking"),
    "temperature over 1": ({"temperature": 1.5}, "temperature"),
    "unknown field": ({"top_a": 0.5}, "top_a"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_400_naming_the_field(fake: Served, case: str) -> None:
    fields, named = BAD[case]
    body = {k: v for k, v in {"model": MODEL, "max_tokens": 10, "messages": USER, **fields}.items() if v is not None}
    for stream in (False, True):  # refused before any stream begins
        assert named in anthropic_error(httpx.post(fake.url + "/v1/messages", json={**body, "stream": stream}), 400)
    prompt = {k: v for k, v in body.items() if k not in ("max_tokens", "temperature")}
    if "max_tokens" not in fields and prompt != {"model": MODEL, "messages": USER}:  # the prompt's own faults
        assert named in anthropic_error(httpx.post(fake.url + "/v1/messages/count_tokens", json=prompt), 400)
    assert fake.value("in_flight", "messages") == 0 and fake.engine.prompts == []


def test_a_prompt_over_the_context_is_too_long_in_anthropics_words(fake: Served) -> None:
    long = [{"role": "user", "content": "word " * fake.engine.max_model_len}]  # two tokens a word
    for path, extra in (("/v1/messages", {"max_tokens": 10}), ("/v1/messages/count_tokens", {})):
        message = anthropic_error(httpx.post(fake.url + path, json={"model": MODEL, "messages": long, **extra}), 400)
        assert message.startswith("prompt is too long: ") and str(fake.engine.max_model_len) in message


def test_errors_before_the_stream_are_anthropic_shaped_and_openais_routes_keep_theirs(serve_fake) -> None:
    served = serve_fake(max_request_body_bytes=4096)
    body = {"model": MODEL, "max_tokens": 5, "stream": True, "messages": USER}
    with pytest.raises(anthropic.NotFoundError) as missing:
        client(served).messages.create(**{**body, "model": "claude-sonnet-4-5", "stream": False})
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    too_big = {**body, "messages": [{"role": "user", "content": "x" * 10_000}]}
    assert "CODESERVE_MAX_REQUEST_BODY_BYTES" in anthropic_error(
        httpx.post(served.url + "/v1/messages", json=too_big), 413, "request_too_large")
    anthropic_error(httpx.get(served.url + "/v1/messages"), 405)
    assert httpx.post(served.url + "/v1/chat/completions", json={"messages": []}).json()["error"]["param"] == "messages"
    served.runtime.status = "loading"
    loading = httpx.post(served.url + "/v1/messages", json=body)
    assert "loading" in anthropic_error(loading, 503, "overloaded_error") and loading.headers["retry-after"]


class _Explodes(FakeEngine):
    def chat_prompt(self, messages: list[dict[str, Any]], template: str | None = None,
                    tools: list[dict[str, Any]] | None = None, variables: dict[str, Any] | None = None) -> str:
        raise RuntimeError("a bug in a chat template")


def test_an_unexpected_error_is_a_500_in_anthropics_shape(serve_fake) -> None:
    served = serve_fake(engine=_Explodes())
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        response = httpx.post(served.url + path, json={"model": MODEL, "max_tokens": 5, "messages": USER}
                              if path == "/v1/messages" else {"model": MODEL, "messages": USER})
        assert "server log" in anthropic_error(response, 500, "api_error")
    assert served.value("in_flight", "messages") == 0 and served.value("in_flight", "messages_count_tokens") == 0


def test_an_error_mid_stream_is_an_error_event(serve_fake) -> None:
    served = serve_fake(engine=FakeEngine(fail_after=2))
    body = {"model": MODEL, "max_tokens": 10, "stream": True, "messages": USER}
    response = httpx.post(served.url + "/v1/messages", json=body)
    assert response.status_code == 200
    name, data = events(response)[-1]
    assert name == "error" and data["type"] == "error" and data["error"]["type"] == "api_error"
    assert "message_stop" not in response.text and served.engine.num_unfinished_requests() == 0
    del body["stream"]
    with pytest.raises(anthropic.APIStatusError), client(served).messages.stream(**body) as stream:  # type: ignore
        stream.get_final_message()
    assert served.value("in_flight", "messages") == 0


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "blocking"])
def test_a_client_that_leaves_aborts_the_engine_request(serve_fake, stream: bool) -> None:
    served = serve_fake(engine=FakeEngine(token_delay_s=0.05))
    body = {"model": MODEL, "max_tokens": 1000, "stream": stream, "messages": USER}
    with httpx.Client(timeout=30) as http:
        if stream:
            with http.stream("POST", served.url + "/v1/messages", json=body) as response:
                lines = response.iter_lines()
                while "content_block_delta" not in next(lines):  # text arrived: generation is under way
                    pass
                assert served.engine.num_unfinished_requests() == 1
        else:
            with pytest.raises(httpx.ReadTimeout):
                http.post(served.url + "/v1/messages", json=body, timeout=2)
    assert wait_until(lambda: served.engine.num_unfinished_requests() == 0)
    assert len(served.engine.aborted) == 1
    assert wait_until(lambda: served.metrics.requests.labels("messages", "499")._value.get() == 1)
    assert served.value("in_flight", "messages") == 0 and served.runtime.limiter.active == 0
