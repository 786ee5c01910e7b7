"""llama-server's own Prometheus metrics (`llamacpp:*`, its --metrics endpoint) re-exported on codeserve's /metrics,
as vLLM's `vllm:*` are: one scrape shows codeserve's request figures and the engine's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

SCRAPE_TIMEOUT_S = 1.0  # a busy llama-server answers /metrics between decode steps


class LlamaServerMetrics(Collector):
    def __init__(self, url: str):
        self.url = url + "/metrics"

    def describe(self) -> list[Any]:
        return []  # unknown until scraped: registering must not scrape

    def collect(self) -> Iterator[Any]:
        try:
            text = httpx.get(self.url, timeout=SCRAPE_TIMEOUT_S).text
        except httpx.HTTPError:
            return  # the child is gone or busy: codeserve's own metrics still answer
        yield from text_string_to_metric_families(text)
