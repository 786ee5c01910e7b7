"""POST /v1/responses (and GET / DELETE of stored ones) on the fake engine, driven by the official `openai` SDK as
Codex CLI and Copilot's Responses mode use it, and by raw HTTP where the wire itself matters."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

from tests.api.conftest import Served
from tests.fake_engine import FakeEngine
from tests.serverutil import openai_error, wait_until

REPLY = "Hello from the model"
MODEL = "qwen2.5-coder-7b"  # what serve_fake serves


def _client(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.url + "/v1", api_key="none", max_retries=0)


def _prompt(served: Served, *turns: tuple[str, str], variables: dict[str, Any] | None = None) -> list[int]:
    """The token ids the fake engine receives for these (role, content) turns, through its chat template (with the
    template `variables` the request passes it: reasoning.effort as reasoning_effort)."""
    messages = [{"role": role, "content": content} for role, content in turns]
    return served.engine.tokenize(served.engine.chat_prompt(messages, None, None, variables))


def _sse(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) for every event of a raw stream; every line is `event:` or `data:` or blank."""
    events, name = [], None
    for line in response.text.splitlines():
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[len("data: "):])))
            name = None
        else:
            assert line == "", line
    return events


def _idle(served: Served) -> bool:
    return served.engine.num_unfinished_requests() == 0 and served.value("in_flight", "responses") == 0


@pytest.fixture
def replying(serve_fake) -> Served:
    return serve_fake(FakeEngine(reply=REPLY))


def test_blocking_response_as_the_sdk_reads_it(replying: Served) -> None:
    response = _client(replying).responses.create(model=MODEL, input="Say hello",
                                                  instructions="Be brief", metadata={"ticket": "42"}, user="dev-1")
    assert response.id.startswith("resp_") and response.object == "response" and response.status == "completed"
    assert response.output_text == REPLY
    message = response.output[0]
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert message.id.startswith("msg_") and message.content[0].type == "output_text"
    usage = response.usage
    assert usage is not None
    assert usage.input_tokens == len(_prompt(replying, ("system", "Be brief"), ("user", "Say hello")))
    assert usage.output_tokens == len(replying.engine.tokenize(REPLY)) + 1  # and the EOS step
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    # Copilot reads these without checking that they exist
    assert usage.input_tokens_details.cached_tokens == 0 and usage.output_tokens_details.reasoning_tokens == 0
    # what the SDK's Response requires is echoed
    assert response.instructions == "Be brief" and response.metadata == {"ticket": "42"} and response.user == "dev-1"
    assert response.parallel_tool_calls is True and response.tool_choice == "auto" and response.tools == []
    assert response.model == "qwen2.5-coder-7b" and response.completed_at is not None
    assert replying.engine.prompts[-1] == _prompt(replying, ("system", "Be brief"), ("user", "Say hello"))
    assert wait_until(lambda: _idle(replying))


def test_stream_as_the_sdk_parses_it(replying: Served) -> None:
    with _client(replying).responses.stream(model=MODEL, input="Say hello") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert final.output_text == REPLY and final.status == "completed"
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert final.usage is not None and final.usage.output_tokens_details.reasoning_tokens == 0
    assert wait_until(lambda: _idle(replying))


def test_stream_wire_events_are_named_numbered_and_end_without_done(replying: Served) -> None:
    response = httpx.post(replying.url + "/v1/responses", json={"input": "hi", "stream": True})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    assert "[DONE]" not in response.text  # Copilot's Responses mode breaks on it
    events = _sse(response)
    assert all(name == data["type"] for name, data in events)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    created, completed = events[0][1]["response"], events[-1][1]["response"]
    assert created["status"] == "in_progress" and created["output"] == [] and created["id"] == completed["id"]
    done = [data["item"] for name, data in events if name == "response.output_item.done"]
    assert done == completed["output"]
    deltas = "".join(data["delta"] for name, data in events if name == "response.output_text.delta")
    assert deltas == REPLY == completed["output"][0]["content"][0]["text"]


def test_max_output_tokens_makes_the_response_incomplete(fake: Served) -> None:
    response = _client(fake).responses.create(model=MODEL, input="count", max_output_tokens=3)
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens" and response.output[0].status == "incomplete"
    assert response.usage is not None and response.usage.output_tokens == 3
    streamed = httpx.post(fake.url + "/v1/responses", json={"input": "count", "max_output_tokens": 3, "stream": True})
    last_name, last = _sse(streamed)[-1]
    assert last_name == "response.incomplete" and last["response"]["status"] == "incomplete"


