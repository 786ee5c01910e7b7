"""LoRA adapters as extra model names: listed over their base model, chosen by `model`, counted apart."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry

from server.api.app import build_app
from server.generation.core import GenerationCore
from server.generation.served import ServedModel
from server.metrics import Metrics
from server.planner.catalog import Catalog
from server.serve import make_runtime
from tests.conftest import make_settings
from tests.fake_engine import FakeEngine
from tests.serverutil import running

BASE = "qwen2.5-coder-7b"


@pytest.fixture
def served(catalog: Catalog) -> Iterator[tuple[str, FakeEngine, Metrics]]:
    settings = make_settings()
    metrics = Metrics(CollectorRegistry())
    runtime = make_runtime(settings, metrics)
    engine = FakeEngine()
    entry = catalog.get(BASE)
    assert entry is not None
    runtime.serve(GenerationCore(engine, ServedModel(BASE, entry, engine.max_model_len, adapters=("team-style",)),
                                 settings.hole_fill))
    for name in (BASE, "team-style"):
        metrics.serve_model(name, engine.num_unfinished_requests)
    runtime.status = "ready"
    with running(build_app(runtime, settings)) as url:
        yield url, engine, metrics


def test_adapters_are_listed_over_their_base(served: tuple[str, FakeEngine, Metrics]) -> None:
    url, _, _ = served
    cards = {c["id"]: c for c in httpx.get(url + "/v1/models").json()["data"]}
    assert set(cards) == {BASE, "team-style"}
    assert cards["team-style"]["parent"] == BASE and cards[BASE]["parent"] is None


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/completions", {"prompt": "def f(", "max_tokens": 3}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}),
])
def test_the_model_name_picks_the_adapter(served: tuple[str, FakeEngine, Metrics], path: str, body: dict) -> None:
    url, engine, metrics = served
    with_adapter = httpx.post(url + path, json={**body, "model": "team-style"})
    base = httpx.post(url + path, json={**body, "model": BASE})
    unnamed = httpx.post(url + path, json=body)
    assert [r.status_code for r in (with_adapter, base, unnamed)] == [200, 200, 200]
    assert [s.adapter for s in engine.samplings] == ["team-style", None, None]
    assert with_adapter.json()["model"] == "team-style"
    endpoint = "completions" if "chat" not in path else "chat"
    assert metrics.generation_tokens.labels(endpoint, "team-style")._value.get() == 3
    assert metrics.generation_tokens.labels(endpoint, BASE)._value.get() == 6
