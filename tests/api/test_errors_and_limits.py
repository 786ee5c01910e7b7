"""Bad input gets an OpenAI-style error naming the field; the server keeps serving; nothing leaks."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.parse

import httpx
import openai
import pytest

from server.errors import InvalidRequest
from tests.api.conftest import Served
from tests.fake_engine import FakeEngine
from tests.serverutil import openai_error, wait_until


@pytest.mark.parametrize(("body", "param"), [
    ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "x", "temperature": 3}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "n": 99}, "n"),
    ({"prompt": "x", "logprobs": 9}, "logprobs"),
    ({"prompt": 5}, "prompt"),
    ({"max_tokens": 3}, "prompt"),
    ({"prompt": "x", "stop": [""]}, "stop.0"),
    ({"prompt": "x", "stream": "yes please"}, "stream"),
    ({"prompt": "x", "presence_penalty": 5}, "presence_penalty"),
], ids=lambda v: str(v))
def test_invalid_completion_field_is_named(fake: Served, body: dict, param: str) -> None:
    error = openai_error(httpx.post(fake.url + "/v1/completions", json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param or error["param"].startswith(param), error
    assert param.split(".")[0] in error["message"]


def test_malformed_json(fake: Served) -> None:
    response = httpx.post(fake.url + "/v1/completions", content=b'{"prompt": "x",',
                          headers={"content-type": "application/json"})
    assert "malformed JSON" in openai_error(response, 400)["message"]


def test_chat_needs_messages(fake: Served) -> None:
    error = openai_error(httpx.post(fake.url + "/v1/chat/completions", json={"messages": []}), 400)
    assert error["param"] == "messages"
    error = openai_error(httpx.post(fake.url + "/v1/chat/completions",
                              json={"messages": [{"role": "wizard", "content": "x"}]}), 400)
    assert error["param"].startswith("messages.0.role")


def test_unknown_model_is_404(fake: Served) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        openai.OpenAI(base_url=fake.url + "/v1", api_key="x", max_retries=0).completions.create(
            model="gpt-9", prompt="x")
    assert info.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_context_length_exceeded_names_both_numbers(fake: Served) -> None:
    prompt = "word " * (fake.engine.max_model_len + 10)
    error = openai_error(httpx.post(fake.url + "/v1/completions", json={"prompt": prompt}), 400)
    assert error["code"] == "context_length_exceeded"
    assert str(fake.engine.max_model_len) in error["message"]
    assert str(len(fake.engine.tokenize(prompt))) in error["message"]


def test_max_tokens_is_clamped_to_the_context(fake: Served) -> None:
    prompt = "w " * 1000
    body = httpx.post(fake.url + "/v1/completions", json={"prompt": prompt, "max_tokens": 100000}).json()
    assert body["usage"]["total_tokens"] == fake.engine.max_model_len


def test_unknown_route_is_openai_shaped(fake: Served) -> None:
    assert openai_error(httpx.get(fake.url + "/v1/nothing"), 404)["code"] == "not_found"


def test_server_keeps_serving_after_errors(fake: Served) -> None:
    for _ in range(5):
        httpx.post(fake.url + "/v1/completions", content=b"{")
    assert httpx.post(fake.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code == 200
    assert fake.engine.num_unfinished_requests() == 0


def test_api_keys(serve_fake) -> None:
    served = serve_fake(keys=["k1", "k2"])
    url = served.url + "/v1/completions"
    assert openai_error(httpx.post(url, json={"prompt": "x"}), 401)["code"] == "invalid_api_key"
    assert openai_error(httpx.post(url, json={"prompt": "x"}, headers={"Authorization": "Bearer nope"}), 401)
    assert openai_error(httpx.post(url, json={"prompt": "x"}, headers={"Authorization": "Bearer"}), 401)
    assert httpx.post(url, json={"prompt": "x", "max_tokens": 1},
                      headers={"Authorization": "Bearer k2"}).status_code == 200
    assert httpx.post(url, json={"prompt": "x", "max_tokens": 1}, headers={"api-key": "k1"}).status_code == 200
    assert httpx.get(served.url + "/health").status_code == 200  # public by default
    assert httpx.get(served.url + "/metrics").status_code == 200


def test_not_ready_is_503(serve_fake) -> None:
    served = serve_fake()
    served.runtime.status = "loading"
    response = httpx.post(served.url + "/v1/completions", json={"prompt": "x"})
    assert openai_error(response, 503)["code"] == "model_loading"
    assert response.headers["retry-after"]
    assert httpx.get(served.url + "/ready").status_code == 503
    assert httpx.get(served.url + "/health").status_code == 200


def test_full_server_answers_429_with_retry_after(serve_fake) -> None:
    served = serve_fake(engine=FakeEngine(token_delay_s=0.05), max_concurrent=1, max_queued=1)
    url = served.url + "/v1/completions"
    results: list[int] = []

    def slow() -> None:
        results.append(httpx.post(url, json={"prompt": "x", "max_tokens": 20}, timeout=30).status_code)

    threads = [threading.Thread(target=slow) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.3)  # one running, one queued
    rejected = httpx.post(url, json={"prompt": "x", "max_tokens": 1})
    error = openai_error(rejected, 429)
    assert rejected.headers["retry-after"] == "1" and "CODESERVE_MAX_QUEUED_REQUESTS" in error["message"]
    streamed = httpx.post(url, json={"prompt": "x", "max_tokens": 1, "stream": True})
    assert openai_error(streamed, 429)["code"] == "rate_limit_exceeded"  # JSON 429, not a 200 event stream
    for t in threads:
        t.join()
    assert results == [200, 200]
    assert served.metrics.rejected.labels("completions")._value.get() == 2


ENDPOINTS = {  # path, body, metrics endpoint
    "completions": ("/v1/completions", {"prompt": "x", "max_tokens": 1000}, "completions"),
    "chat": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1000}, "chat"),
    "infill": ("/infill", {"input_prefix": "def f(", "input_suffix": "):", "n_predict": 1000}, "infill"),
}


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "blocking"])
def test_client_disconnect_aborts_the_engine_request(serve_fake, stream: bool, endpoint: str) -> None:
    served = serve_fake(engine=FakeEngine(token_delay_s=0.05))
    path, body, label = ENDPOINTS[endpoint]
    body = {**body, "stream": stream}
    with httpx.Client(timeout=30) as client:
        if stream:
            with client.stream("POST", served.url + path, json=body) as response:
                lines = response.iter_lines()
                next(lines)  # the first event arrived: generation is under way
                assert served.engine.num_unfinished_requests() == 1
        else:  # a raw connection, closed once the engine runs the request (a client timeout raced a slow start)
            host, port = urllib.parse.urlsplit(served.url).netloc.split(":")
            payload = json.dumps(body).encode()
            with socket.create_connection((host, int(port))) as sock:
                sock.sendall(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n" % (path.encode(), host.encode(), len(payload)) + payload)
                assert wait_until(lambda: served.engine.num_unfinished_requests() == 1)
    assert wait_until(lambda: served.engine.num_unfinished_requests() == 0)
    assert len(served.engine.aborted) == 1
    assert wait_until(lambda: served.value("cancelled", label) == 1)
    assert served.value("in_flight", label) == 0
    assert wait_until(lambda: served.metrics.requests.labels(label, "499")._value.get() == 1)


def test_error_mid_stream_is_an_sse_error_event(serve_fake) -> None:
    served = serve_fake(engine=FakeEngine(fail_after=2))
    response = httpx.post(served.url + "/v1/completions", json={"prompt": "x", "max_tokens": 10, "stream": True})
    assert response.status_code == 200
    events = [line for line in response.text.splitlines() if line.startswith("data: ")]
    assert '"error"' in events[-1] and "[DONE]" not in response.text
    assert served.engine.num_unfinished_requests() == 0
    # and the next request is served normally
    assert httpx.post(served.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code == 200


def test_a_request_the_engine_refuses_is_a_400_naming_the_field(serve_fake) -> None:
    """An engine that refuses a request once it runs it (llama-server's 400 for a grammar it cannot parse) is the
    client's error: 400 naming the field, not a 500; in a stream, an invalid_request_error event; nothing held."""
    refusal = InvalidRequest("the engine (llama.cpp) refused the request: failed to parse grammar",
                             param="structured_outputs.grammar")
    served = serve_fake(engine=FakeEngine(refuse=refusal))
    body = {"prompt": "x", "max_tokens": 4}
    response = httpx.post(served.url + "/v1/completions", json=body)
    error = openai_error(response, 400)
    assert error["param"] == "structured_outputs.grammar" and "failed to parse grammar" in error["message"]
    streamed = httpx.post(served.url + "/v1/completions", json={**body, "stream": True})
    events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    assert events[-1]["error"]["type"] == "invalid_request_error"
    assert events[-1]["error"]["param"] == "structured_outputs.grammar"
    assert served.engine.num_unfinished_requests() == 0
    assert served.value("in_flight", "completions") == 0
    served.engine.refuse = None
    assert httpx.post(served.url + "/v1/completions", json=body).status_code == 200


def test_concurrent_requests_queue_and_all_complete(serve_fake) -> None:
    fake = serve_fake(max_concurrent=4, max_queued=32)  # 20 requests: 4 run, 16 wait their turn

    async def many() -> list[int]:
        async with httpx.AsyncClient(base_url=fake.url, timeout=30) as client:
            responses = await asyncio.gather(*[client.post("/v1/completions", json={"prompt": f"p{i}", "max_tokens": 5})
                                               for i in range(20)])
            return [r.status_code for r in responses]

    assert asyncio.run(many()) == [200] * 20
    assert fake.engine.num_unfinished_requests() == 0
    assert fake.value("generation_tokens", "completions") == 100
