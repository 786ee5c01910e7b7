"""The app over the deterministic fake engine, served on a real socket."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from server.api.app import build_app
from server.api.auth import KeyCheck
from server.api.limits import Limiter
from server.api.serving import Runtime
from server.engine.fake import FakeEngine
from server.generation.core import Generator, ServedModel
from server.metrics import Metrics
from server.planner.catalog import Catalog
from tests.serverutil import running


@dataclass
class Served:
    url: str
    engine: FakeEngine
    runtime: Runtime
    metrics: Metrics


def make_runtime(catalog: Catalog, engine: FakeEngine, model_id: str = "qwen2.5-coder-7b",
                 keys: list[str] | None = None, max_concurrent: int = 8, max_queued: int = 8) -> Runtime:
    entry = catalog.get(model_id)
    assert entry is not None
    metrics = Metrics(CollectorRegistry())
    runtime = Runtime(Limiter(max_concurrent, max_queued), KeyCheck(keys or []), metrics)
    runtime.generator = Generator(engine, ServedModel(entry.id, entry, engine.max_model_len))
    runtime.status = "ready"
    runtime.plan = {"model": {"id": entry.id}}
    metrics.watch_engine(engine.num_unfinished_requests)
    return runtime


@pytest.fixture
def serve_fake(catalog: Catalog) -> Iterator:
    """Factory: serve_fake(engine=..., model_id=..., keys=...) -> Served (stopped after the test)."""
    stack = []

    def start(engine: FakeEngine | None = None, **kwargs: object) -> Served:
        engine = engine or FakeEngine()
        runtime = make_runtime(catalog, engine, **kwargs)  # type: ignore[arg-type]
        cm = running(build_app(runtime))
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
