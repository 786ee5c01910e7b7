"""What constrained decoding costs on the served model: the same chat requests with and without a JSON schema
(response_format) and with a forced tool call (named, and `required`), through /v1/chat/completions, streamed, one at a
time, alternating.

Starts `codeserve serve` on the CPU with the bundled model unless --url points at a running server. Prints, per
kind, the median time to first token, the median decode rate (tokens/s after the first) and the share of answers
that parse and validate against the schema. A benchmark prints figures; it asserts nothing.
Usage (after scripts/setup.sh): .venv/bin/python loadtests/bench_structured.py [--requests 20] [--url URL]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from jsonschema import Draft202012Validator

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "language", "lines"],
          "properties": {"name": {"type": "string", "maxLength": 32}, "language": {"type": "string", "maxLength": 16},
                         "lines": {"type": "integer", "minimum": 0, "maximum": 100000}}}
TOOL = {"type": "function", "function": {"name": "describe_file", "parameters": SCHEMA}}
ASK = [{"role": "user", "content": "Describe the file parser.py of this project as JSON: its name, language and "
                                   "number of lines."}]
KINDS: dict[str, dict[str, Any]] = {
    "plain": {},
    "json_schema": {"response_format": {"type": "json_schema", "json_schema": {"name": "file", "schema": SCHEMA}}},
    "named tool": {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "describe_file"}}},
    "required": {"tools": [TOOL], "tool_choice": "required", "parallel_tool_calls": False},
}


def one(client: httpx.Client, model: str, kind: str, seed: int, max_tokens: int) -> tuple[float, float, bool]:
    body = {"model": model, "messages": ASK, "max_tokens": max_tokens, "temperature": 0.7, "seed": seed,
            "stream": True, "stream_options": {"include_usage": True}, **KINDS[kind]}
    start, first, text, tokens = time.perf_counter(), None, "", 0
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            for choice in event["choices"]:
                delta = choice["delta"]
                piece = delta.get("content") or "".join(c["function"].get("arguments") or ""
                                                        for c in delta.get("tool_calls") or ())
                if piece and first is None:
                    first = time.perf_counter()
                text += piece
    end = time.perf_counter()
    first = first or end
    try:
        Draft202012Validator(SCHEMA).validate(json.loads(text))  # a tool call's text is its arguments
        valid = True
    except Exception:
        valid = False
    return (first - start) * 1000, (tokens - 1) / (end - first) if end > first and tokens > 1 else 0.0, valid


def serve(port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CODESERVE_GPUS": "none", "CODESERVE_PORT": str(port), "CODESERVE_HOST": "127.0.0.1"}
    log = Path(tempfile.mkdtemp()) / "serve.log"
    process = subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], env=env, stdout=log.open("wb"),
                               stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parent.parent)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the server exited:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(1)
    process.kill()
    sys.exit("the server was not ready in 15 minutes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50, help="seeded requests per kind")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--url", help="a running server (else one is started on the CPU)")
    parser.add_argument("--port", type=int, default=8131)
    args = parser.parse_args()
    process = None if args.url else serve(args.port)
    url = args.url or f"http://127.0.0.1:{args.port}"
    try:
        with httpx.Client(base_url=url, timeout=300) as client:
            model = client.get("/v1/models").json()["data"][0]["id"]
            for kind in KINDS:  # warm-up: the first request of a schema compiles its grammar
                one(client, model, kind, 0, 8)
            results: dict[str, list[tuple[float, float, bool]]] = {kind: [] for kind in KINDS}
            for seed in range(1, args.requests + 1):
                for kind in KINDS:
                    results[kind].append(one(client, model, kind, seed, args.max_tokens))
    finally:
        if process is not None:
            process.terminate()
            process.wait(60)
    print(f"{model} at {url}; {args.requests} streamed requests per kind, max_tokens {args.max_tokens}, alternating")
    print(f"{'kind':12s} {'TTFT p50 ms':>12s} {'decode tok/s p50':>17s} {'valid JSON':>11s}")
    for kind, rows in results.items():
        ttft, rate = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
        print(f"{kind:12s} {ttft:12.1f} {rate:17.1f} {sum(r[2] for r in rows) / len(rows):10.0%}")


if __name__ == "__main__":
    main()
