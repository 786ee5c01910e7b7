"""Start-up logic of `codeserve serve` that does not need an engine: the out-of-memory fallback and
settings that feed the server."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from server import serve
from server.engine.base import EngineStartError
from server.engine.fake import FakeEngine
from server.planner.catalog import Catalog
from server.planner.hardware import simulated
from server.planner.plan import plan
from tests.conftest import FIXED_CPU, make_settings


class _StartsAfterOom:
    """Stands in for VllmEngine.start: the first `failures` options run out of memory."""

    def __init__(self, failures: int, out_of_memory: bool = True):
        self.failures = failures
        self.out_of_memory = out_of_memory
        self.models: list[str] = []

    def __call__(self, engine_args: dict[str, Any], engine_env: dict[str, str]) -> FakeEngine:
        self.models.append(engine_args["served_model_name"][0])
        if len(self.models) <= self.failures:
            raise EngineStartError("CUDA out of memory. Tried to allocate 2.00 GiB", self.out_of_memory)
        return FakeEngine(model_id=engine_args["served_model_name"][0])


@pytest.fixture
def gpu_plan(catalog: Catalog):
    # 1 x A100-80GB, chat: the choice and its fallbacks are all published or online-quantized checkpoints
    return plan(simulated("1xA100-80GB", FIXED_CPU), catalog, make_settings(role="chat", precision="fp8"))


def test_out_of_memory_takes_the_next_fallback(monkeypatch, gpu_plan, caplog, tmp_path: Path) -> None:
    from server.engine import vllm

    starter = _StartsAfterOom(failures=1)
    monkeypatch.setattr(vllm.VllmEngine, "start", staticmethod(starter))
    with caplog.at_level(logging.WARNING, logger="codeserve"):
        engine, option = serve.start_engine(gpu_plan, make_settings(cache_dir=tmp_path))
    assert starter.models == [gpu_plan.chosen.model.id, gpu_plan.fallbacks[0].model.id]
    assert option == gpu_plan.fallbacks[0] and engine.model_id == option.model.id
    assert "falling back to" in caplog.text and "out of memory" in caplog.text


def test_other_start_errors_are_not_hidden(monkeypatch, gpu_plan, tmp_path: Path) -> None:
    from server.engine import vllm

    monkeypatch.setattr(vllm.VllmEngine, "start", staticmethod(_StartsAfterOom(1, out_of_memory=False)))
    with pytest.raises(EngineStartError, match="out of memory"):
        serve.start_engine(gpu_plan, make_settings(cache_dir=tmp_path))


def test_engine_args_override(catalog: Catalog, tmp_path: Path) -> None:
    option = plan(simulated("2xA100-80GB", FIXED_CPU), catalog, make_settings(precision="fp8")).chosen
    settings = make_settings(cache_dir=tmp_path, engine_args={"distributed_executor_backend": "ray"})
    args = serve._engine_args(replace(option), settings, settings.model)
    assert args["distributed_executor_backend"] == "ray" and args["model"] == option.engine_args["model"]


def test_api_keys_from_variable_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# team keys\nfile-key-1\n\nfile-key-2\n")
    monkeypatch.setenv("CODESERVE_API_KEYS", "env-a, env-b")
    monkeypatch.setenv("CODESERVE_API_KEYS_FILE", str(keys))
    settings = make_settings()
    assert settings.all_api_keys() == ["env-a", "env-b", "file-key-1", "file-key-2"]
    assert "env-a" not in repr(settings)  # SecretStr: never printed or logged


def test_engine_args_from_the_environment_are_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODESERVE_ENGINE_ARGS", '{"pipeline_parallel_size": 2}')
    assert make_settings().engine_args == {"pipeline_parallel_size": 2}
