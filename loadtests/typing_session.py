"""A developer typing through a real source file, as an IDE's autocomplete sees it: each request's prefix
extends the last one by the characters typed since, the suffix stays put.

    .venv/bin/python loadtests/typing_session.py                # starts the built-in default server
    .venv/bin/python loadtests/typing_session.py --host http://box:8000 --json
    .venv/bin/python loadtests/typing_session.py -- CODESERVE_SPECULATIVE=off   # server settings to start with

Prints (or with --json, one JSON object): the cold TTFT (the session's first request), warm TTFT p50/p95
and their ratio to cold, the prefix-cache hit rate over the session (vLLM's counters), decode tokens/s for
one stream and for --streams at once, and speculative decoding's acceptance where the server runs it.
Each typing request reads up to its first token and then closes the connection, as an editor does when
the next keystroke arrives, so the requests never overlap and each TTFT is the server's alone.
"""

from __future__ import annotations

import concurrent.futures
import json
import random
import re
import statistics
import sys
import sysconfig
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from loadtests import report
from loadtests.run import bearer, script_parser, server_at
from loadtests.workload import CHARS_PER_TOKEN


@dataclass(frozen=True)
class Keystroke:
    prefix: str
    suffix: str


class TypingSession:
    """A cursor placed in a real file (the standard library's, seeded), with `prefix_tokens` of code before
    it and `suffix_lines` after; the developer then types the file's next `typed_chars` characters and the
    editor asks for a completion every `chars_per_request` characters."""

    def __init__(self, seed: int, prefix_tokens: int = 1500, suffix_lines: int = 40, typed_chars: int = 60,
                 chars_per_request: int = 2) -> None:
        rng = random.Random(seed)
        root = Path(sysconfig.get_paths()["stdlib"])
        files = sorted(p for p in root.glob("*.py") if p.stat().st_size > 30_000)
        prefix_chars = prefix_tokens * CHARS_PER_TOKEN
        while True:
            self.path = rng.choice(files)
            text = self.path.read_text(encoding="utf-8", errors="replace")
            # The cursor starts a non-blank, indented line (inside a function, where completions happen).
            starts = [m.start(1) for m in re.finditer(r"\n( +)\S", text) if prefix_chars < m.start() < len(text) // 2]
            if starts:
                break
        cursor = rng.choice(starts)
        typed_end = text.find("\n", cursor)
        typed_end = min(typed_end if typed_end > 0 else len(text), cursor + typed_chars)
        self.base_prefix = text[cursor - prefix_chars:cursor]
        self.typed = text[cursor:typed_end]
        after = text[typed_end:].split("\n")
        self.suffix = "\n".join(after[:suffix_lines + 1])
        self.chars_per_request = chars_per_request

    def keystrokes(self) -> Iterator[Keystroke]:
        """The request after each `chars_per_request` characters typed (the first one before any)."""
        for end in range(0, len(self.typed) + 1, self.chars_per_request):
            yield Keystroke(self.base_prefix + self.typed[:end], self.suffix)


@dataclass
class StreamTimes:
    ttft_ms: float | None
    tokens: int
    decode_s: float  # from the first token to the last


def completion_stream(host: str, body: dict[str, object], headers: dict[str, str], first_only: bool,
                      timeout_s: float = 300) -> StreamTimes:
    """POST a streamed /v1/completions; times its first non-empty text (and reads on unless first_only)."""
    start = time.perf_counter()
    first = last = None
    tokens = 0
    with requests.post(host + "/v1/completions", json={**body, "stream": True,
                                                        "stream_options": {"include_usage": True}},
                       headers=headers, stream=True, timeout=timeout_s) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(f"the stream failed: {event['error']}")
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            if any(choice.get("text") for choice in event.get("choices", [])):
                last = time.perf_counter()
                if first is None:
                    first = last
                    if first_only:
                        break  # closing the connection cancels the rest, as an editor does
    ttft = None if first is None else (first - start) * 1000
    return StreamTimes(ttft, tokens, 0.0 if first is None or last is None else last - first)


def counters(host: str, headers: dict[str, str]) -> dict[str, float]:
    """vLLM's prefix-cache and speculative-decoding counters (the load report's reading of /metrics), 0 when
    absent: a server without speculation exports no spec_decode series."""
    return defaultdict(float, report.server_metrics(host, headers))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(host: str, headers: dict[str, str], session: TypingSession, streams: int,
            decode_tokens: int) -> dict[str, object]:
    base = {"temperature": 0, "max_tokens": 16, "user": "typing-session"}
    before = counters(host, headers)
    ttfts: list[float] = []
    for keystroke in session.keystrokes():
        times = completion_stream(host, {**base, "prompt": keystroke.prefix, "suffix": keystroke.suffix},
                                  headers, first_only=True)
        if times.ttft_ms is not None:
            ttfts.append(times.ttft_ms)
    typed = counters(host, headers)
    # Decode: the session's last prompt, as a plain continuation, long enough to reach a steady rate.
    last = session.base_prefix + session.typed
    decode_body = {"prompt": last, "temperature": 0, "max_tokens": decode_tokens}
    single = completion_stream(host, decode_body, headers, first_only=False)
    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        started = time.perf_counter()
        parallel = list(pool.map(lambda i: completion_stream(
            host, {**decode_body, "prompt": last[i * 7:]}, headers, first_only=False), range(streams)))
        parallel_s = time.perf_counter() - started
    after = counters(host, headers)
    queries = typed["vllm:prefix_cache_queries_total"] - before["vllm:prefix_cache_queries_total"]
    hits = typed["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"]
    draft, accepted = (after[name] - before[name] for name in ("vllm:spec_decode_num_draft_tokens_total",
                                                               "vllm:spec_decode_num_accepted_tokens_total"))
    cold, warm = ttfts[0], ttfts[1:]
    return {
        "file": session.path.name, "requests": len(ttfts), "typed_chars": len(session.typed),
        "cold_ttft_ms": round(cold), "warm_ttft_p50_ms": round(statistics.median(warm)),
        "warm_ttft_p95_ms": round(percentile(warm, 0.95)),
        "warm_over_cold": round(statistics.median(warm) / cold, 3),
        "prefix_cache_hit_rate": round(hits / queries, 3) if queries else None,
        "prompt_tokens_from_cache": int(hits), "prompt_tokens": int(queries),
        "decode_tokens_per_s_1_stream": round(single.tokens / single.decode_s, 1) if single.decode_s else None,
        f"decode_tokens_per_s_{streams}_streams": round(sum(t.tokens for t in parallel) / parallel_s, 1),
        "spec_draft_tokens": int(draft), "spec_accepted_tokens": int(accepted),
        "spec_acceptance_rate": round(accepted / draft, 3) if draft else None,
    }


def main() -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--streams", type=int, default=8, help="concurrent streams for the parallel decode rate")
    parser.add_argument("--decode-tokens", type=int, default=128)
    args = parser.parse_args()
    headers = bearer(args.api_key)
    session = TypingSession(args.seed)
    with server_at(args.host, args.server_env, "typing-session") as host:
        figures = measure(host, headers, session, args.streams, args.decode_tokens)
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:32} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
