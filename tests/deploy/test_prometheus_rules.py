"""The alert and recording rules: promtool validates them and runs their unit tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (scripts/setup.sh --test installs Debian's prometheus)")
    return promtool


def test_rules_are_valid() -> None:
    result = subprocess.run([_promtool(), "check", "rules", str(PROMETHEUS / "rules" / "codeserve.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    result = subprocess.run([_promtool(), "test", "rules", "tests/codeserve_test.yml"], cwd=PROMETHEUS,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_config_is_valid() -> None:
    result = subprocess.run([_promtool(), "check", "config", "--syntax-only", str(PROMETHEUS / "prometheus.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
