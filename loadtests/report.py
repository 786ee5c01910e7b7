"""Load-test results: per-stream samples, the summary (percentiles, tokens/s, errors, cancellations),
pass/fail checks, the server's own /metrics before and after, and the written report files."""

from __future__ import annotations

import json
import re
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests


@dataclass(frozen=True)
class Sample:
    at: float  # unix time the stream ended
    name: str  # "completions" | "chat"
    ttft_ms: float | None
    itl_ms: float | None
    e2e_ms: float
    tokens: int  # text-bearing events (one per generated token on a streaming server)
    cancelled: bool


@dataclass
class Results:
    samples: list[Sample] = field(default_factory=list)
    errors: Counter[tuple[str, int]] = field(default_factory=Counter)
    started: float = field(default_factory=time.time)
    server_before: dict[str, float] = field(default_factory=dict)
    server_after: dict[str, float] = field(default_factory=dict)

    def reset(self) -> None:
        self.samples.clear()
        self.errors.clear()
        self.started = time.time()

    def add(self, sample: Sample) -> None:
        self.samples.append(sample)

    def add_error(self, name: str, status: int) -> None:
        self.errors[(name, status)] += 1

    def summary(self) -> dict[str, Any]:
        duration = max(time.time() - self.started, 1e-9)
        streams = len(self.samples) + sum(self.errors.values())
        result: dict[str, Any] = {
            "duration_s": round(duration, 1),
            "streams": streams,
            "completed": sum(1 for s in self.samples if not s.cancelled),
            "cancelled": sum(1 for s in self.samples if s.cancelled),
            "errors": {f"{n} {status}": c for (n, status), c in sorted(self.errors.items())},
            "error_rate": sum(self.errors.values()) / streams if streams else 0.0,
            "server_5xx": sum(c for (_, status), c in self.errors.items() if status >= 500),
            "tokens_per_s": sum(s.tokens for s in self.samples) / duration,
            "requests_per_s": streams / duration,
            "by_endpoint": {},
        }
        for name in sorted({s.name for s in self.samples}):
            mine = [s for s in self.samples if s.name == name]
            result["by_endpoint"][name] = {
                "streams": len(mine),
                "ttft_ms": percentiles([s.ttft_ms for s in mine if s.ttft_ms is not None]),
                "itl_ms": percentiles([s.itl_ms for s in mine if s.itl_ms is not None]),
                "e2e_ms": percentiles([s.e2e_ms for s in mine if not s.cancelled]),
                "tokens_per_s": sum(s.tokens for s in mine) / duration,
            }
        result["server"] = server_delta(self.server_before, self.server_after)
        return result


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    if len(values) == 1:
        return {"p50": values[0], "p95": values[0], "p99": values[0]}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(q[49], 1), "p95": round(q[94], 1), "p99": round(q[98], 1)}


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")
WATCHED = ("codeserve_requests_in_flight", "codeserve_requests_cancelled_total", "codeserve_engine_unfinished_requests",
           "codeserve_requests_rejected_total", "codeserve_requests_superseded_total",
           # vLLM's own: prefix-cache reuse and speculative decoding over the run
           "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
           "vllm:spec_decode_num_draft_tokens_total", "vllm:spec_decode_num_accepted_tokens_total")


def server_metrics(host: str, headers: dict[str, str]) -> dict[str, float]:
    """Sums of the codeserve counters/gauges the checks need; {} when the server has none (e.g. vLLM's)."""
    if not host:
        return {}
    try:
        text = requests.get(host.rstrip("/") + "/metrics", headers=headers, timeout=10).text
    except requests.RequestException:
        return {}
    totals: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) in WATCHED:
            totals[match.group(1)] = totals.get(match.group(1), 0.0) + float(match.group(3))
    return totals


