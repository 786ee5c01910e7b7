"""Locust profile of real IDE traffic against an OpenAI-compatible code server.

Users:
- IdeCompletionUser: fill-in-the-middle completions cut from real source files (the Python standard
  library on this machine): prefix up to ~1.5k tokens, suffix up to ~0.5k, max_tokens 16-128, streamed,
  short think time; a share of requests (default 30%) is cancelled mid-stream by closing the connection,
  as an IDE does when the user keeps typing.
- ChatUser: code questions through /v1/chat/completions, streamed, longer answers.
- TypingUser (--typing-weight, default 1): a developer typing through a real file (TypingSession in
  typing_session.py): a completion every 2 typed characters at ~8 characters/s in bursts of a word or two,
  each read until the next keystroke and then closed (the editor drops the stale one; the same `user`
  throughout, so the server supersedes any it has not yet seen closed), the last of a burst read to the end
  while the developer pauses. Its entries are named "typing", apart from the random-file completions; the
  summary adds the server's prefix-cache hit rate and speculative acceptance over the run.

Besides locust's request stats, each stream reports custom entries: "TTFT" (time to first token, ms),
"ITL" (mean inter-token latency, ms) and "tokens/s" (the stream's decode rate, in the response-time
column). At the end it writes summary.json / summary.md / latency.png into --summary-dir, checks the
server's /metrics (in-flight back at 0, the cancelled counter matching the cancellations sent) and sets
a non-zero exit code when a threshold fails.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import gevent
from gevent import GreenletExit
from locust import HttpUser, between, constant, events, task
from locust.env import Environment

try:  # run as `locust -f loadtests/locustfile.py` (no package) or imported by tests
    from loadtests import report
    from loadtests.typing_session import TypingSession
    from loadtests.workload import COMPLETION_MAX_TOKENS, COMPLETION_STOP, SourceFiles, pick
except ImportError:  # pragma: no cover - locust puts loadtests/ itself on sys.path
    import report  # type: ignore[no-redef]
    from typing_session import TypingSession  # type: ignore[no-redef]
    from workload import COMPLETION_MAX_TOKENS, COMPLETION_STOP, SourceFiles, pick  # type: ignore[no-redef]
QUESTIONS = [
    "Explain what this function does and suggest a clearer name:\n\n{code}",
    "Find a bug in this code and show the fix:\n\n{code}",
    "Write unit tests with pytest for this code:\n\n{code}",
    "Rewrite this code to be more idiomatic Python:\n\n{code}",
]


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--api-key", default="", env_var="LOADTEST_API_KEY", help="Bearer key for the server")
    parser.add_argument("--model", default="", env_var="LOADTEST_MODEL", help="model name (default: the served one)")
    parser.add_argument("--cancel-share", type=float, default=0.3, env_var="LOADTEST_CANCEL_SHARE",
                        help="share of completion streams the client abandons mid-stream")
    parser.add_argument("--chat-weight", type=int, default=1, env_var="LOADTEST_CHAT_WEIGHT",
                        help="chat users per --completion-weight completion users")
    parser.add_argument("--completion-weight", type=int, default=4, env_var="LOADTEST_COMPLETION_WEIGHT")
    parser.add_argument("--typing-weight", type=int, default=1, env_var="LOADTEST_TYPING_WEIGHT",
                        help="typing-session users (see TypingUser)")
    parser.add_argument("--prefix-only", action="store_true", env_var="LOADTEST_PREFIX_ONLY",
                        help="send no suffix (for servers without FIM support, e.g. vLLM's own)")
    parser.add_argument("--max-prefix-tokens", type=int, default=1500, env_var="LOADTEST_MAX_PREFIX_TOKENS")
    parser.add_argument("--max-suffix-tokens", type=int, default=500, env_var="LOADTEST_MAX_SUFFIX_TOKENS")
    parser.add_argument("--completion-max-tokens", default="16-128", env_var="LOADTEST_COMPLETION_MAX_TOKENS",
                        help="range of max_tokens for completions")
    parser.add_argument("--chat-max-tokens", default="128-384", env_var="LOADTEST_CHAT_MAX_TOKENS",
                        help="range of max_tokens for chat answers")
    parser.add_argument("--seed", type=int, default=1234, env_var="LOADTEST_SEED")
    parser.add_argument("--summary-dir", default="loadtests/out", env_var="LOADTEST_SUMMARY_DIR")
    parser.add_argument("--fail-p95-ttft-ms", type=float, default=0, env_var="LOADTEST_FAIL_P95_TTFT_MS",
                        help="fail when p95 time to first token exceeds this (0 = no limit)")
    parser.add_argument("--fail-error-rate", type=float, default=0.01, env_var="LOADTEST_FAIL_ERROR_RATE")
    parser.add_argument("--no-server-metrics", action="store_true", env_var="LOADTEST_NO_SERVER_METRICS",
                        help="the server is not codeserve (e.g. vLLM's own): skip the leak and cancellation checks")


SOURCES: SourceFiles | None = None
RESULTS = report.Results()


def _sources(env: Environment) -> SourceFiles:
    global SOURCES
    if SOURCES is None:
        SOURCES = SourceFiles(env.parsed_options.seed if env.parsed_options else 1234)
    return SOURCES


class _StreamingUser(HttpUser):
    abstract = True

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.headers = {"Authorization": f"Bearer {options.api_key}"} if options and options.api_key else {}
        self.model = options.model if options else ""
        self.random = random.Random((options.seed if options else 0) + id(self))

    def _fire(self, name: str, value: float) -> None:
        self.environment.events.request.fire(request_type="METRIC", name=name, response_time=value,
                                             response_length=0, exception=None, context={})

    def stream(self, path: str, body: dict[str, Any], name: str, cancel_after: int | None,
               cancel_at: float | None = None) -> None:
        if self.model:
            body["model"] = self.model
        start = time.perf_counter()
        stamps: list[float] = []
        try:
            cancelled = self._read(path, body, name, cancel_after, stamps, cancel_at)
        except GreenletExit:  # the test is stopping mid-stream: that closes the connection too
            self._record(name, start, stamps, cancelled=True)
            raise
        if cancelled is not None:
            self._record(name, start, stamps, cancelled)

    def _read(self, path: str, body: dict[str, Any], name: str, cancel_after: int | None,
              stamps: list[float], cancel_at: float | None = None) -> bool | None:
        """Stream one response; True if we walked away (after `cancel_after` tokens, or at the perf_counter
        time `cancel_at`), False if it finished, None on error."""
        with self.client.post(path, json=body, headers=self.headers, stream=True, name=name,
                              catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                RESULTS.add_error(name, response.status_code)
                return None
            if cancel_at is None:
                cancelled = self._events(response, name, cancel_after, stamps)
            else:
                try:
                    with gevent.Timeout(max(0.0, cancel_at - time.perf_counter()), _Deadline):
                        cancelled = self._events(response, name, cancel_after, stamps)
                except _Deadline:  # the next keystroke: drop this completion
                    cancelled = True
                    response.raw.close() if response.raw is not None else None
            if cancelled is not None:
                response.success()
        return cancelled

    def _events(self, response: Any, name: str, cancel_after: int | None, stamps: list[float]) -> bool | None:
        """Read the events; True if we walked away after `cancel_after` tokens, False at the end, None on error."""
        # chunk_size=None: hand over each event as it arrives (a fixed size would wait for more bytes)
        for line in response.iter_lines(chunk_size=None, decode_unicode=True):
            if not line or not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                response.failure(event["error"].get("message", "error event"))
                RESULTS.add_error(name, 500)
                return None
            if _has_text(event):
                stamps.append(time.perf_counter())
            if _finished(event):
                cancel_after = None  # the server is done: closing now would cancel nothing
            if cancel_after is not None and len(stamps) >= cancel_after:
                response.raw.close() if response.raw is not None else None  # walk away mid-stream
                return True
        return False

    def _record(self, name: str, start: float, stamps: list[float], cancelled: bool) -> None:
        end = time.perf_counter()
        ttft_ms = (stamps[0] - start) * 1000 if stamps else None
        itl_ms = (stamps[-1] - stamps[0]) * 1000 / (len(stamps) - 1) if len(stamps) > 1 else None
        rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else None
        if ttft_ms is not None:
            self._fire(f"TTFT {name}", ttft_ms)
        if itl_ms is not None:
            self._fire(f"ITL {name}", itl_ms)
        if rate is not None:
            self._fire(f"tokens/s {name}", rate)
        RESULTS.add(report.Sample(time.time(), name, ttft_ms, itl_ms, (end - start) * 1000, len(stamps), cancelled))


def _pick(rng: random.Random, options: Any, name: str) -> int:
    """A value from a "low-high" range option."""
    default = {"completion_max_tokens": COMPLETION_MAX_TOKENS, "chat_max_tokens": "128-384"}[name]
    return pick(rng, str(getattr(options, name, default) if options else default))


def _finished(event: dict[str, Any]) -> bool:
    return any(choice.get("finish_reason") for choice in event.get("choices", []))


def _has_text(event: dict[str, Any]) -> bool:
    return any(choice.get("text") or (choice.get("delta") or {}).get("content") for choice in event.get("choices", []))


class IdeCompletionUser(_StreamingUser):
    wait_time = between(0.2, 1.5)  # keystroke pauses

    @task
    def complete(self) -> None:
        options = self.environment.parsed_options
        prefix, suffix = _sources(self.environment).cut(options.max_prefix_tokens if options else 1500,
                                                         options.max_suffix_tokens if options else 500)
        body: dict[str, Any] = {"prompt": prefix, "max_tokens": _pick(self.random, options, "completion_max_tokens"),
                                "temperature": 0.2,
                                "stream": True, "stop": COMPLETION_STOP}
        if suffix and not (options and options.prefix_only):
            body["suffix"] = suffix
        share = options.cancel_share if options else 0.3
        cancel_after = self.random.randint(1, 8) if self.random.random() < share else None
        self.stream("/v1/completions", body, "completions", cancel_after)


class _Deadline(Exception):
    """The next keystroke is due (raised by gevent.Timeout inside a typing user's read)."""


class TypingUser(_StreamingUser):
    wait_time = constant(0)  # the session paces itself
    chars_per_s = 8.0  # ~100 words per minute

    @task
    def type_through_a_file(self) -> None:
        options = self.environment.parsed_options
        prefix_tokens = options.max_prefix_tokens if options else 1500
        suffix_lines = max(1, (options.max_suffix_tokens if options else 500) // 12)  # ~12 tokens per line
        session = TypingSession(self.random.randrange(1 << 30), prefix_tokens, suffix_lines, typed_chars=48)
        user = f"typist-{id(self)}"
        burst_end = 0
        keystrokes = list(session.keystrokes())
        for i, keystroke in enumerate(keystrokes):
            body: dict[str, Any] = {"prompt": keystroke.prefix, "max_tokens": 32, "temperature": 0,
                                    "stream": True, "user": user, "stop": ["\n\n"]}
            if not (options and options.prefix_only):
                body["suffix"] = keystroke.suffix
            if i >= burst_end:  # a pause after a word or two: this completion is read to its end
                burst_end = i + self.random.randint(2, 6)
                self.stream("/v1/completions", body, "typing", None)
                gevent.sleep(self.random.uniform(1.0, 3.0))
                continue
            due = time.perf_counter() + session.chars_per_request / self.chars_per_s
            self.stream("/v1/completions", body, "typing", None, cancel_at=due)
            gevent.sleep(max(0.0, due - time.perf_counter()))


class ChatUser(_StreamingUser):
    wait_time = between(2, 6)  # reading the previous answer

    @task
    def ask(self) -> None:
        code, _ = _sources(self.environment).cut(300, 0)
        question = self.random.choice(QUESTIONS).format(code=code)
        body = {"messages": [{"role": "user", "content": question}],
                "max_tokens": _pick(self.random, self.environment.parsed_options, "chat_max_tokens"),
                "temperature": 0.7, "stream": True}
        self.stream("/v1/chat/completions", body, "chat", None)


@events.init.add_listener
def _weights(environment: Environment, **_: Any) -> None:
    """The traffic mix from --completion-weight / --chat-weight (0 leaves that user out)."""
    options = environment.parsed_options
    if options is None:
        return
    IdeCompletionUser.weight, ChatUser.weight = options.completion_weight, options.chat_weight
    TypingUser.weight = options.typing_weight
    environment.user_classes = [c for c in environment.user_classes if c.weight > 0]


@events.test_start.add_listener
def _start(environment: Environment, **_: Any) -> None:
    RESULTS.reset()
    RESULTS.server_before = report.server_metrics(environment.host or "", _headers(environment))


@events.quitting.add_listener
def _finish(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    time.sleep(1.0)  # let the server notice the last disconnects
    RESULTS.server_after = report.server_metrics(environment.host or "", _headers(environment))
    summary = RESULTS.summary()
    failures = report.check(summary, RESULTS, options.fail_p95_ttft_ms if options else 0,
                            options.fail_error_rate if options else 0.01,
                            require_server_metrics=not (options and options.no_server_metrics))
    summary["failures"] = failures
    out = Path(options.summary_dir if options else "loadtests/out")
    report.write(summary, RESULTS, out)
    print(report.render(summary))
    if failures:
        environment.process_exit_code = 1


def _headers(environment: Environment) -> dict[str, str]:
    options = environment.parsed_options
    return {"Authorization": f"Bearer {options.api_key}"} if options and options.api_key else {}
