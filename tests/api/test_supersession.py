"""A newer completion from the same owner (API key + `user`, or + llama.cpp's `id_slot`) ends the older
one at once and aborts its engine request; never across owners."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest

from tests.api.conftest import Served
from tests.fake_engine import FakeEngine
from tests.serverutil import wait_until

SLOW = 0.05  # s per token: 1000 tokens would take 50 s, so only supersession ends the first request early
ROUTES = {  # path, body of a long request for `owner`, metrics endpoint
    "completions": ("/v1/completions", lambda owner: {"prompt": "x", "max_tokens": 1000, "user": owner},
                    "completions"),
    "copilot": ("/v1/engines/copilot-codex/completions",
                lambda owner: {"prompt": "x", "suffix": "y", "max_tokens": 1000, "user": owner}, "completions"),
    "infill": ("/infill", lambda owner: {"input_prefix": "def f(", "input_suffix": "):", "n_predict": 1000,
                                         "id_slot": owner}, "infill"),
}


def _events(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in response.text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


def _start_stream(served: Served, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
                  ) -> tuple[threading.Thread, dict[str, httpx.Response]]:
    result: dict[str, httpx.Response] = {}

    def run() -> None:
        result["response"] = httpx.post(served.url + path, json={**body, "stream": True}, headers=headers,
                                        timeout=60)

    thread = threading.Thread(target=run)
    thread.start()
    assert wait_until(lambda: served.engine.num_unfinished_requests() == 1)
    return thread, result


@pytest.mark.parametrize("route", list(ROUTES))
def test_a_newer_request_from_the_same_owner_ends_the_older_stream(serve_fake, route: str) -> None:
    served = serve_fake(engine=FakeEngine(token_delay_s=SLOW), model_id="qwen2.5-coder-7b")
    path, body, label = ROUTES[route]
    owner: Any = 3 if route == "infill" else "dev-1"
    thread, first = _start_stream(served, path, body(owner))
    second = httpx.post(served.url + path, json={**body(owner), **({"n_predict": 2} if route == "infill" else
                                                                 {"max_tokens": 2})}, timeout=60)
    thread.join(timeout=10)
    assert not thread.is_alive(), "the superseded stream did not end"
    assert second.status_code == 200
    last = _events(first["response"])[-1]
    assert last["error"]["code"] == "request_superseded"
    assert last["error"]["param"] == ("id_slot" if route == "infill" else "user")
    assert len(served.engine.aborted) == 1  # the older engine request, not the newer one
    assert wait_until(lambda: served.engine.num_unfinished_requests() == 0)
    assert served.value("superseded", label) == 1
    assert served.value("cancelled", label) == 0  # the server ended it, not the client
    assert wait_until(lambda: served.value("in_flight", label) == 0)
    assert len(served.runtime.supersession or ()) == 0  # owners are forgotten once their request ends


def test_a_blocking_request_is_answered_409(serve_fake) -> None:
    served = serve_fake(engine=FakeEngine(token_delay_s=SLOW))
    result: dict[str, httpx.Response] = {}
    body = {"prompt": "x", "max_tokens": 1000, "user": "dev-1"}
    thread = threading.Thread(target=lambda: result.setdefault(
        "r", httpx.post(served.url + "/v1/completions", json=body, timeout=60)))
    thread.start()
    assert wait_until(lambda: served.engine.num_unfinished_requests() == 1)
    assert httpx.post(served.url + "/v1/completions", json={**body, "max_tokens": 1}).status_code == 200
    thread.join(timeout=10)
    response = result["r"]
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "request_superseded"
    assert served.engine.aborted and served.engine.num_unfinished_requests() == 0
    assert wait_until(lambda: served.metrics.requests.labels("completions", "409")._value.get() == 1)


def test_a_queued_request_is_superseded_before_it_runs(serve_fake) -> None:
    """Server full: the user's waiting request gives its place to the newer one instead of running."""
    served = serve_fake(engine=FakeEngine(token_delay_s=SLOW), max_concurrent=1)
    blocker, _ = _start_stream(served, "/v1/completions", {"prompt": "x", "max_tokens": 40})  # no user
    result: dict[str, httpx.Response] = {}
    body = {"prompt": "x", "max_tokens": 1, "user": "dev-1"}
    waiting = threading.Thread(target=lambda: result.setdefault(
        "r", httpx.post(served.url + "/v1/completions", json=body, timeout=60)))
    waiting.start()
    assert wait_until(lambda: served.runtime.limiter.waiting == 1)
    newer = httpx.post(served.url + "/v1/completions", json=body, timeout=60)
    waiting.join(timeout=10)
    assert result["r"].status_code == 409 and newer.status_code == 200
    assert len(served.engine.prompts) == 2  # the blocker and the newer one; the superseded never ran
    blocker.join(timeout=30)