def server_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    if not after:
        return {}

    def grown(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    queries, drafted = grown("vllm:prefix_cache_queries_total"), grown("vllm:spec_decode_num_draft_tokens_total")
    return {
        "in_flight_after": after.get("codeserve_requests_in_flight", 0.0),
        "engine_unfinished_after": after.get("codeserve_engine_unfinished_requests", 0.0),
        # ended early on the server: the client left, or a newer request of the same user took its place
        # (a client that closes its stale stream just before sending the next one races the two)
        "cancelled": grown("codeserve_requests_cancelled_total") + grown("codeserve_requests_superseded_total"),
        "superseded": grown("codeserve_requests_superseded_total"),
        "rejected": grown("codeserve_requests_rejected_total"),
        "prefix_cache_hit_rate": round(grown("vllm:prefix_cache_hits_total") / queries, 3) if queries else None,
        "spec_acceptance_rate": (round(grown("vllm:spec_decode_num_accepted_tokens_total") / drafted, 3)
                                 if drafted else None),
    }


def check(summary: dict[str, Any], results: Results, max_p95_ttft_ms: float, max_error_rate: float,
          require_server_metrics: bool = True) -> list[str]:
    failures = []
    if summary["server_5xx"]:
        failures.append(f"{summary['server_5xx']} server errors (5xx)")
    if summary["error_rate"] > max_error_rate:
        failures.append(f"error rate {summary['error_rate']:.1%} > {max_error_rate:.1%}")
    if max_p95_ttft_ms:
        for name, stats in summary["by_endpoint"].items():
            p95 = stats["ttft_ms"]["p95"]
            if p95 is not None and p95 > max_p95_ttft_ms:
                failures.append(f"{name}: p95 TTFT {p95:.0f} ms > {max_p95_ttft_ms:.0f} ms")
    server = summary.get("server") or {}
    if not server and require_server_metrics:
        failures.append("could not read codeserve's metrics from the server's /metrics, so the leak check did not "
                        "run (a key is needed? pass --api-key; not codeserve? pass --no-server-metrics)")
    if server:
        if server["in_flight_after"] or server["engine_unfinished_after"]:
            failures.append(f"leak: {server['in_flight_after']:.0f} requests in flight and "
                            f"{server['engine_unfinished_after']:.0f} in the engine after the run")
        # A client that closes just as the server writes its last event cancels nothing on the server:
        # allow that race for a few percent of cancellations, never more.
        sent = summary["cancelled"]
        if abs(server["cancelled"] - sent) > max(1, 0.05 * sent):
            failures.append(f"server counted {server['cancelled']:.0f} cancellations, the client sent {sent}")
    return failures


def render(summary: dict[str, Any]) -> str:
    lines = [f"# Load test: {summary['streams']} streams in {summary['duration_s']} s",
             "",
             f"- throughput: {summary['tokens_per_s']:.1f} tokens/s, {summary['requests_per_s']:.2f} requests/s",
             f"- completed {summary['completed']}, cancelled by the client {summary['cancelled']}, "
             f"errors {sum(summary['errors'].values())} ({summary['error_rate']:.1%})",
             "",
             "| endpoint | streams | TTFT p50/p95/p99 ms | ITL p50/p95/p99 ms | e2e p50/p95/p99 ms | tokens/s |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, s in summary["by_endpoint"].items():
        cells = ["/".join("-" if v is None else f"{v:.0f}" for v in s[k].values())
                 for k in ("ttft_ms", "itl_ms", "e2e_ms")]
        lines.append(f"| {name} | {s['streams']} | {cells[0]} | {cells[1]} | {cells[2]} | {s['tokens_per_s']:.1f} |")
    server = summary.get("server") or {}
    if server:
        lines += ["", f"- server after the run: {server['in_flight_after']:.0f} in flight, "
                      f"{server['engine_unfinished_after']:.0f} engine requests, "
                      f"{server['cancelled']:.0f} cancellations counted ({server.get('superseded', 0):.0f} "
                      f"superseded), {server['rejected']:.0f} rejected (429)"]
        if server.get("prefix_cache_hit_rate") is not None:
            lines.append(f"- prefix cache hit rate {server['prefix_cache_hit_rate']:.1%}")
        if server.get("spec_acceptance_rate") is not None:
            lines.append(f"- speculative decoding: {server['spec_acceptance_rate']:.1%} of draft tokens accepted")
    if summary.get("failures"):
        lines += ["", "FAILED: " + "; ".join(summary["failures"])]
    else:
        lines += ["", "PASSED"]
    return "\n".join(lines)


def write(summary: dict[str, Any], results: Results, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(render(summary) + "\n")
    (out / "samples.json").write_text(json.dumps([asdict(s) for s in results.samples]))
    plot(results, out / "latency.png")


def plot(results: Results, path: Path, bucket_s: float = 5.0) -> None:
    """TTFT percentiles and tokens/s over time, in buckets of `bucket_s` seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not results.samples:
        return
    start = results.started
    buckets: dict[int, list[Sample]] = {}
    for sample in results.samples:
        buckets.setdefault(int((sample.at - start) // bucket_s), []).append(sample)
    xs = sorted(buckets)
    times = [x * bucket_s for x in xs]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for q, label in ((50, "p50"), (95, "p95"), (99, "p99")):
        values = []
        for x in xs:
            ttfts = [s.ttft_ms for s in buckets[x] if s.ttft_ms is not None]
            values.append(percentiles(ttfts)[label] if ttfts else None)
        top.plot(times, [v if v is not None else float("nan") for v in values], marker="o", label=f"TTFT {label}")
        del q
    top.set_ylabel("time to first token (ms)")
    top.legend()
    top.grid(alpha=0.3)
    bottom.plot(times, [sum(s.tokens for s in buckets[x]) / bucket_s for x in xs], color="tab:green", marker="o")
    bottom.set_ylabel("tokens/s")
    bottom.set_xlabel("seconds since start")
    bottom.grid(alpha=0.3)
    fig.suptitle("codeserve load test")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
