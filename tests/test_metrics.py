"""Metric definitions and the per-request observer, against a fresh registry and a controlled clock."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from server.metrics import Metrics, RequestObserver
from server.planner.choose import choose
from server.planner.hardware import gpu_memory, simulated
from tests.conftest import FIXED_CPU, make_settings
from tests.planner.test_hardware import FakeNvml

GIB = 1024**3


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _value(metrics: Metrics, metric: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(metric, labels)
    return 0.0 if value is None else value


def test_request_timeline() -> None:
    metrics, clock = Metrics(CollectorRegistry()), Clock()
    at = {"endpoint": "completions", "model": "m"}
    observer = RequestObserver(metrics, "completions", clock)
    observer.model = "m"
    clock.now += 0.01
    observer.begin()  # waited 10 ms for a slot
    assert _value(metrics, "codeserve_requests_in_flight", **at) == 1
    observer.prompt_tokens(12)
    clock.now += 0.20
    observer.tokens(1)  # first token at 210 ms
    clock.now += 0.05
    observer.tokens(2)  # two tokens 50 ms later: 25 ms apart each
    clock.now += 0.10
    observer.end(200)
    assert _value(metrics, "codeserve_time_to_first_token_seconds_sum", **at) == pytest.approx(0.21)
    assert _value(metrics, "codeserve_inter_token_latency_seconds_count", **at) == 2
    assert _value(metrics, "codeserve_inter_token_latency_seconds_sum", **at) == pytest.approx(0.05)
    assert _value(metrics, "codeserve_request_duration_seconds_sum", **at) == pytest.approx(0.36)
    assert _value(metrics, "codeserve_queue_time_seconds_sum", **at) == pytest.approx(0.01)
    assert _value(metrics, "codeserve_generation_tokens_total", **at) == 3
    assert _value(metrics, "codeserve_prompt_tokens_total", **at) == 12
    assert observer.status == 200  # what the response accounting counts (tests/api/test_hardening.py)
    assert _value(metrics, "codeserve_requests_in_flight", **at) == 0
    observer.end(500)  # a second end changes nothing: the request ended once
    assert observer.status == 200


def test_cancelled_and_rejected_requests() -> None:
    metrics = Metrics(CollectorRegistry())
    cancelled = RequestObserver(metrics, "chat")
    cancelled.model = "m"
    cancelled.begin()
    cancelled.end(499, cancelled=True)
    RequestObserver(metrics, "chat").end(429)  # rejected before it began
    metrics.count_response("chat", 429)
    metrics.count_response("chat", 499)
    assert _value(metrics, "codeserve_requests_cancelled_total", endpoint="chat", model="m") == 1
    assert _value(metrics, "codeserve_requests_rejected_total", endpoint="chat") == 1
    assert _value(metrics, "codeserve_requests_total", endpoint="chat", status="499") == 1
    assert _value(metrics, "codeserve_requests_in_flight", endpoint="chat", model="m") == 0
    assert _value(metrics, "codeserve_request_duration_seconds_count", endpoint="chat", model="m") == 0


def test_gpu_memory_from_nvml() -> None:
    nvml = FakeNvml([{"name": "NVIDIA L4", "total": 22 * GIB, "free": 2 * GIB, "cc": (8, 9)},
                     {"name": "NVIDIA L4", "total": 22 * GIB, "free": 20 * GIB, "cc": (8, 9)}])
    metrics = Metrics(CollectorRegistry())
    metrics.watch_gpus(lambda: gpu_memory(nvml, None))
    assert _value(metrics, "codeserve_gpu_memory_free_bytes", gpu="0", name="NVIDIA L4") == 2 * GIB
    assert _value(metrics, "codeserve_gpu_memory_total_bytes", gpu="1", name="NVIDIA L4") == 22 * GIB
    assert nvml.shutdown_called


def test_plan_is_exported_with_the_running_context(catalog) -> None:
    metrics = Metrics(CollectorRegistry())
    result = choose(simulated("1xL4", FIXED_CPU), catalog, make_settings())
    assert result.max_model_len == 8192
    metrics.set_plan(result, "vllm", 4096)  # the engine reports less than planned (e.g. CODESERVE_ENGINE_ARGS)
    labels = {"role": "completion", "model": result.chosen.model.id, "precision": result.chosen.precision,
              "tensor_parallel_size": "1", "replicas": "1", "engine": "vllm", "max_model_len": "4096", "device": "L4",
              "fallbacks_taken": "0"}
    assert _value(metrics, "codeserve_plan_info", **labels) == 1
    assert _value(metrics, "codeserve_plan_memory_bytes", model=result.chosen.model.id,
                  component="weights") == result.chosen.memory.weights


def test_each_served_model_has_its_own_series_from_zero() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.serve_model("fast", lambda: 2)
    metrics.count_endpoints(("completions", "chat"))  # the HTTP layer names them, before or after a model loads
    metrics.serve_model("large", lambda: 5)
    for model in ("fast", "large"):
        assert _value(metrics, "codeserve_requests_in_flight", endpoint="chat", model=model) == 0
        assert metrics.registry.get_sample_value("codeserve_requests_in_flight", {"endpoint": "chat", "model": model}) \
            is not None  # exported at 0, not missing
    assert _value(metrics, "codeserve_engine_unfinished_requests", model="fast") == 2
    assert _value(metrics, "codeserve_engine_unfinished_requests", model="large") == 5
    observer = RequestObserver(metrics, "completions")
    observer.model = "fast"
    observer.begin()
    observer.tokens(3)
    observer.end(200)
    assert _value(metrics, "codeserve_generation_tokens_total", endpoint="completions", model="fast") == 3
    assert _value(metrics, "codeserve_generation_tokens_total", endpoint="completions", model="large") == 0


def test_resident_memory_counts_this_process() -> None:
    assert _value(Metrics(CollectorRegistry()), "codeserve_resident_memory_bytes") > 10 * 1024**2


def test_exposition_passes_promtool(catalog) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (scripts/setup.sh --test installs Debian's prometheus)")
    metrics = Metrics(CollectorRegistry())
    metrics.set_plan(choose(simulated("1xL4", FIXED_CPU), catalog, make_settings()), "vllm", 8192)
    observer = RequestObserver(metrics, "completions")
    observer.begin()
    observer.tokens(1)
    observer.end(200)
    result = subprocess.run([promtool, "check", "metrics"], input=generate_latest(metrics.registry),
                            capture_output=True)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