def test_codex_cli_request_shape(replying: Served) -> None:
    """What Codex CLI sends on every turn (codex-rs ResponsesApiRequest): instructions, the whole history as items,
    reasoning, store false, include, parallel_tool_calls, prompt_cache_key, stream. Function tools are in
    test_codex_cli_tools once tool calling is served."""
    body = {
        "model": "qwen2.5-coder-7b", "instructions": "You are Codex.",
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Sandbox: none"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "fix the bug"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "thinking"}],
             "content": None, "encrypted_content": "gAAAA"},
            {"type": "message", "role": "assistant", "id": "msg_1",
             "content": [{"type": "output_text", "text": "Done.", "annotations": []}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "thanks"}]},
        ],
        "tools": [], "tool_choice": "auto", "parallel_tool_calls": False,
        "reasoning": {"effort": "medium", "summary": "auto"}, "store": False, "stream": True,
        "include": ["reasoning.encrypted_content"], "prompt_cache_key": "conversation-1",
        "text": {"verbosity": "medium"},
    }
    response = httpx.post(replying.url + "/v1/responses", json=body)
    events = _sse(response)
    assert events[-1][0] == "response.completed"
    item = next(data["item"] for name, data in events if name == "response.output_item.done")
    assert item["content"][0]["text"] == REPLY
    assert replying.engine.prompts[-1] == _prompt(
        replying, ("system", "You are Codex."), ("system", "Sandbox: none"), ("user", "fix the bug"),
        ("assistant", "Done."), ("user", "thanks"),  # the reasoning item carried nothing the model could read
        variables={"reasoning_effort": "medium"})
    stored = httpx.get(replying.url + f"/v1/responses/{events[-1][1]['response']['id']}")
    assert stored.status_code == 404  # store: false


def test_copilot_previous_response_id_continues_the_conversation(replying: Served) -> None:
    client = _client(replying)
    first = client.responses.create(model=MODEL, input="What is 2+2?", instructions="Answer in one word")
    assert first.usage is not None and first.usage.input_tokens_details.cached_tokens == 0
    with client.responses.stream(model=MODEL, input="And 3+3?", previous_response_id=first.id) as stream:
        second = stream.get_final_response()
    assert second.previous_response_id == first.id and second.output_text == REPLY
    assert second.usage is not None and second.usage.output_tokens_details.reasoning_tokens == 0
    # Turn two's prompt is turn one's conversation (its instructions are not carried over), then the new input.
    assert replying.engine.prompts[-1] == _prompt(replying, ("user", "What is 2+2?"), ("assistant", REPLY),
                                                  ("user", "And 3+3?"))
    third = client.responses.create(model=MODEL, input="Bye", previous_response_id=second.id, instructions="Be polite")
    assert third.status == "completed"
    assert replying.engine.prompts[-1] == _prompt(replying, ("system", "Be polite"), ("user", "What is 2+2?"),
                                                  ("assistant", REPLY), ("user", "And 3+3?"), ("assistant", REPLY),
                                                  ("user", "Bye"))


def test_unknown_previous_response_id_is_404_naming_it(fake: Served) -> None:
    response = httpx.post(fake.url + "/v1/responses", json={"input": "hi", "previous_response_id": "resp_nope"})
    error = openai_error(response, 404)
    assert error["param"] == "previous_response_id" and error["code"] == "previous_response_not_found"
    assert "resp_nope" in error["message"] and "CODESERVE_RESPONSES_STORE_MAX" in error["message"]
    with pytest.raises(openai.NotFoundError):
        _client(fake).responses.create(model=MODEL, input="hi", previous_response_id="resp_nope")


def test_an_expired_response_cannot_be_continued(serve_fake) -> None:
    served = serve_fake(responses_store_ttl_s=0.2)
    first = _client(served).responses.create(model=MODEL, input="hi", max_output_tokens=2)
    time.sleep(0.3)  # past the age limit (that a stored response continues is tested above, without a deadline)
    response = httpx.post(served.url + "/v1/responses", json={"input": "hi", "previous_response_id": first.id})
    assert openai_error(response, 404)["param"] == "previous_response_id"


def test_the_store_keeps_the_newest_responses(serve_fake) -> None:
    served = serve_fake(responses_store_max=2)
    ids = [_client(served).responses.create(model=MODEL, input=f"turn {i}", max_output_tokens=1).id for i in range(3)]
    assert httpx.get(served.url + f"/v1/responses/{ids[0]}").status_code == 404  # the oldest, evicted
    assert [httpx.get(served.url + f"/v1/responses/{i}").status_code for i in ids[1:]] == [200, 200]


def test_get_and_delete_a_stored_response(replying: Served) -> None:
    client = _client(replying)
    created = client.responses.create(model=MODEL, input="hi")
    retrieved = client.responses.retrieve(created.id)
    assert retrieved.id == created.id and retrieved.output_text == REPLY and retrieved.usage == created.usage
    client.responses.delete(created.id)
    assert openai_error(httpx.get(replying.url + f"/v1/responses/{created.id}"), 404)["param"] == "response_id"
    assert httpx.delete(replying.url + f"/v1/responses/{created.id}").status_code == 404
    again = httpx.post(replying.url + "/v1/responses", json={"input": "x", "previous_response_id": created.id})
    assert openai_error(again, 404)["param"] == "previous_response_id"


