"""The same locust profile against vLLM's own OpenAI server and against codeserve, one after the other,
on the same model, engine arguments and machine; prints throughput and TTFT ratios (a benchmark: it
asserts nothing). vLLM's server has no `suffix`, so both get prefix-only completions plus chat.

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
from server.planning import make_plan  # noqa: E402
from server.prepare import resolve_model_dir  # noqa: E402
from server.settings import Settings  # noqa: E402


def vllm_command(args: dict, port: int, model_dir: str) -> list[str]:
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1", "--port",
               str(port), "--model", model_dir, "--served-model-name", args["served_model_name"][0],
               "--dtype", args["dtype"], "--max-model-len", str(args["max_model_len"]),
               "--max-num-seqs", str(args["max_num_seqs"]), "--max-num-batched-tokens",
               str(args["max_num_batched_tokens"])]
    if args.get("enforce_eager"):
        command.append("--enforce-eager")
    if args.get("enable_prefix_caching"):
        command.append("--enable-prefix-caching")
    return command


def run_load(name: str, url: str, out: Path, options: argparse.Namespace) -> dict:
    target = out / name
    subprocess.run([sys.executable, str(HERE / "run.py"), "--host", url, "--users", str(options.users),
                    "--spawn-rate", str(options.users), "--run-time", options.run_time, "--out", str(target), "--",
                    "--prefix-only", "--fail-error-rate", "1", *options.locust_args], cwd=ROOT, check=False)
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
    result = make_plan(settings)
    args = result.chosen.engine_args
    model_dir = resolve_model_dir(settings.cache_dir, result.chosen.model, settings.model)
    env = {**os.environ, **result.chosen.engine_env}
    summaries = {}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    summaries["vllm"] = serve("vllm", vllm_command(args, port, model_dir), env, "/health", options.out, options, url)
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
