"""The Grafana dashboard is generated from deploy/grafana/dashboard.py and refers only to real metrics."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from server.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("dashboard", ROOT / "deploy" / "grafana" / "dashboard.py")
assert _spec is not None and _spec.loader is not None
dashboard = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dashboard)

METRIC = re.compile(r"\b((?:codeserve|vllm)[:_][a-zA-Z0-9_:]+)")


def metric_names(expr: str) -> set[str]:
    return set(METRIC.findall(expr))


def test_committed_json_is_up_to_date() -> None:
    committed = json.loads((ROOT / "deploy" / "grafana" / "codeserve.json").read_text())
    assert committed == dashboard.dashboard(), "run .venv/bin/python deploy/grafana/dashboard.py"


def test_every_codeserve_metric_in_the_dashboard_is_exported() -> None:
    text = generate_latest(Metrics(CollectorRegistry()).registry).decode()
    exported = {line.split(" ")[2] for line in text.splitlines() if line.startswith("# TYPE")}
    exposed_series = set()
    for name in exported:
        exposed_series |= {name, name + "_total", name + "_bucket", name + "_info", name + "_count", name + "_sum"}
    used = {m for expr in dashboard.expressions(dashboard.dashboard()) for m in metric_names(expr)}
    missing = {m for m in used if m.startswith("codeserve_") and m not in exposed_series}
    assert missing == set()


def test_panels_have_unique_ids_and_targets() -> None:
    board = dashboard.dashboard()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p["targets"] for p in board["panels"])
