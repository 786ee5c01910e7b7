"""Shared fixtures: settings isolated from the developer's environment, the real catalog."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server.planner.catalog import Catalog, load_catalog
from server.planner.hardware import CpuInfo
from server.settings import DEFAULT_CATALOG_PATH, Settings

GIB = 1024**3
FIXED_CPU = CpuInfo(cores=16, ram_total_bytes=64 * GIB, ram_available_bytes=60 * GIB)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No CODESERVE_* variable or .env file of the developer's leaks into a test."""
    import os

    for key in list(os.environ):
        if key.startswith("CODESERVE_") and key != "CODESERVE_CACHE_DIR":
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    yield


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog(DEFAULT_CATALOG_PATH)


def make_settings(**overrides: object) -> Settings:
    return Settings(_env_file=None, **overrides)  # type: ignore[call-arg]


@pytest.fixture
def repo_root() -> Path:
    return DEFAULT_CATALOG_PATH.parent.parent
