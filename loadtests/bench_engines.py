"""The second engine (Transformers' generate(), dynamic batching) next to vLLM on the same tiny Llama.

Builds a tiny random-weight Llama (tests/tiny_models.py, the bundled tokenizer), starts each engine adapter in
this process on the CPU, and runs 1 and 8 concurrent greedy streams of --max-tokens tokens, --rounds times.
Prints the aggregate generated tokens/s per engine and concurrency (median of the rounds) and the TTFT p50, then
the TTFT of a late request: one that arrives while a 400-token stream runs (median of the rounds). A benchmark
prints figures; it asserts nothing.
Usage (after scripts/setup.sh): .venv/bin/python loadtests/bench_engines.py [--rounds 3] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.engine.base import SamplingSettings
from server.planner.catalog import load_catalog
from server.planner.hardware import cpu_info
from server.planner.launch import Launch
from server.prepare import prepare_bundled
from server.settings import DEFAULT_CATALOG_PATH, Settings
from tests.tiny_models import build

PROMPTS = ["def quicksort(items):\n", "class LRUCache:\n", "import json\n\ndef load(path):\n", "def is_prime(n):\n",
           "async def fetch(urls):\n", "def parse(line):\n", "def search(items, target):\n", "x = {"]


def launch(model: Path, engine: str) -> Launch:
    cores = tuple(range(cpu_info().cores))
    return Launch(model=str(model), served_name="tiny-llama", device="cpu", dtype="float32", online_quantization=None,
                  tensor_parallel_size=1, pipeline_parallel_size=1, max_model_len=512, max_num_seqs=8,
                  max_num_batched_tokens=4096, prefix_caching=False, kv_block_tokens=32 if engine == "vllm" else None,
                  kv_cache_dtype="auto", gpu_memory_fraction=None, kv_cache_bytes=256 * 1024**2, eager=True,
                  trust_remote_code=False, cpu_cores=cores, engine=engine)  # type: ignore[arg-type]


async def stream(engine: Any, prompt: str, max_tokens: int, rid: str) -> tuple[int, float]:
    started, first, tokens = time.perf_counter(), 0.0, 0
    sampling = SamplingSettings(max_tokens=max_tokens, temperature=0)
    async for delta in engine.generate(engine.tokenize(prompt), sampling, rid):
        if delta.token_count and not first:
            first = time.perf_counter() - started
        tokens += delta.token_count
    return tokens, first


async def measure(engine: Any, streams: int, max_tokens: int, rounds: int) -> tuple[float, float]:
    rates, ttfts = [], []
    await stream(engine, "def warm():\n", 4, "warm")
    for r in range(rounds):
        started = time.perf_counter()
        results = await asyncio.gather(*[stream(engine, PROMPTS[i % len(PROMPTS)], max_tokens, f"r{r}-{i}")
                                         for i in range(streams)])
        wall = time.perf_counter() - started
        rates.append(sum(tokens for tokens, _ in results) / wall)
        ttfts += [ttft for _, ttft in results]
    return statistics.median(rates), statistics.median(ttfts) * 1000


async def late_arrival(engine: Any, rounds: int, long_tokens: int = 400) -> float:
    """TTFT (ms) of a short request sent once a long stream has produced 8 tokens: what a second developer's
    keystroke waits for while someone else's long completion runs."""
    waits = []
    for r in range(rounds):
        produced = 0

        async def long_stream(rid: str) -> None:
            nonlocal produced
            sampling = SamplingSettings(max_tokens=long_tokens, temperature=0)
            async for delta in engine.generate(engine.tokenize("def long():\n"), sampling, rid):
                produced += delta.token_count

        runner = asyncio.create_task(long_stream(f"long{r}"))
        while produced < 8:
            await asyncio.sleep(0.001)
        waits.append((await stream(engine, "x = 1\n", 16, f"late{r}"))[1])
        await runner
    return statistics.median(waits) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    tokenizer = prepare_bundled(Settings(_env_file=None).cache_dir,  # type: ignore[call-arg]
                                load_catalog(DEFAULT_CATALOG_PATH).bundled())
    with tempfile.TemporaryDirectory() as tmp:
        model = build("llama", Path(tmp) / "tiny-llama", tokenizer)  # 512 positions: room for the 400-token stream
        print(f"tiny Llama ({model}), {cpu_info().cores} CPU cores, float32, greedy, {args.max_tokens} tokens per "
              f"stream, median of {args.rounds} rounds")
        print(f"{'engine':14s} {'streams':>7s} {'tokens/s':>9s} {'TTFT p50':>9s}")
        for name in ("transformers", "vllm"):
            asyncio.run(bench(name, model, args.max_tokens, args.rounds))


async def bench(name: str, model: Path, max_tokens: int, rounds: int) -> None:
    """One engine, started and measured on one event loop (vLLM's client lives on the loop that first uses it)."""
    if name == "vllm":
        from server.engine.vllm import VllmEngine as adapter
    else:
        from server.engine.hf import TransformersEngine as adapter  # type: ignore[assignment]
    engine = await asyncio.to_thread(adapter.start, launch(model, name))
    try:
        for streams in (1, 8):
            rate, ttft = await measure(engine, streams, max_tokens, rounds)
            print(f"{name:14s} {streams:7d} {rate:9.1f} {ttft:7.0f} ms", flush=True)
        print(f"{name:14s} late request (during a 400-token stream): TTFT {await late_arrival(engine, rounds):.0f} ms",
              flush=True)
    finally:
        await engine.shutdown()


if __name__ == "__main__":
    main()
