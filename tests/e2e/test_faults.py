"""The soak with faults, short (loadtests/soak.py): IDE traffic with mid-stream cancels and bursts of bad
input against the real engine, then a kill -9 of vLLM's engine core. The server must notice, answer 503,
exit with status 3, and serve again once restarted; nothing may leak. Starts its own server twice (~2 min)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import isolated_env

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_engine_kill_under_load_recovers_without_leaks(tmp_path: Path) -> None:
    out = tmp_path / "soak"
    result = subprocess.run(
        [sys.executable, str(ROOT / "loadtests" / "soak.py"), "--duration", "70", "--kill-at", "30", "--users", "3",
         "--bad-every", "10", "--warm-up", "5", "--out", str(out), "--json", str(tmp_path / "summary.json")],
        capture_output=True, text=True, timeout=900, env=isolated_env(tmp_path))
    logs = "\n".join(p.read_text()[-2000:] for p in sorted(out.glob("server-*.log")))
    assert (tmp_path / "summary.json").is_file(), result.stdout[-3000:] + result.stderr[-3000:] + logs
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["broken_rules"] == [], json.dumps(summary, indent=2) + logs
    assert result.returncode == 0
    assert summary["exit_code_after_kill"] == 3
    assert summary["requests"] > 0 and summary["cancelled"] > 0 and summary["bad_inputs"] >= 10
    assert summary["in_flight_after"] == 0 and summary["engine_unfinished_after"] == 0
    first_log = (out / "server-1.log").read_text()
    assert "the engine cannot serve" in first_log and "exiting in" in first_log
