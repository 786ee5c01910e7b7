"""Two engines behind one server (CODESERVE_ROLE=completion,chat): routed by `model`, by role when a request names
none, listed together, measured apart, and failing together."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client import CollectorRegistry

from server.api.app import build_app
from server.api.runtime import Runtime
from server.generation.core import GenerationCore
from server.generation.served import ServedModel
from server.metrics import Metrics
from server.planner.catalog import Catalog
from server.serve import make_runtime
from tests.conftest import make_settings
from tests.fake_engine import FakeEngine
from tests.serverutil import running

COMPLETION, CHAT = "qwen2.5-coder-1.5b", "qwen2.5-coder-7b-instruct"


@dataclass
class Pair:
    url: str
    completion: FakeEngine
    chat: FakeEngine
    runtime: Runtime
    metrics: Metrics


@pytest.fixture
def pair(catalog: Catalog) -> Iterator[Pair]:
    settings = make_settings(role="completion,chat")
    metrics = Metrics(CollectorRegistry())
    runtime = make_runtime(settings, metrics)
    engines = {COMPLETION: FakeEngine(model_id=COMPLETION), CHAT: FakeEngine(model_id=CHAT)}
    for (model, engine), role in zip(engines.items(), ("completion", "chat"), strict=True):
        entry = catalog.get(model)
        assert entry is not None
        runtime.serve(GenerationCore(engine, ServedModel(entry.id, entry, engine.max_model_len), settings.hole_fill),
                      (role,))
        metrics.serve_model(entry.id, engine.num_unfinished_requests)
    runtime.status = "ready"
    metrics.ready.set(1)
    with running(build_app(runtime, settings)) as url:
        yield Pair(url, engines[COMPLETION], engines[CHAT], runtime, metrics)


def _tokens(pair: Pair, endpoint: str, model: str) -> float:
    return pair.metrics.generation_tokens.labels(endpoint, model)._value.get()


def test_models_lists_both_with_their_roles(pair: Pair) -> None:
    cards = httpx.get(pair.url + "/v1/models").json()["data"]
    assert [(c["id"], c["roles"]) for c in cards] == [(COMPLETION, ["completion"]), (CHAT, ["chat"])]


def test_a_request_naming_no_model_goes_to_its_endpoints_role(pair: Pair) -> None:
    done = httpx.post(pair.url + "/v1/completions", json={"prompt": "def f(", "suffix": ")", "max_tokens": 3})
    assert done.status_code == 200 and done.json()["model"] == COMPLETION
    said = httpx.post(pair.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                                "max_tokens": 3})
    assert said.status_code == 200 and said.json()["model"] == CHAT
    infill = httpx.post(pair.url + "/infill", json={"input_prefix": "x = ", "input_suffix": "\n", "n_predict": 2})
    assert infill.status_code == 200
    assert (len(pair.completion.prompts), len(pair.chat.prompts)) == (2, 1)


def test_a_named_model_picks_its_engine_on_any_endpoint(pair: Pair) -> None:
    chat_by_name = httpx.post(pair.url + "/v1/completions", json={"model": CHAT, "prompt": "x", "max_tokens": 2})
    assert chat_by_name.json()["model"] == CHAT and len(pair.chat.prompts) == 1
    by_repo = httpx.post(pair.url + "/v1/chat/completions", json={
        "model": "Qwen/Qwen2.5-Coder-1.5B", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert by_repo.json()["model"] == COMPLETION and len(pair.completion.prompts) == 1
    assert _tokens(pair, "completions", CHAT) == 2 and _tokens(pair, "chat", COMPLETION) == 2
    assert _tokens(pair, "completions", COMPLETION) == 0


def test_an_unknown_model_is_404_naming_what_is_served(pair: Pair) -> None:
    response = httpx.post(pair.url + "/v1/completions", json={"model": "gpt-4", "prompt": "x", "max_tokens": 2})
    error = response.json()["error"]
    assert response.status_code == 404 and error["param"] == "model" and error["code"] == "model_not_found"
    assert COMPLETION in error["message"] and CHAT in error["message"]
    assert pair.completion.prompts == [] and pair.chat.prompts == []


def test_clients_that_send_their_own_names_get_the_completion_role(pair: Pair) -> None:
    # Copilot puts its configured engine name in `model`; llama.cpp's server ignores `model` altogether.
    copilot = httpx.post(pair.url + "/v1/engines/copilot-codex/completions",
                         json={"model": "copilot-codex", "prompt": "def f(", "max_tokens": 2})
    llama = httpx.post(pair.url + "/infill", json={"model": "whatever", "input_prefix": "a", "n_predict": 2})
    named = httpx.post(pair.url + "/completion", json={"model": CHAT, "prompt": "a", "n_predict": 2})
    assert (copilot.status_code, llama.status_code, named.status_code) == (200, 200, 200)
    assert (len(pair.completion.prompts), len(pair.chat.prompts)) == (2, 1)


def test_one_dead_engine_fails_the_server_naming_it(pair: Pair) -> None:
    pair.chat.kill()
    ready = httpx.get(pair.url + "/ready")
    assert ready.status_code == 503 and ready.json()["detail"].startswith(CHAT)
    response = httpx.post(pair.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert response.status_code == 503 and pair.metrics.ready._value.get() == 0