def test_text_format_json_schema_constrains_the_output(fake: Served) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    response = _client(fake).responses.create(
        model=MODEL, input="json please", max_output_tokens=2,
        text={"format": {"type": "json_schema", "name": "reply", "schema": schema, "strict": True}})
    structured = fake.engine.samplings[-1].structured
    assert structured is not None and structured.json_schema == schema
    assert response.text is not None and response.text.format.type == "json_schema"
    _client(fake).responses.create(model=MODEL, input="json", max_output_tokens=2,
                                   text={"format": {"type": "json_object"}})
    assert fake.engine.samplings[-1].structured is not None and fake.engine.samplings[-1].structured.json_object


def test_sampling_reaches_the_engine(fake: Served) -> None:
    _client(fake).responses.create(model=MODEL, input="x", temperature=0.2, top_p=0.5, max_output_tokens=4)
    sampling = fake.engine.samplings[-1]
    assert (sampling.temperature, sampling.top_p, sampling.max_tokens, sampling.n) == (0.2, 0.5, 4, 1)


def test_a_failure_mid_stream_is_response_failed_and_nothing_leaks(serve_fake) -> None:
    served = serve_fake(FakeEngine(fail_after=2))
    response = httpx.post(served.url + "/v1/responses", json={"input": "hi", "stream": True})
    events = _sse(response)
    name, failed = events[-1]
    assert name == "response.failed" and failed["response"]["status"] == "failed"
    assert failed["response"]["error"]["code"] == "engine_error"
    assert "response.completed" not in [n for n, _ in events]
    with _client(served).responses.stream(model=MODEL, input="hi") as stream:
        last = list(stream)[-1]
    assert last.type == "response.failed" and last.response.error is not None
    assert last.response.error.code == "engine_error"  # type: ignore[comparison-overlap]  # ours, not OpenAI's
    assert wait_until(lambda: _idle(served))
    assert wait_until(lambda: served.metrics.requests.labels("responses", "500")._value.get() == 2)


def test_a_client_that_leaves_mid_stream_aborts_the_engine_request(serve_fake) -> None:
    served = serve_fake(FakeEngine(token_delay_s=0.05))
    with httpx.stream("POST", served.url + "/v1/responses", json={"input": "hi", "stream": True}) as response:
        for line in response.iter_lines():
            if "response.output_text.delta" in line:
                break
    assert wait_until(lambda: _idle(served))
    assert served.engine.aborted


BAD = [
    ({"input": "x", "background": True}, "background"),
    ({"input": "x", "conversation": "conv_1"}, "conversation"),
    ({"input": []}, "input"),
    ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input.0.type"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0.type"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input.0.role"),
    ({"input": [{"role": "user", "content": "x", "name": "me"}]}, "input.0.name"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]},
     "input.0.content.0.type"),
    ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input.0.content.0.text"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input.0.call_id"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": 3}]}, "input.0.output"),
    ({"input": [{"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "hm"}]}]},
     "input.0.content"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools.0.type"),
    ({"input": "x", "tools": [{"type": "function", "name": "bad name", "parameters": {}}]}, "tools.0.name"),
    ({"input": "x", "tools": [{"type": "function", "name": "f", "parameters": {"type": 3}}]}, "tools.0.parameters"),
    ({"input": "x", "tool_choice": "required"}, "tool_choice"),
    ({"input": "x", "tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
    ({"input": "x", "tool_choice": "sometimes"}, "tool_choice"),
    ({"input": "x", "tool_choice": {"type": "function", "name": "f"}}, "tool_choice.name"),
    ({"input": "x", "include": ["message.output_text.logprobs"]}, "include"),
    ({"input": "x", "truncation": "auto"}, "truncation"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "r"}}}, "text.format"),
    ({"input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type"),
    ({"input": "x", "metadata": {str(i): "v" for i in range(17)}}, "metadata"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "x", "temperature": 3}, "temperature"),
    ({"input": "x", "top_logprobs": 2}, "top_logprobs"),
]


@pytest.mark.parametrize(("body", "param"), BAD, ids=[param + ":" + json.dumps(body)[:40] for body, param in BAD])
def test_bad_requests_are_400_naming_the_field(fake: Served, body: dict[str, Any], param: str) -> None:
    error = openai_error(httpx.post(fake.url + "/v1/responses", json=body), 400)
    assert error["param"] == param, error
    assert not fake.engine.prompts


def test_a_conversation_over_the_context_is_400_naming_input(serve_fake) -> None:
    served = serve_fake(FakeEngine(max_model_len=64))
    error = openai_error(httpx.post(served.url + "/v1/responses", json={"input": "word " * 200}), 400)
    assert error["param"] == "input" and error["code"] == "context_length_exceeded"
