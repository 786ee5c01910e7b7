"""The package's shape: imports point down the layers, only engine adapters import vLLM, modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from server.settings import REPO_ROOT

PACKAGE = REPO_ROOT / "server"
# settings -> planner -> engine (and model preparation) -> generation -> HTTP -> entry points.
# A module may import its own layer and the ones before it, never a later one.
LAYERS = [
    {"server.settings", "server.roles", "server.errors", "server.fsutil", "server.fim"},
    {"server.planner"},
    {"server.engine", "server.prepare", "server.quantize", "server.metrics"},
    {"server.generation", "server.evaluation"},
    {"server.api"},
    {"server.serve", "server.planning", "server.model_source", "server.deployment", "server.cli", "server.plan_report"},
]
MAX_LINES = 400


def _layer(module: str) -> int:
    if module in ("server", "server.__version__"):  # the package root: its version string only
        return 0
    for rank, names in enumerate(LAYERS):
        if any(module == name or module.startswith(name + ".") for name in names):
            return rank
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in {__file__}")


def _module(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in the file, relative ones resolved."""
    package = _module(path).split(".") if path.name == "__init__.py" else _module(path).split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            found += [(node.lineno, f"{target}.{alias.name}" if node.module is None else target)
                      for alias in node.names]
    return found


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "worker.py")  # worker: its own venv, no server.*


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_imports_point_down_the_layers(path: Path) -> None:
    own = _layer(_module(path))
    upward = [f"line {line}: {name}" for line, name in _imports(path)
              if name.startswith("server.") and _layer(name) > own]
    assert not upward, f"{_module(path)} imports a later layer: {upward}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_only_engine_adapters_import_vllm(path: Path) -> None:
    if _module(path).startswith("server.engine."):
        return
    assert not [name for _, name in _imports(path) if name == "vllm" or name.startswith("vllm.")]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_modules_stay_small(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_relative_imports_are_resolved() -> None:
    """The layer check reads `from ..x import y` as server.x: were it not, it would pass on anything."""
    names = {name for _, name in _imports(PACKAGE / "api" / "endpoint.py")}
    assert {"server.generation.core", "server.api.errors", "server.errors"} <= names
    names = {name for _, name in _imports(PACKAGE / "api" / "app.py")}
    assert {"server.__version__", "server.api.errors"} <= names
    assert _layer("server.api.endpoint") > _layer("server.generation.core") > _layer("server.engine.base")
