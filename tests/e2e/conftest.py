"""What every end-to-end server runs with: the bundled model alone, on the CPU plan, whatever the machine."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from server.planner.catalog import load_catalog
from server.prepare import local_dir, prepare_bundled
from server.settings import DEFAULT_CATALOG_PATH, Settings


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
    return {**os.environ, "CODESERVE_CACHE_DIR": str(cache), "CODESERVE_GPUS": "none", "CODESERVE_EAGER": "true",
            **extra}


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
