"""Every Prometheus metric codeserve exports, defined once, in a registry the entry point chooses.

In production that is prometheus_client's default REGISTRY, where vLLM registers its own `vllm:*`
metrics, so one /metrics endpoint shows both. Tests pass a fresh registry.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .planner.hardware import GpuMemory
    from .planner.plan import Plan

# IDE latency: completions are judged at 100-300 ms, chat answers run to tens of seconds.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0,
                     7.5, 10.0, 15.0, 20.0, 30.0, 60.0)
# On the way to serving: what the server does now (README, "Time to serve"). `failed` covers an engine that never
# loaded and one that died later.
START_PHASES = ("downloading", "quantizing", "loading", "serving", "failed")
INTER_TOKEN_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
                         0.5, 1.0, 2.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        r = registry
        self.requests = Counter("codeserve_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        # Per-request families carry the model that served it (with role completion,chat two engines run).
        self.in_flight = Gauge("codeserve_requests_in_flight", "Generation requests being served",
                               ["endpoint", "model"], registry=r)
        self.cancelled = Counter("codeserve_requests_cancelled", "Requests whose client went away before the end",
                                 ["endpoint", "model"], registry=r)
        self.superseded = Counter("codeserve_requests_superseded",
                                  "Completions ended (and their engine requests aborted) because a newer one from "
                                  "the same user or id_slot arrived", ["endpoint", "model"], registry=r)
        self.rejected = Counter("codeserve_requests_rejected", "Requests refused with 429 (server full)",
                                ["endpoint"], registry=r)
        self.queue_time = Histogram("codeserve_queue_time_seconds", "Wait for a free request slot",
                                    ["endpoint", "model"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.ttft = Histogram("codeserve_time_to_first_token_seconds", "Request arrival to first generated token",
                              ["endpoint", "model"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.itl = Histogram("codeserve_inter_token_latency_seconds", "Time between generated tokens",
                             ["endpoint", "model"], buckets=INTER_TOKEN_BUCKETS_S, registry=r)
        self.e2e = Histogram("codeserve_request_duration_seconds", "Request arrival to last byte",
                             ["endpoint", "model"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.prompt_tokens = Counter("codeserve_prompt_tokens", "Prompt tokens processed", ["endpoint", "model"],
                                     registry=r)
        self.infill_cleanups = Counter(
            "codeserve_infill_cleanups", "Fill-in-the-middle completions changed for the editor, by rule: lead (a chat "
            "model's fence or role line dropped), repeat (restated prefix dropped), marker, suffix (cut where it ran "
            "into the suffix), line, indent, bracket (code-aware stops)", ["endpoint", "model", "action"], registry=r)
        self.generation_tokens = Counter("codeserve_generation_tokens", "Tokens generated", ["endpoint", "model"],
                                         registry=r)
        self.endpoints: tuple[str, ...] = ()  # the generation endpoints' names (count_endpoints)
        self.models: list[str] = []  # served so far (serve_model)
        self.gpus = _GpuCollector()
        r.register(self.gpus)
        self.resident = Gauge("codeserve_resident_memory_bytes",
                              "Resident memory of the server and its engine processes", registry=r)
        self.resident.set_function(_resident_bytes)
        self.plan_info = Info("codeserve_plan", "The plan being served, one series per role", ["role"], registry=r)
        self.plan_memory = Gauge("codeserve_plan_memory_bytes", "Planned memory per device by component",
                                 ["model", "component"], registry=r)
        self.ready = Gauge("codeserve_ready", "1 once every engine has loaded and answered a warm-up", registry=r)
        self.start_phase = Gauge("codeserve_start_phase", "1 for the phase the server is in on its way to serving "
                                 f"({', '.join(START_PHASES)}), 0 for the others", ["phase"], registry=r)
        self.start_progress = Gauge("codeserve_start_progress_ratio", "How far the current start phase is, 0..1, "
                                    "where it is measured (download bytes, calibrated layers); absent otherwise",
                                    ["phase"], registry=r)
        self.set_start_phase("loading")
        self.engine_unfinished = Gauge("codeserve_engine_unfinished_requests",
                                       "Requests the engine still holds (running or waiting)", ["model"], registry=r)

    def set_start_phase(self, phase: str, progress: float | None = None) -> None:
        """The phase (one of START_PHASES) and its progress; an unmeasured one has no progress series at all, rather
        than an invented figure."""
        for name in START_PHASES:
            self.start_phase.labels(name).set(1 if name == phase else 0)
        self.start_progress.clear()
        if progress is not None:
            self.start_progress.labels(phase).set(progress)

    def watch_gpus(self, snapshot: Callable[[], list[GpuMemory]] | None) -> None:
        """Poll GPU memory at every scrape (NVML is cheap: microseconds per device)."""
        self.gpus.snapshot = snapshot

    def count_endpoints(self, endpoints: tuple[str, ...]) -> None:
        """The generation endpoints, as the HTTP layer names them: their series exist at 0 from now on
        (Prometheus' advice for labelled metrics: a rate or an alert never sees a missing series where it should
        see zero), for every model served before or after."""
        self.endpoints = tuple(dict.fromkeys((*self.endpoints, *endpoints)))
        for endpoint in endpoints:
            self.rejected.labels(endpoint)
        for model in self.models:
            self._declare(model)

    def _declare(self, model: str) -> None:
        for endpoint in self.endpoints:
            for family in (self.in_flight, self.cancelled, self.superseded, self.prompt_tokens,
                           self.generation_tokens):
                family.labels(endpoint, model)

    def count_response(self, endpoint: str, status: int) -> None:
        """Every response of the API routes, once, by status: 401s, validation 400s and 413s included."""
        self.requests.labels(endpoint, str(status)).inc()
        if status == 429:
            self.rejected.labels(endpoint).inc()

    def serve_model(self, model: str, unfinished: Callable[[], int] | None = None) -> None:
        """A model is being served: its request series exist at 0 from now (Prometheus' advice for labelled
        metrics: a rate or an alert never sees a missing series where it should see zero). `unfinished` is its
        engine's count (a LoRA adapter has none of its own: its base model's engine counts its requests)."""
        if unfinished is not None:
            self.engine_unfinished.labels(model).set_function(lambda: float(unfinished()))
        self.models.append(model)
        self._declare(model)

    def set_plan(self, plan: Plan, engine: str, max_model_len: int, role: str = "completion") -> None:
        """The option that is running (after any fallback), the engine serving it and its real context."""
        chosen = plan.chosen
        self.plan_info.labels(role).info({
            "model": chosen.model.id,
            "precision": chosen.precision,
            "tensor_parallel_size": str(chosen.tensor_parallel_size),
            "replicas": str(chosen.replicas),
            "engine": engine,
            "max_model_len": str(max_model_len),
            "device": chosen.device_name,
            "fallbacks_taken": str(len(plan.failed_to_start)),
        })
        for component, value in chosen.memory.to_dict().items():
            self.plan_memory.labels(chosen.model.id, component).set(value)


class _GpuCollector(Collector):
    """codeserve_gpu_memory_{used,free,total}_bytes{gpu,name}, read from NVML when scraped."""

    def __init__(self) -> None:
        self.snapshot: Callable[[], list[GpuMemory]] | None = None

    def describe(self) -> list[GaugeMetricFamily]:
        return list(self._families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gpus = self.snapshot() if self.snapshot is not None else []
        families = self._families()
        for gpu in gpus:
            labels = [str(gpu.index), gpu.name]
            families[0].add_metric(labels, gpu.used_bytes)
            families[1].add_metric(labels, gpu.free_bytes)
            families[2].add_metric(labels, gpu.total_bytes)
        yield from families

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return tuple(GaugeMetricFamily(f"codeserve_gpu_memory_{kind}_bytes", f"GPU memory {kind} (NVML)",
                                       labels=["gpu", "name"]) for kind in ("used", "free", "total"))  # type: ignore[return-value]


def _resident_bytes() -> float:
    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            continue  # exited between listing and reading
    return float(total)


class RequestObserver:
    """One request's timeline: arrival, first token, each later token, end."""

    def __init__(self, metrics: Metrics | None, endpoint: str, clock: Callable[[], float] = time.perf_counter):
        self.metrics = metrics
        self.endpoint = endpoint
        self.clock = clock
        self.started = clock()
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.status: int | None = None  # how the request ended (499: the client left), once it has
        self.model = ""  # the served model, once the request has been routed to one
        self._in_flight = False

    def begin(self) -> None:
        if self.metrics is not None and not self._in_flight:
            self.metrics.in_flight.labels(self.endpoint, self.model).inc()
            self.metrics.queue_time.labels(self.endpoint, self.model).observe(self.clock() - self.started)
            self._in_flight = True

    def prompt_tokens(self, count: int) -> None:
        if self.metrics is not None:
            self.metrics.prompt_tokens.labels(self.endpoint, self.model).inc(count)

    def cleaned(self, actions: list[str]) -> None:
        if self.metrics is not None:
            for action in actions:
                self.metrics.infill_cleanups.labels(self.endpoint, self.model, action).inc()

    def tokens(self, count: int) -> None:
        if count <= 0:
            return
        now = self.clock()
        if self.metrics is not None:
            if self.first_token_at is None:
                self.metrics.ttft.labels(self.endpoint, self.model).observe(now - self.started)
            elif self.last_token_at is not None:
                # several tokens in one delta: spread the gap over them
                gap = (now - self.last_token_at) / count
                for _ in range(count):
                    self.metrics.itl.labels(self.endpoint, self.model).observe(gap)
            self.metrics.generation_tokens.labels(self.endpoint, self.model).inc(count)
        if self.first_token_at is None:
            self.first_token_at = now
        self.last_token_at = now

    def end(self, status: int, cancelled: bool = False, superseded: bool = False) -> None:
        """The request is over (counted by status in Metrics.count_response, from `status`)."""
        if self.status is not None:
            return
        self.status = status
        if self.metrics is None:
            return
        m = self.metrics
        if self._in_flight:
            m.in_flight.labels(self.endpoint, self.model).dec()
            self._in_flight = False
        if cancelled:
            m.cancelled.labels(self.endpoint, self.model).inc()
        if superseded:
            m.superseded.labels(self.endpoint, self.model).inc()
        if status < 400 and not cancelled:
            m.e2e.labels(self.endpoint, self.model).observe(self.clock() - self.started)
