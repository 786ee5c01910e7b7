"""Serve any model: a tiny random model of each architecture, saved as a directory, is planned from its files
(CODESERVE_MODEL=DIR), started by `codeserve serve` on the engine the planner picks for it (vLLM where it runs the
architecture, the Transformers engine for CodeGen, XGLM, T5 and composite encoder-decoders), and serves a streamed
completion, concurrent requests and a client that leaves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from server.planner.catalog import load_catalog
from server.prepare import prepare_bundled
from server.settings import DEFAULT_CATALOG_PATH, Settings
from tests.e2e.conftest import isolated_env, wait_ready
from tests.serverutil import free_port
from tests.tiny_models import build

pytestmark = pytest.mark.e2e
# (kind, engine the planner must pick, the architecture config.json names)
KINDS = [
    ("codegen", "transformers", "CodeGenForCausalLM"),
    ("xglm", "transformers", "XGLMForCausalLM"),
    ("t5", "transformers", "T5ForConditionalGeneration"),
    ("encoder_decoder", "transformers", "EncoderDecoderModel"),  # CodeT5+ 2B-16B's shape: a narrower encoder
    ("gpt_neo", "transformers", "GPTNeoForCausalLM"),  # refused by the installed vLLM's own rule, not a list
    ("gpt_bigcode", "vllm-cpu", "GPTBigCodeForCausalLM"),
    ("gpt_neox", "vllm-cpu", "GPTNeoXForCausalLM"),
    ("llama", "vllm-cpu", "LlamaForCausalLM"),
    ("qwen2", "vllm-cpu", "Qwen2ForCausalLM"),
]
START_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def tokenizer_dir() -> Path:
    return prepare_bundled(Settings(_env_file=None).cache_dir,  # type: ignore[call-arg]
                           load_catalog(DEFAULT_CATALOG_PATH).bundled())


def _metric(url: str, name: str) -> float:
    """The sum of a metric's samples; `name` may carry its labels ('name{a="b"}': that sample only)."""
    total = 0.0
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " ") or ("{" in name and line.startswith(name)):
            total += float(line.rsplit(" ", 1)[1])
    return total


@contextmanager
def serving(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """`codeserve serve` with `env` until /ready (its log on failure), stopped with SIGTERM afterwards."""
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**env, "CODESERVE_HOST": "127.0.0.1", "CODESERVE_PORT": str(port)})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, url, log, START_TIMEOUT_S)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.mark.parametrize(("kind", "engine", "architecture"), KINDS, ids=[k[0] for k in KINDS])
def test_a_model_directory_is_planned_and_served(kind: str, engine: str, architecture: str, tokenizer_dir: Path,
                                                 tmp_path: Path) -> None:
    model = build(kind, tmp_path / f"tiny-{kind}", tokenizer_dir)
    env = isolated_env(tmp_path, CODESERVE_MODEL=str(model), CODESERVE_MAX_CONCURRENT_SEQUENCES="4",
                       CODESERVE_MAX_MODEL_LEN="512")
    with serving(env, tmp_path) as url:
        plan = httpx.get(url + "/v1/plan").json()
        assert plan["engine"]["name"] == engine and plan["model"]["id"] == f"tiny-{kind}"
        assert any(architecture in fact for fact in plan["derived"])
        # a streamed completion: several chunks, then [DONE]
        body = {"prompt": "def add(a, b):\n", "max_tokens": 12, "temperature": 0, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as response:
            events = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert response.status_code == 200 and events[-1] == "data: [DONE]" and len(events) >= 3
        # concurrent requests all answered
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda i: httpx.post(url + "/v1/completions", json={
                "prompt": f"x{i} = ", "max_tokens": 8, "temperature": 0}, timeout=120), range(4)))
        assert [a.status_code for a in answers] == [200] * 4
        assert all(a.json()["usage"]["completion_tokens"] >= 1 for a in answers)
        # a client that leaves mid-stream: its engine request ends
        long = {"prompt": "def spin():\n", "max_tokens": 400, "temperature": 0, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=long, timeout=120) as response:
            next(response.iter_lines())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _metric(url, "codeserve_engine_unfinished_requests") != 0:
            time.sleep(0.2)
        assert _metric(url, "codeserve_engine_unfinished_requests") == 0  # nothing left running (a tiny model may
        # have finished the 400 tokens before the disconnect arrived: cancelled or done, never leaked)
        assert _metric(url, "codeserve_requests_in_flight") == 0
        after = httpx.post(url + "/v1/completions", json={"prompt": "y = ", "max_tokens": 4}, timeout=60)
        assert after.status_code == 200


def _lora_adapter(base: Path, out: Path) -> Path:
    """A rank-8 LoRA over the bundled model's q/v projections with random (not zero) B: it changes the output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    adapted = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                               init_lora_weights=False))
    adapted.save_pretrained(out)
    return out


def test_a_lora_adapter_is_served_as_its_own_model(tokenizer_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("peft", reason="peft (a test dependency) makes the adapter")
    adapter = _lora_adapter(tokenizer_dir, tmp_path / "team-style")
    env = isolated_env(tmp_path, CODESERVE_LORA_ADAPTERS=f"team-style={adapter}",
                       CODESERVE_MAX_CONCURRENT_SEQUENCES="2", CODESERVE_MAX_MODEL_LEN="1024")
    with serving(env, tmp_path) as url:
        cards = {c["id"]: c for c in httpx.get(url + "/v1/models").json()["data"]}
        assert cards["team-style"]["parent"] == "smollm2-135m-instruct"
        plan = httpx.get(url + "/v1/plan").json()
        assert plan["memory"]["per_gpu_bytes"]["lora"] > 0 and plan["engine"]["args"]["enable_lora"] is True

        def complete(model: str) -> str:
            body = {"model": model, "prompt": "def add(a, b):\n", "max_tokens": 16, "temperature": 0}
            response = httpx.post(url + "/v1/completions", json=body, timeout=120)
            assert response.status_code == 200 and response.json()["model"] == model
            return str(response.json()["choices"][0]["text"])

        base, adapted = complete("smollm2-135m-instruct"), complete("team-style")
        assert adapted != base and complete("team-style") == adapted  # the adapter's own, deterministic, output
        assert _metric(url, 'codeserve_generation_tokens_total{endpoint="completions",model="team-style"}') >= 1