@pytest.mark.parametrize(("first", "second"), [
    ({"user": "dev-1"}, {"user": "dev-2"}),            # another user
    ({}, {}),                                         # no user: nothing to key on
    ({"user": "dev-1", "key": "k1"}, {"user": "dev-1", "key": "k2"}),  # same user name, another API key
], ids=["other-user", "no-user", "other-key"])
def test_never_across_owners(serve_fake, first: dict[str, str], second: dict[str, str]) -> None:
    served = serve_fake(engine=FakeEngine(token_delay_s=0.01), keys=["k1", "k2"])

    def body(owner: dict[str, str]) -> dict[str, Any]:
        return {"prompt": "x", "max_tokens": 60, **({"user": owner["user"]} if "user" in owner else {})}

    def auth(owner: dict[str, str]) -> dict[str, str]:
        return {"Authorization": f"Bearer {owner.get('key', 'k1')}"}

    thread, result = _start_stream(served, "/v1/completions", body(first), auth(first))
    other = httpx.post(served.url + "/v1/completions", json={**body(second), "max_tokens": 2}, headers=auth(second))
    thread.join(timeout=30)
    assert other.status_code == 200
    events = _events(result["response"])
    assert "error" not in events[-1] and events[-1]["choices"][0]["finish_reason"] == "length"
    assert served.engine.aborted == []
    assert served.value("superseded", "completions") == 0


def test_an_invalid_request_supersedes_nothing(serve_fake) -> None:
    served = serve_fake(engine=FakeEngine(token_delay_s=0.01))
    thread, result = _start_stream(served, "/v1/completions", {"prompt": "x", "max_tokens": 60, "user": "dev-1"})
    bad = httpx.post(served.url + "/v1/completions", json={"prompt": "x", "temperature": 9, "user": "dev-1"})
    thread.join(timeout=30)
    assert bad.status_code == 400
    assert "error" not in _events(result["response"])[-1]


def test_chat_is_never_superseded(serve_fake) -> None:
    """Chat turns of one user may run side by side (several conversations): only completions supersede."""
    served = serve_fake(engine=FakeEngine(token_delay_s=0.01))
    chat = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 60, "user": "dev-1"}
    thread, result = _start_stream(served, "/v1/chat/completions", chat)
    assert httpx.post(served.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1,
                                                             "user": "dev-1"}).status_code == 200
    thread.join(timeout=30)
    assert "error" not in _events(result["response"])[-1]


def test_off_by_setting(serve_fake) -> None:
    served = serve_fake(engine=FakeEngine(token_delay_s=0.01), supersede=False)
    thread, result = _start_stream(served, "/v1/completions", {"prompt": "x", "max_tokens": 60, "user": "dev-1"})
    httpx.post(served.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1, "user": "dev-1"})
    thread.join(timeout=30)
    assert "error" not in _events(result["response"])[-1]
    assert served.engine.aborted == []


@pytest.mark.parametrize("route", list(ROUTES))
def test_a_client_that_leaves_is_cancelled_as_without_an_owner(serve_fake, route: str) -> None:
    """Found by the locust typing user: a stream with an owner whose client closed it ran on to its end."""
    served = serve_fake(engine=FakeEngine(token_delay_s=SLOW))
    path, body, label = ROUTES[route]
    with httpx.Client(timeout=30) as client, client.stream(
            "POST", served.url + path, json={**body(5 if route == "infill" else "dev-1"), "stream": True}) as response:
        lines = response.iter_lines()
        next(lines)  # the first event arrived: generation is under way
    assert wait_until(lambda: served.engine.num_unfinished_requests() == 0)
    assert len(served.engine.aborted) == 1
    assert wait_until(lambda: served.value("cancelled", label) == 1)
    assert served.value("superseded", label) == 0
    assert wait_until(lambda: len(served.runtime.supersession or ()) == 0)
