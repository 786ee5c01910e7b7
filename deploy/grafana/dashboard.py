"""Generates deploy/grafana/codeserve.json, the Grafana dashboard for codeserve.

Written as data (panels = title + PromQL) so that tests can check every query against a real
Prometheus and against the metrics a running server exports. Run after editing:
    .venv/bin/python deploy/grafana/dashboard.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("codeserve.json")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# (title, unit, [(legend, expr)]) per row; the order is the layout, 2 panels a row.
PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("Time to first token", "s", [
        ("p50 {{endpoint}} {{model}}", 'histogram_quantile(0.5, sum by (endpoint, model, le) '
                             '(rate(codeserve_time_to_first_token_seconds_bucket{job=~"$job"}[$__rate_interval])))'),
        ("p95 {{endpoint}} {{model}}", 'histogram_quantile(0.95, sum by (endpoint, model, le) '
                             '(rate(codeserve_time_to_first_token_seconds_bucket{job=~"$job"}[$__rate_interval])))'),
    ]),
    ("Inter-token latency", "s", [
        ("p50 {{endpoint}} {{model}}", 'histogram_quantile(0.5, sum by (endpoint, model, le) '
                             '(rate(codeserve_inter_token_latency_seconds_bucket{job=~"$job"}[$__rate_interval])))'),
        ("p95 {{endpoint}} {{model}}", 'histogram_quantile(0.95, sum by (endpoint, model, le) '
                             '(rate(codeserve_inter_token_latency_seconds_bucket{job=~"$job"}[$__rate_interval])))'),
    ]),
    ("End-to-end latency", "s", [
        ("p50 {{endpoint}} {{model}}", 'histogram_quantile(0.5, sum by (endpoint, model, le) '
                             '(rate(codeserve_request_duration_seconds_bucket{job=~"$job"}[$__rate_interval])))'),
        ("p95 {{endpoint}} {{model}}", 'histogram_quantile(0.95, sum by (endpoint, model, le) '
                             '(rate(codeserve_request_duration_seconds_bucket{job=~"$job"}[$__rate_interval])))'),
    ]),
    ("Tokens per second", "short", [
        ("generated {{model}}",
         'sum by (model) (rate(codeserve_generation_tokens_total{job=~"$job"}[$__rate_interval]))'),
        ("prompt {{model}}", 'sum by (model) (rate(codeserve_prompt_tokens_total{job=~"$job"}[$__rate_interval]))'),
    ]),
    ("Requests per second by status", "reqps", [
        ("{{endpoint}} {{status}}", 'sum by (endpoint, status) (rate(codeserve_requests_total{job=~"$job"}'
                                    '[$__rate_interval]))'),
    ]),
    ("Errors, cancellations, rejections", "reqps", [
        ("5xx", 'sum(rate(codeserve_requests_total{job=~"$job", status=~"5.."}[$__rate_interval]))'),
        ("cancelled (client left)", 'sum(rate(codeserve_requests_cancelled_total{job=~"$job"}[$__rate_interval]))'),
        ("rejected (429)", 'sum(rate(codeserve_requests_rejected_total{job=~"$job"}[$__rate_interval]))'),
    ]),
    ("FIM answers changed for the editor, by rule", "reqps", [
        ("{{action}}", 'sum by (action) (rate(codeserve_infill_cleanups_total{job=~"$job"}[$__rate_interval]))'),
    ]),
    ("In flight and queued", "short", [
        ("in flight {{endpoint}}", 'sum by (endpoint) (codeserve_requests_in_flight{job=~"$job"})'),
        ("engine running", 'sum(vllm:num_requests_running{job=~"$job"})'),
        ("engine waiting", 'sum(vllm:num_requests_waiting{job=~"$job"})'),
    ]),
    ("KV cache usage", "percentunit", [
        ("{{instance}}", 'max by (instance) (vllm:kv_cache_usage_perc{job=~"$job"})'),
    ]),
    ("GPU memory: used vs planned", "bytes", [
        ("used GPU {{gpu}} {{name}}", 'codeserve_gpu_memory_used_bytes{job=~"$job"}'),
        ("total GPU {{gpu}}", 'codeserve_gpu_memory_total_bytes{job=~"$job"}'),
        ("planned {{component}}",
         'codeserve_plan_memory_bytes{job=~"$job", component=~"weights|kv_cache|activation|overhead|budget"}'),
    ]),
    ("Start phase and its progress", "percentunit", [
        ("{{instance}} {{phase}}", 'codeserve_start_phase{job=~"$job"} == 1'),
        ("{{instance}} {{phase}} progress", 'codeserve_start_progress_ratio{job=~"$job"}'),
    ]),
    ("Process memory (CPU serving)", "bytes", [
        ("resident {{instance}}", 'codeserve_resident_memory_bytes{job=~"$job"}'),
        ("planned total", 'codeserve_plan_memory_bytes{job=~"$job", component="total"}'),
    ]),
]


def _panel(index: int, title: str, unit: str, targets: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": title,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2) + 3},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend, "datasource": DATASOURCE}
                    for i, (legend, expr) in enumerate(targets)],
    }


def dashboard() -> dict[str, Any]:
    plan_panel = {
        "id": 100, "type": "table", "title": "Plan being served", "datasource": DATASOURCE,
        "gridPos": {"h": 3, "w": 24, "x": 0, "y": 0},
        "targets": [{"refId": "A", "expr": 'codeserve_plan_info{job=~"$job"}', "format": "table", "instant": True,
                     "datasource": DATASOURCE}],
    }
    return {
        "uid": "codeserve",
        "title": "codeserve",
        "tags": ["codeserve", "llm", "vllm"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "current": {}},
            {"name": "job", "type": "query", "datasource": DATASOURCE, "query": "label_values(codeserve_ready, job)",
             "includeAll": True, "multi": True, "current": {}, "refresh": 2},
        ]},
        "panels": [plan_panel, *(_panel(i, *p) for i, p in enumerate(PANELS))],
    }


def expressions(board: dict[str, Any]) -> list[str]:
    return [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]


if __name__ == "__main__":
    OUT.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"wrote {OUT}")
