"""One command for a headless load test: against --host, or against the built-in default it starts.

    .venv/bin/python loadtests/run.py                          # starts `codeserve serve`, 60 s, 8 users
    .venv/bin/python loadtests/run.py --host http://gpu-box:8000 --users 64 --run-time 10m
    .venv/bin/python loadtests/run.py -- --cancel-share 0.5 --fail-p95-ttft-ms 800   # locust options

Writes locust's CSV (locust_stats.csv, ...) and HTML report plus summary.json / summary.md / latency.png
into --out, prints the summary, and exits non-zero when locust or a threshold fails.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
READY_TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes], path: str, log: Path) -> None:
    """Until GET url+path answers 200; SystemExit if the server exits or takes too long."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited during start; see {log}")
        try:
            if requests.get(url + path, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise SystemExit(f"the server was not ready after {READY_TIMEOUT_S} s; see {log}")


def start_server(out: Path, settings: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """`codeserve serve` on a free port with `settings` (CODESERVE_* variables) over the environment."""
    port = free_port()
    env = {**os.environ, **(settings or {}), "CODESERVE_HOST": "127.0.0.1", "CODESERVE_PORT": str(port)}
    log = out / "server.log"
    process = subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], cwd=ROOT, env=env,
                               stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    host = f"http://127.0.0.1:{port}"
    try:
        wait_ready(host, process, "/ready", log)
    except SystemExit:
        process.kill()
        raise
    return process, host


def stop_server(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=120)


def script_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every measuring script shares: a server to measure (or the default, started with the
    settings after --), its API key, and JSON output."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", help="server to measure; omitted: start the built-in default")
    parser.add_argument("--api-key", default=os.environ.get("LOADTEST_API_KEY", ""))
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("server_env", nargs="*", help="NAME=VALUE settings for the started server, after --")
    return parser


def bearer(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


@contextlib.contextmanager
def server_at(host: str | None, server_env: list[str], name: str) -> Iterator[str]:
    """`host`, or the built-in default server started with `server_env` (NAME=VALUE items) for the block."""
    if host is not None:
        yield host
        return
    out = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    server, started = start_server(out, dict(item.split("=", 1) for item in server_env))
    print(f"server log: {out / 'server.log'}", file=sys.stderr)
    try:
        yield started
    finally:
        stop_server(server)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", help="server to test; omitted: start the built-in default")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--spawn-rate", type=float, default=4)
    parser.add_argument("--run-time", default="60s")
    parser.add_argument("--out", type=Path, default=HERE / "out")
    parser.add_argument("locust_args", nargs="*", help="extra locust options, after --")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    server = None
    host = args.host
    if host is None:
        server, host = start_server(args.out)
    try:
        command = [sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless",
                   "--host", host, "--users", str(args.users), "--spawn-rate", str(args.spawn_rate),
                   "--run-time", args.run_time, "--csv", str(args.out / "locust"),
                   "--html", str(args.out / "report.html"), "--summary-dir", str(args.out),
                   "--only-summary", *args.locust_args]
        return subprocess.run(command, cwd=ROOT).returncode
    finally:
        if server is not None:
            stop_server(server)


if __name__ == "__main__":
    sys.exit(main())
