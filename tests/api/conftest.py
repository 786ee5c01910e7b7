"""The app over the deterministic fake engine, served on a real socket, wired the way `serve` wires it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from server.api.app import build_app
from server.api.runtime import Runtime
from server.generation.core import GenerationCore
from server.generation.served import ServedModel
from server.metrics import Metrics
from server.planner.catalog import Catalog
from server.serve import make_runtime
from server.settings import Settings
from tests.conftest import make_settings
from tests.fake_engine import FakeEngine
from tests.serverutil import running


@dataclass
class Served:
    url: str
    engine: FakeEngine
    runtime: Runtime
    metrics: Metrics

    def value(self, family: str, endpoint: str) -> float:
        """A per-request metric's value for `endpoint` and the served model."""
        assert self.runtime.cores
        sample: float = getattr(self.metrics, family).labels(endpoint, self.runtime.cores[0].served.id)._value.get()
        return sample


def ready_runtime(catalog: Catalog, engine: FakeEngine, model_id: str = "qwen2.5-coder-7b",
                  keys: list[str] | None = None, max_concurrent: int = 8, max_queued: int = 8,
                  **settings_overrides: object) -> tuple[Runtime, Settings]:
    """A runtime from settings (as `serve` builds it) with `engine` loaded as `model_id`."""
    entry = catalog.get(model_id)
    assert entry is not None
    settings = make_settings(api_keys=",".join(keys or []), max_concurrent_requests=max_concurrent,
                             max_queued_requests=max_queued, **settings_overrides)
    metrics = Metrics(CollectorRegistry())
    runtime = make_runtime(settings, metrics)
    runtime.serve(GenerationCore(engine, ServedModel(entry.id, entry, engine.max_model_len), settings.hole_fill,
                                 settings.chat_template_text()))
    runtime.status = "ready"
    runtime.engine = engine.describe()
    metrics.serve_model(entry.id, engine.num_unfinished_requests)
    return runtime, settings


@pytest.fixture
def serve_fake(catalog: Catalog) -> Iterator:
    """Factory: serve_fake(engine=..., model_id=..., keys=...) -> Served (stopped after the test)."""
    stack = []

    def start(engine: FakeEngine | None = None, **kwargs: object) -> Served:
        engine = engine or FakeEngine()
        runtime, settings = ready_runtime(catalog, engine, **kwargs)  # type: ignore[arg-type]
        cm = running(build_app(runtime, settings))
        url = cm.__enter__()
        stack.append(cm)
        assert runtime.metrics is not None
        return Served(url, engine, runtime, runtime.metrics)

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


@pytest.fixture
def fake(serve_fake) -> Served:
    return serve_fake()
