"""What indexing costs: /v1/embeddings with batches of 64 code chunks of 256 tokens each (an IDE indexer's batch),
one batch at a time and CONCURRENCY batches at once.

Starts `codeserve serve` on the CPU with the embedding role on a tiny random-weight BERT (tests/tiny_models.py, built
with the bundled tokenizer: no download) unless --url points at a running server (the planner's choice on a GPU:
`CODESERVE_ROLE=embedding codeserve serve`), or --model names a local embedding model directory to serve instead.
Prints embeddings per second and the p50/p95 latency of a batch. A benchmark prints figures; it asserts nothing.
Usage (after scripts/setup.sh): .venv/bin/python loadtests/bench_embeddings.py [--batches 20] [--url URL] [--model DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from loadtests.run import start_server, stop_server

BATCH = 64
CHUNK_TOKENS = 256
CONCURRENCY = 4
LINES = ["def parse(self, text: str) -> list[Token]:", "    for index, char in enumerate(text):",
         "        if char in OPERATORS:", "            tokens.append(Token(kind=char, at=index))",
         "    return [t for t in tokens if t.kind != 'space']", "class Parser(BaseParser):",
         "    '''Reads the grammar once; parses many files.'''", "import os, sys, json"]


def chunks(count: int, tokenizer_dir: Path) -> list[list[int]]:
    """`count` distinct chunks of exactly CHUNK_TOKENS token ids of the served model's tokenizer (ids keep the length
    exact)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    out = []
    for n in range(count):
        text = "\n".join(f"{LINES[(n + i) % len(LINES)]}  # {n}-{i}" for i in range(200))
        out.append(tokenizer.encode(text)[:CHUNK_TOKENS])
    return out


def tiny_model() -> Path:
    from server.planner.catalog import load_catalog
    from server.prepare import prepare_bundled
    from server.settings import DEFAULT_CATALOG_PATH, Settings
    from tests.tiny_models import build_retrieval

    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    tokenizer = prepare_bundled(settings.cache_dir, load_catalog(DEFAULT_CATALOG_PATH).bundled())
    return build_retrieval("embedding", settings.cache_dir / "bench" / "tiny-embed", tokenizer)


def run(client: httpx.Client, batches: list[list[list[int]]], concurrency: int) -> tuple[float, list[float]]:
    def one(batch: list[list[int]]) -> float:
        start = time.perf_counter()
        response = client.post("/v1/embeddings", json={"input": batch, "encoding_format": "base64"})
        response.raise_for_status()
        assert len(response.json()["data"]) == len(batch)
        return time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(one, batches))
    return time.perf_counter() - start, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--url", help="a running server (its embedding role answers)")
    parser.add_argument("--model", type=Path, help="a local embedding model directory to serve (default: tiny BERT)")
    parser.add_argument("--tokenizer", type=Path, help="with --url: the served model's tokenizer directory")
    args = parser.parse_args()
    process = None
    url = args.url
    model = args.model or tiny_model()
    if url is None:  # loadtests/run.py's server start: a free port, /ready awaited, its log kept
        process, url = start_server(Path(tempfile.mkdtemp(prefix="bench-embeddings-")), {
            "CODESERVE_GPUS": "none", "CODESERVE_ROLE": "embedding", "CODESERVE_EMBEDDING_MODEL": str(model)})
    try:
        data = chunks(BATCH * args.batches, args.tokenizer or model)
        batches = [data[i * BATCH:(i + 1) * BATCH] for i in range(args.batches)]
        with httpx.Client(base_url=url, timeout=600) as client:
            served = client.get("/v1/models").json()["data"]
            print(f"server {url}: {', '.join(m['id'] for m in served)}; {args.batches} batches of {BATCH} chunks x "
                  f"{CHUNK_TOKENS} tokens")
            run(client, batches[:2], 1)  # warm
            for concurrency in (1, CONCURRENCY):
                wall, latencies = run(client, batches, concurrency)
                cuts = statistics.quantiles(latencies, n=20)
                print(f"concurrency {concurrency}: {BATCH * len(batches) / wall:7.1f} embeddings/s, batch latency "
                      f"p50 {statistics.median(latencies) * 1000:6.0f} ms, p95 {cuts[18] * 1000:6.0f} ms")
    finally:
        if process is not None:
            stop_server(process)


if __name__ == "__main__":
    main()
