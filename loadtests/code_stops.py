"""What code-aware stops save on the load test's completion workload (prints figures).

Replays the locust profile's fill-in-the-middle requests (same holes cut from real code, same max_tokens
range and stop string; greedy here, so the two runs are comparable) against /v1/completions twice: with
code-aware stops off (OpenAI's behaviour) and on (`code_stops: true`, what /infill and the Copilot route do
by default). Reports the completion tokens generated, the time, and which rule ended the completions.

    .venv/bin/python loadtests/code_stops.py                   # starts the built-in default server
    .venv/bin/python loadtests/code_stops.py --host http://box:8000 --requests 100 --json
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from loadtests.run import bearer, script_parser, server_at
from loadtests.workload import COMPLETION_MAX_TOKENS, COMPLETION_STOP, SourceFiles, pick

ACTIONS = ("line", "indent", "bracket", "suffix", "repeat", "marker", "lead", "fence")


def cleanups(host: str, headers: dict[str, str]) -> dict[str, float]:
    """codeserve_infill_cleanups_total on /v1/completions, by rule."""
    text = requests.get(f"{host}/metrics", headers=headers, timeout=10).text
    counts = dict.fromkeys(ACTIONS, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "codeserve_infill_cleanups_total" and sample.labels.get("endpoint") == "completions":
                action = sample.labels["action"]  # summed over the models served
                counts[action] = counts.get(action, 0.0) + sample.value
    return counts


def run(host: str, headers: dict[str, str], bodies: list[dict[str, Any]], code_stops: bool) -> dict[str, Any]:
    before = cleanups(host, headers)
    tokens, started = 0, time.perf_counter()
    for body in bodies:
        response = requests.post(f"{host}/v1/completions", json={**body, "code_stops": code_stops},
                                 headers=headers, timeout=600)
        response.raise_for_status()
        tokens += response.json()["usage"]["completion_tokens"]
    seconds = time.perf_counter() - started
    after = cleanups(host, headers)
    return {"completion_tokens": tokens, "seconds": round(seconds, 1),
            "ended_by": {a: int(after[a] - before[a]) for a in ACTIONS if after[a] > before[a]}}


def workload(requests_count: int, seed: int) -> list[dict[str, Any]]:
    sources, rng = SourceFiles(seed), random.Random(seed)
    bodies = []
    for _ in range(requests_count):
        prefix, suffix = sources.cut(1500, 500)
        bodies.append({"prompt": prefix, "suffix": suffix, "max_tokens": pick(rng, COMPLETION_MAX_TOKENS),
                       "temperature": 0, "stop": COMPLETION_STOP})
    return bodies


def main() -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1234, help="the locust profile's default seed")
    args = parser.parse_args()
    headers = bearer(args.api_key)
    bodies = workload(args.requests, args.seed)
    with server_at(args.host, args.server_env, "code-stops") as host:
        off = run(host, headers, bodies, code_stops=False)
        on = run(host, headers, bodies, code_stops=True)
    saved = off["completion_tokens"] - on["completion_tokens"]
    figures = {"requests": len(bodies), "off": off, "on": on, "tokens_saved": saved,
               "tokens_saved_share": round(saved / off["completion_tokens"], 3) if off["completion_tokens"] else None,
               "time_saved_share": round(1 - on["seconds"] / off["seconds"], 3) if off["seconds"] else None}
    print(json.dumps(figures) if args.json else json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
