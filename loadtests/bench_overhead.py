"""What codeserve's HTTP + SSE layer costs over calling the engine adapter directly.

One process, one engine (the plan for this machine; the bundled model without a GPU), one event loop:
the same streaming requests go (a) straight to `Engine.generate` and (b) through `POST /v1/completions`
with `stream: true` on a real socket, in alternating rounds. Prints aggregate throughput for both, their
ratio, and the time to first token each path adds (p50 / p95). A benchmark prints figures; it asserts
nothing. Usage: .venv/bin/python loadtests/bench_overhead.py [--rounds 3] [--concurrency 8] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.api.app import build_app
from server.engine.base import Engine, SamplingSettings
from server.generation.core import GenerationCore, ServedModel
from server.planning import detect_and_plan
from server.serve import make_runtime, start_engine
from server.settings import Settings

PROMPTS = [
    "def quicksort(items):\n",
    "class LRUCache:\n    def __init__(self, capacity):\n",
    "import json\n\ndef load_config(path):\n",
    "def is_prime(n):\n",
    "async def fetch_all(urls):\n",
    "def parse_csv_line(line):\n",
    "def binary_search(items, target):\n",
    "def merge_sorted(a, b):\n",
]


@dataclass
class Sample:
    ttft_s: float
    tokens: int


@dataclass
class Round:
    samples: list[Sample]
    wall_s: float

    @property
    def tokens_per_s(self) -> float:
        return sum(s.tokens for s in self.samples) / self.wall_s


async def direct(engine: Engine, prompt: str, max_tokens: int, rid: str) -> Sample:
    start = time.perf_counter()
    first = None
    tokens = 0
    sampling = SamplingSettings(max_tokens=max_tokens, temperature=0)
    async for delta in engine.generate(engine.tokenize(prompt), sampling, rid):
        if first is None and delta.token_count:
            first = time.perf_counter() - start
        tokens += delta.token_count
    return Sample(first or 0.0, tokens)


async def over_http(client: httpx.AsyncClient, prompt: str, max_tokens: int) -> Sample:
    start = time.perf_counter()
    first = None
    tokens = 0
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    async with client.stream("POST", "/v1/completions", json=body) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            elif first is None and event["choices"] and event["choices"][0]["text"]:
                first = time.perf_counter() - start
    return Sample(first or 0.0, tokens)


async def run_round(make, concurrency: int) -> Round:
    start = time.perf_counter()
    samples = await asyncio.gather(*[make(i) for i in range(concurrency)])
    return Round(list(samples), time.perf_counter() - start)


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


async def main(args: argparse.Namespace) -> None:
    settings = Settings()
    engine, started = await asyncio.to_thread(start_engine, detect_and_plan(settings).served[0].plan, settings)
    option = started.chosen
    settings = settings.model_copy(update={"max_concurrent_requests": 256})
    runtime = make_runtime(settings, None)
    runtime.core = GenerationCore(engine, ServedModel(option.model.id, option.model, engine.max_model_len))
    runtime.status = "ready"
    app = build_app(runtime, settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    rounds: dict[str, list[Round]] = {"direct": [], "http": []}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{args.port}", timeout=600) as client:
        await run_round(lambda i: direct(engine, PROMPTS[i % len(PROMPTS)], 8, f"warm-{i}"), args.concurrency)
        for r in range(args.rounds):
            rounds["direct"].append(await run_round(
                lambda i, r=r: direct(engine, PROMPTS[i % len(PROMPTS)], args.max_tokens, f"d{r}-{i}"),
                args.concurrency))
            rounds["http"].append(await run_round(
                lambda i: over_http(client, PROMPTS[i % len(PROMPTS)], args.max_tokens), args.concurrency))
        # Time to first token alone, one request at a time, alternating the paths: at concurrency 8 it
        # is dominated by queueing inside the engine, which would drown a millisecond-scale overhead.
        single: dict[str, list[float]] = {"direct": [], "http": []}
        for i in range(args.ttft_requests):
            prompt = PROMPTS[i % len(PROMPTS)]
            single["direct"].append((await direct(engine, prompt, 2, f"t{i}")).ttft_s * 1000)
            single["http"].append((await over_http(client, prompt, 2)).ttft_s * 1000)
    server.should_exit = True
    await serving
    await engine.shutdown()
    report(rounds, option.model.id, args)
    added = [h - d for d, h in zip(single["direct"], single["http"], strict=True)]
    print(f"single-stream TTFT over {args.ttft_requests} alternating requests: direct p50 "
          f"{pct(single['direct'], 50):.1f} ms, http p50 {pct(single['http'], 50):.1f} ms; added p50 "
          f"{pct(added, 50):+.2f} ms, p95 {pct(added, 95):+.2f} ms")


def report(rounds: dict[str, list[Round]], model: str, args: argparse.Namespace) -> None:
    print(f"model {model}; {args.rounds} rounds x {args.concurrency} concurrent streams x {args.max_tokens} tokens")
    summary = {}
    for path, rs in rounds.items():
        ttfts = [s.ttft_s * 1000 for r in rs for s in r.samples]
        tokens = sum(s.tokens for r in rs for s in r.samples)
        wall = sum(r.wall_s for r in rs)
        summary[path] = (tokens / wall, pct(ttfts, 50), pct(ttfts, 95))
        print(f"{path:7s} {tokens / wall:8.1f} tok/s   "
              f"TTFT p50 {pct(ttfts, 50):8.1f} ms   p95 {pct(ttfts, 95):8.1f} ms")
    ratio = summary["http"][0] / summary["direct"][0]
    print(f"throughput ratio http/direct: {ratio:.3f}   "
          f"added TTFT p50 {summary['http'][1] - summary['direct'][1]:+.1f} ms   "
          f"p95 {summary['http'][2] - summary['direct'][2]:+.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--ttft-requests", type=int, default=40)
    asyncio.run(main(parser.parse_args()))
