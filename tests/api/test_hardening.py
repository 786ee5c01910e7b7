"""Hostile and broken clients, and a dead engine (issue: hardening). Each test failed on the code before it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import httpx
import pytest

from tests.api.conftest import Served
from tests.fake_engine import FakeEngine
from tests.serverutil import openai_error, wait_until


def _counted(served: Served, endpoint: str, status: int) -> float:
    return served.metrics.requests.labels(endpoint, str(status))._value.get()


# ---- 1. large bodies and prompts -------------------------------------------------------------------
def test_body_over_the_cap_is_413_before_auth_and_parsing(serve_fake) -> None:
    served = serve_fake(keys=["k"], max_request_body_bytes=4096)
    big = json.dumps({"prompt": "x" * 10_000}).encode()
    error = openai_error(httpx.post(served.url + "/v1/completions", content=big,
                              headers={"content-type": "application/json"}), 413)
    assert error["param"] == "body" and "CODESERVE_MAX_REQUEST_BODY_BYTES" in error["message"]

    def chunks():  # no Content-Length: the cap holds while the body is read
        for _ in range(10):
            yield b" " * 1024

    chunked = httpx.post(served.url + "/v1/completions", content=chunks(),
                         headers={"content-type": "application/json", "authorization": "Bearer k"})
    assert openai_error(chunked, 413)["param"] == "body"
    ok = httpx.post(served.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1},
                    headers={"authorization": "Bearer k"})
    assert ok.status_code == 200
    assert _counted(served, "completions", 413) == 2


def test_a_body_of_megabytes_gets_a_clean_413_each_time(fake: Served) -> None:
    raw = b'{"prompt": "' + b"word " * 1_000_000 + b'"}'  # 5 MB, over the 4 MiB default
    with httpx.Client(base_url=fake.url, timeout=30) as client:
        for _ in range(3):  # a client still uploading must read the answer, not a reset connection
            response = client.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
            assert openai_error(response, 413)["param"] == "body"
        assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code == 200


def test_a_prompt_far_over_the_context_is_refused_without_tokenizing(fake: Served) -> None:
    prompt = "word " * (fake.engine.max_model_len * fake.engine.max_token_chars)
    calls_before = len(fake.engine.tokenized_on_loop)  # the server tokenized its template markers at start
    error = openai_error(httpx.post(fake.url + "/v1/completions", json={"prompt": prompt}), 400)
    assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
    assert len(fake.engine.tokenized_on_loop) == calls_before  # refused on its length in characters alone


@pytest.mark.parametrize(("path", "body"), [
    ("/infill", {"input_prefix": "def f(x):\n    ", "input_suffix": "\n    return y", "n_predict": 2}),
    ("/v1/engines/copilot-codex/completions", {"prompt": "def f(x):\n    ", "suffix": "\n    return y",
                                               "max_tokens": 2}),
])
def test_a_hole_that_fits_is_tokenized_once(fake: Served, path: str, body: dict) -> None:
    """The editors' endpoints fit the hole to the context: counting its tokens is the tokenization the engine gets
    (a 1.5k-token prompt costs ~3 ms of a CPU each time, on every keystroke)."""
    before = len(fake.engine.tokenized_on_loop)
    assert httpx.post(fake.url + path, json=body).status_code == 200
    assert len(fake.engine.tokenized_on_loop) - before == 1


def test_tokenization_runs_off_the_event_loop(fake: Served) -> None:
    body = {"prompt": "def f(x):", "suffix": "\n    return y", "max_tokens": 2}
    assert httpx.post(fake.url + "/v1/completions", json=body).status_code == 200
    assert fake.engine.tokenized_on_loop and not any(fake.engine.tokenized_on_loop)


# ---- 2. a dead engine --------------------------------------------------------------------------------
def test_a_dead_engine_turns_health_and_ready_503_and_ends_streams_with_503(serve_fake) -> None:
    served = serve_fake(engine=FakeEngine(token_delay_s=0.05))
    with httpx.Client(timeout=30) as client, client.stream(
            "POST", served.url + "/v1/completions", json={"prompt": "x", "max_tokens": 200, "stream": True}) as r:
        lines = r.iter_lines()
        next(lines)
        served.engine.kill()
        events = [line for line in lines if line.startswith("data: ")]
    error = json.loads(events[-1][6:])["error"]
    assert error["code"] == "engine_unavailable" and "[DONE]" not in events
    assert wait_until(lambda: httpx.get(served.url + "/health").status_code == 503)
    health = httpx.get(served.url + "/health").json()
    assert "killed" in health["detail"]
    assert httpx.get(served.url + "/ready").status_code == 503
    assert openai_error(httpx.post(served.url + "/v1/completions", json={"prompt": "x"}), 503)["code"] in (
        "engine_unavailable", "model_loading")
    assert wait_until(lambda: served.value("in_flight", "completions") == 0)


# ---- 3. client mistakes are 400s, never 500s ---------------------------------------------------------
@pytest.mark.parametrize(("body", "param"), [
    ({"prompt": ""}, "prompt"),
    ({"prompt": [-1, 5]}, "prompt"),
    ({"prompt": [2**24 + 5]}, "prompt"),
    ({"prompt": "x", "seed": 2**64}, "seed"),
    ({"prompt": "x\ud800y"}, "prompt"),
    ({"prompt": "x", "suffix": "\udc00"}, "suffix"),
    ({"prompt": "x", "stop": ["\ud800"]}, "stop"),
], ids=["empty", "negative-id", "out-of-vocab", "seed-int64", "surrogate-prompt", "surrogate-suffix",
        "surrogate-stop"])
@pytest.mark.parametrize("stream", [False, True], ids=["blocking", "stream"])
def test_client_mistakes_are_400_naming_the_field(fake: Served, body: dict, param: str, stream: bool) -> None:
    raw = json.dumps({**body, "stream": stream}).encode()  # json.dumps escapes the surrogates as \\ud800
    error = openai_error(httpx.post(fake.url + "/v1/completions", content=raw,
                              headers={"content-type": "application/json"}), 400)
    assert error["param"] == param or error["param"].startswith(param + "."), error
    assert fake.value("in_flight", "completions") == 0
    assert httpx.post(fake.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code == 200


def test_surrogates_in_chat_messages_are_400(fake: Served) -> None:
    raw = json.dumps({"messages": [{"role": "user", "content": "hi \ud83d"}]}).encode()
    error = openai_error(httpx.post(fake.url + "/v1/chat/completions", content=raw,
                              headers={"content-type": "application/json"}), 400)
    assert error["param"].startswith("messages")


@pytest.mark.parametrize("stream", [False, True], ids=["blocking", "stream"])
def test_max_tokens_zero_answers_at_once(fake: Served, stream: bool) -> None:
    response = httpx.post(fake.url + "/v1/completions", json={"prompt": "def", "max_tokens": 0, "stream": stream,
                                                              "echo": True})
    assert response.status_code == 200
    if stream:
        assert response.text.rstrip().endswith("data: [DONE]") and '"finish_reason":"length"' in response.text
    else:
        choice = response.json()["choices"][0]
        assert (choice["text"], choice["finish_reason"]) == ("def", "length")
        assert response.json()["usage"]["completion_tokens"] == 0
    assert fake.engine.prompts == []  # nothing to generate: the engine is not asked
    assert fake.value("in_flight", "completions") == 0


# ---- 4. over capacity, streams get a real 429 ----------------------------------------------------------
def test_a_burst_of_streams_over_capacity_gets_429_before_any_200(serve_fake) -> None:
    served = serve_fake(engine=FakeEngine(token_delay_s=0.05), max_concurrent=2, max_queued=1)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
            body = {"prompt": "x", "max_tokens": 10, "stream": True}
            return list(await asyncio.gather(*[client.post("/v1/completions", json=body) for _ in range(10)]))

    responses = asyncio.run(burst())
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 3 + [429] * 7
    for r in responses:
        if r.status_code == 429:
            assert r.headers["retry-after"] and r.headers["content-type"].startswith("application/json")
        else:
            assert '"error"' not in r.text and r.text.rstrip().endswith("[DONE]")


# ---- 5. every response counted, nothing leaks on an unexpected error -----------------------------------
class _Explodes(FakeEngine):
    def chat_prompt(self, messages: list[dict[str, Any]], template: str | None = None,
                    tools: list[dict[str, Any]] | None = None, variables: dict[str, Any] | None = None) -> str:
        raise RuntimeError("a bug in a chat template")


def test_every_response_is_counted_and_unexpected_errors_leak_nothing(serve_fake) -> None:
    served = serve_fake(engine=_Explodes(), keys=["k"])
    auth = {"authorization": "Bearer k"}
    with httpx.Client(base_url=served.url, timeout=10) as client:
        assert client.post("/v1/completions", json={"prompt": "x"}).status_code == 401
        assert client.post("/v1/completions", json={"prompt": 5}, headers=auth).status_code == 400
        response = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]},
                               headers=auth)
        assert openai_error(response, 500)["code"] == "engine_error"
        # the same keep-alive connection still serves the next request (#11)
        assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}, headers=auth).status_code == 200
    assert _counted(served, "completions", 401) == 1
    assert _counted(served, "completions", 400) == 1
    assert _counted(served, "chat", 500) == 1
    assert _counted(served, "completions", 200) == 1
    assert served.value("in_flight", "chat") == 0


# ---- 6-7. the queue: clients that left, and sequences not requests -------------------------------------
def test_a_queued_request_whose_client_left_gives_up_its_place(serve_fake) -> None:
    served = serve_fake(engine=FakeEngine(token_delay_s=0.05), max_concurrent=1, max_queued=4)
    runner = threading.Thread(target=lambda: httpx.post(served.url + "/v1/completions",
                                                        json={"prompt": "first", "max_tokens": 30}, timeout=30))
    runner.start()
    assert wait_until(lambda: served.runtime.limiter.active == 1)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(served.url + "/v1/completions", json={"prompt": "second", "max_tokens": 5}, timeout=0.3)
    assert wait_until(lambda: served.runtime.limiter.waiting == 0)
    runner.join()
    time.sleep(0.2)
    assert [p for p in served.engine.prompts if p != served.engine.prompts[0]] == []  # never sent to the engine


def test_the_limit_counts_sequences(serve_fake) -> None:
    served = serve_fake(max_concurrent=4, max_queued=4)
    error = openai_error(httpx.post(served.url + "/v1/completions", json={"prompt": ["a", "b", "c"], "n": 2}), 400)
    assert error["param"] == "n" and "6 sequences" in error["message"]
    assert httpx.post(served.url + "/v1/completions", json={"prompt": ["a", "b"], "n": 2, "max_tokens": 2,
                                                            "temperature": 0.5}).status_code == 200


# ---- 8-10. what clients see and send -------------------------------------------------------------------
def test_engine_failure_text_stays_in_the_log(serve_fake, caplog) -> None:
    engine = FakeEngine(fail_after=1, fail_message="CUDA error at /opt/secret/kernels.cu:42")
    served = serve_fake(engine=engine)
    error = openai_error(httpx.post(served.url + "/v1/completions", json={"prompt": "x", "max_tokens": 5}), 500)
    assert "/opt/secret" not in error["message"] and "cmpl-" in error["message"]
    assert "/opt/secret/kernels.cu" in caplog.text


def test_non_ascii_api_keys_match(serve_fake) -> None:
    served = serve_fake(keys=["clé-ünï"])
    headers = {"authorization": "Bearer clé-ünï".encode()}
    response = httpx.post(served.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}, headers=headers)
    assert response.status_code == 200, response.text


def test_probes_stay_open_when_metrics_are_private(serve_fake) -> None:
    served = serve_fake(keys=["k"], public_metrics=False)
    assert httpx.get(served.url + "/health").status_code == 200
    assert httpx.get(served.url + "/ready").status_code == 200
    assert httpx.get(served.url + "/metrics").status_code == 401
    assert httpx.get(served.url + "/metrics", headers={"authorization": "Bearer k"}).status_code == 200
