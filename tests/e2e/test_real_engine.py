"""End to end on the real engine: `codeserve serve` (vLLM's CPU build + the bundled SmolLM2-135M), driven
by the `openai` SDK. The server (tests/e2e/conftest.py's `live`) starts once for the session (~50 s), shared with the
agent tests (test_agents.py, which sorts first); the last test here stops it with SIGTERM.
It runs both roles (CODESERVE_ROLE=completion,chat): on the CPU one engine serves them, so every other test here
is unchanged by that, and the two-role start is tested end to end at no extra engine start."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.conftest import MODEL, Live
from tests.serverutil import free_port

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def tokenizer(live: Live):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(live.model_dir)


def test_models(client: openai.OpenAI, live: Live) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]
    card = httpx.get(live.url + "/v1/models").json()["data"][0]
    assert card["max_model_len"] == 8192 and card["roles"] == ["completion", "chat"]
    plan = httpx.get(live.url + "/v1/plan").json()
    assert plan["roles"] == ["completion", "chat"] and plan["layout"] == "one-engine" and plan["status"] == "ready"
    assert [(s["role"], s["model"], s["engine"]) for s in plan["served"]] == [("completion", MODEL, 0),
                                                                               ("chat", MODEL, 0)]
    assert plan["served"][0]["plan"]["device"] == "cpu" and len(plan["engines"]) == 1


def test_both_roles_answer_without_naming_a_model(live: Live) -> None:
    completion = httpx.post(live.url + "/v1/completions", json={"prompt": "def add(a, b):\n    return",
                                                                 "suffix": "\n", "max_tokens": 8, "temperature": 0},
                            timeout=120)
    chat = httpx.post(live.url + "/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8, "temperature": 0}, timeout=120)
    assert completion.status_code == 200 and chat.status_code == 200
    assert completion.json()["model"] == chat.json()["model"] == MODEL
    # the per-model series are exported for the one engine that serves both
    assert live.metric("codeserve_generation_tokens_total", f'endpoint="chat",model="{MODEL}"') >= 1


def test_greedy_completion_usage_matches_the_tokenizer(client: openai.OpenAI, tokenizer) -> None:
    prompt = "def fibonacci(n):\n"
    result = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0)
    assert result.usage is not None
    assert result.usage.prompt_tokens == len(tokenizer.encode(prompt))
    assert result.choices[0].finish_reason in ("length", "stop")
    if result.choices[0].finish_reason == "length":
        assert result.usage.completion_tokens == 16
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens
    again = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0)
    assert again.choices[0].text == result.choices[0].text  # greedy is deterministic


def test_streaming_equals_blocking(client: openai.OpenAI) -> None:
    prompt = "import os\n\ndef list_files(path):\n"
    blocking = client.completions.create(model=MODEL, prompt=prompt, max_tokens=20, temperature=0)
    stream = client.completions.create(model=MODEL, prompt=prompt, max_tokens=20, temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == blocking.choices[0].text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == blocking.usage.completion_tokens  # type: ignore[union-attr]


def test_chat_counts_the_templated_prompt(client: openai.OpenAI, tokenizer) -> None:
    messages = [{"role": "user", "content": "Write a Python function that adds two numbers."}]
    result = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0)  # type: ignore[arg-type]
    assert result.choices[0].message.content
    templated = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = templated["input_ids"] if hasattr(templated, "keys") else templated  # BatchEncoding in transformers 5
    assert result.usage is not None and result.usage.prompt_tokens == len(ids)


def test_chat_streaming(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hi"}],
                                            max_tokens=8, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_fill_in_the_middle_on_a_model_without_fim_tokens(client: openai.OpenAI, tokenizer) -> None:
    # SmolLM2 has no FIM tokens: codeserve continues the prefix and cuts where the answer meets the suffix.
    prefix = "def add(a, b):\n    "
    result = client.completions.create(model=MODEL, prompt=prefix, suffix="\n\nprint(add(1, 2))",
                                       max_tokens=24, temperature=0)
    assert result.choices[0].text.strip()
    assert result.usage is not None and result.usage.prompt_tokens == len(tokenizer(prefix)["input_ids"])


def test_n_choices_with_sampling(client: openai.OpenAI) -> None:
    result = client.completions.create(model=MODEL, prompt="# a list of fruits\nfruits = [", max_tokens=8, n=3,
                                       temperature=1.0, seed=7, logprobs=1)
    assert sorted(c.index for c in result.choices) == [0, 1, 2]
    per_choice = [len(c.logprobs.tokens or []) if c.logprobs else 0 for c in result.choices]
    assert all(1 <= tokens <= 8 for tokens in per_choice), per_choice
    assert all(c.text for c in result.choices)
    for choice, tokens in zip(result.choices, per_choice, strict=True):
        assert choice.finish_reason == ("length" if tokens == 8 else "stop")
    assert result.usage is not None and result.usage.completion_tokens == sum(per_choice)


def test_greedy_n_choices_are_identical_and_all_counted(client: openai.OpenAI) -> None:
    """vLLM refuses n > 1 without sampling: the adapter runs one and copies it; usage counts every copy."""
    result = client.completions.create(model=MODEL, prompt="def add(a, b):\n", max_tokens=6, n=3, temperature=0,
                                       logprobs=1)
    texts = [c.text for c in sorted(result.choices, key=lambda c: c.index)]
    assert len(texts) == 3 and texts[0] and texts == [texts[0]] * 3
    tokens = len(result.choices[0].logprobs.tokens or []) if result.choices[0].logprobs else 0
    assert result.usage is not None and result.usage.completion_tokens == 3 * tokens > 0


def test_stop_string_ends_the_text(client: openai.OpenAI) -> None:
    prompt = "def fibonacci(n):\n"
    full = client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0).choices[0].text
    words = [w for w in re.findall(r"\w+", full) if len(w) > 1]
    assert words, full
    stop = words[min(1, len(words) - 1)]
    cut = client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == full[:full.index(stop)]


def test_errors_are_openai_shaped(client: openai.OpenAI, live: Live) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="x " * 9000, max_tokens=4)
    assert info.value.body["code"] == "context_length_exceeded"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="x")
    response = httpx.post(live.url + "/v1/completions", json={"prompt": "x", "temperature": "hot"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "temperature"


def test_disconnect_aborts_the_engine_request(live: Live) -> None:
    cancelled_before = live.metric("codeserve_requests_cancelled_total")
    with httpx.Client(timeout=60) as http, http.stream(
            "POST", live.url + "/v1/completions",
            # greedy counting goes on until max_tokens: the request is surely still running when we leave
            json={"prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 2000, "stream": True, "temperature": 0}) as response:
        lines = response.iter_lines()  # kept referenced: a dropped iterator closes the connection early
        for line in lines:
            if line.startswith("data: "):
                break  # tokens are flowing
        assert live.metric("codeserve_engine_unfinished_requests") == 1
    # leaving the block closed the connection mid-stream, as an IDE does when the user types on
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and live.metric("codeserve_engine_unfinished_requests") != 0:
        time.sleep(0.1)
    assert live.metric("codeserve_engine_unfinished_requests") == 0
    assert live.metric("vllm:num_requests_running") == 0
    assert live.metric("codeserve_requests_cancelled_total") == cancelled_before + 1
    assert live.metric("codeserve_requests_in_flight") == 0


def test_a_newer_completion_of_the_same_user_supersedes_the_older(live: Live) -> None:
    superseded_before = live.metric("codeserve_requests_superseded_total")
    body = {"prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 2000, "stream": True, "temperature": 0, "user": "typist"}
    with httpx.Client(timeout=60) as http, http.stream("POST", live.url + "/v1/completions", json=body) as response:
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                break  # tokens are flowing
        newer = http.post(live.url + "/v1/completions", json={**body, "stream": False, "max_tokens": 4})
        rest = [line for line in lines if line.startswith("data: ")]  # ends at once: no 2000 tokens to wait for
    assert newer.status_code == 200 and newer.json()["usage"]["completion_tokens"] == 4
    assert json.loads(rest[-1][6:])["error"]["code"] == "request_superseded"
    assert live.metric("codeserve_requests_superseded_total") == superseded_before + 1
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and live.metric("codeserve_engine_unfinished_requests") != 0:
        time.sleep(0.1)
    assert live.metric("codeserve_engine_unfinished_requests") == 0
    assert live.metric("vllm:num_requests_running") == 0


def test_typing_reuses_the_prompt_up_to_the_cursor(live: Live) -> None:
    """Each keystroke's prompt is served from vLLM's prefix cache up to the cursor: the suffix comes first, so
    only the last (partial) block and the template's tail are prefilled again."""
    source = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text(encoding="utf-8")
    prefix, suffix = source[2000:3600], source[3600:5600]  # the code after the cursor outweighs the change
    body = {"prompt": prefix, "suffix": suffix, "max_tokens": 1, "temperature": 0}
    assert httpx.post(live.url + "/v1/completions", json=body, timeout=120).status_code == 200
    queries, hits = live.metric("vllm:prefix_cache_queries_total"), live.metric("vllm:prefix_cache_hits_total")
    typed = httpx.post(live.url + "/v1/completions", json={**body, "prompt": prefix + "if n"}, timeout=120)
    assert typed.status_code == 200
    prompt_tokens = typed.json()["usage"]["prompt_tokens"]
    assert live.metric("vllm:prefix_cache_queries_total") - queries == prompt_tokens
    reused = live.metric("vllm:prefix_cache_hits_total") - hits
    assert reused >= prompt_tokens - 64, f"only {reused} of {prompt_tokens} prompt tokens came from the cache"


def test_llama_vscode_infill(live: Live) -> None:
    response = httpx.post(live.url + "/infill", json={"input_prefix": "def add(a, b):\n    ", "input_suffix": "\n",
                                                       "n_predict": 8, "temperature": 0}, timeout=60)
    assert response.status_code == 200 and '"content":"' in response.text
    assert response.json()["tokens_predicted"] >= 1


ISSUE_PREFIX = "import os\n\ndef list_python_files(root):\n    result = []\n    for "


@pytest.mark.parametrize("path", ["/infill", "/v1/engines/copilot/completions", "/v1/completions"])
def test_fim_output_never_restates_the_prefix_or_leaks_the_template(live: Live, path: str) -> None:
    """The issue's report on the real model: the answer started with the whole file again."""
    suffix = "\n    return result\n"
    body = ({"input_prefix": ISSUE_PREFIX, "input_suffix": suffix, "n_predict": 48, "temperature": 0}
            if path == "/infill" else {"prompt": ISSUE_PREFIX, "suffix": suffix, "max_tokens": 48, "temperature": 0})
    response = httpx.post(live.url + path, json=body, timeout=120)
    assert response.status_code == 200
    data = response.json()
    text = data["content"] if path == "/infill" else data["choices"][0]["text"]
    starts = [0] + [i + 1 for i, c in enumerate(ISSUE_PREFIX) if c == "\n"]
    assert not any(text.startswith(ISSUE_PREFIX[j:]) for j in starts if ISSUE_PREFIX[j:].strip()), text
    assert "assistant" not in text and "<|im_" not in text and "```" not in text, text
    assert not text.rstrip().endswith("return result"), text  # ran into the suffix: cut


def test_infill_with_the_cursor_mid_line_answers_one_line(live: Live) -> None:
    body = {"input_prefix": "import math\n\nradius = 2\narea = math.", "input_suffix": "  # the area\nprint(area)\n",
            "n_predict": 40, "temperature": 0}
    data = httpx.post(live.url + "/infill", json=body, timeout=120).json()
    assert "\n" not in data["content"] and data["tokens_predicted"] < 40, data


def test_eval_scores_the_real_server(live: Live) -> None:
    from server.evaluation.client import Target, evaluate

    result = evaluate(Target(live.url), 4, seed=0)
    assert result["errors"] == 0 and result["samples"] == 4 and result["model"] == MODEL
    assert 0.0 <= result["exact_match"] <= 1.0 and 0.0 < result["edit_similarity"] <= 1.0


def test_generated_tokens_counter_matches_usage(client: openai.OpenAI, live: Live) -> None:
    at = f'endpoint="completions",model="{MODEL}"'
    before = live.metric("codeserve_generation_tokens_total", at)
    prompts_before = live.metric("codeserve_prompt_tokens_total", at)
    usage = [client.completions.create(model=MODEL, prompt=p, max_tokens=n, temperature=0).usage
             for p, n in (("def a():", 5), ("class B:", 9), ("import", 3))]
    stream = client.completions.create(model=MODEL, prompt="x = [", max_tokens=7, stream=True,
                                       stream_options={"include_usage": True})
    usage.append([c for c in stream][-1].usage)
    assert all(u is not None for u in usage)
    generated = sum(u.completion_tokens for u in usage)  # type: ignore[union-attr]
    prompt = sum(u.prompt_tokens for u in usage)  # type: ignore[union-attr]
    assert live.metric("codeserve_generation_tokens_total", at) - before == generated
    assert live.metric("codeserve_prompt_tokens_total", at) - prompts_before == prompt


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (scripts/setup.sh --test installs Debian's prometheus)")
    return path


def test_live_metrics_pass_promtool(live: Live) -> None:
    text = httpx.get(live.url + "/metrics").content
    result = subprocess.run([_promtool(), "check", "metrics"], input=text, capture_output=True)
    # promtool exits 1 on a parse error and 3 on lint findings only (cmd/promtool: lintErrExitCode)
    assert result.returncode in (0, 3), result.stdout.decode() + result.stderr.decode()
    problems = [line for line in (result.stdout + result.stderr).decode().splitlines() if line.strip()]
    # The output parses (a parse error fails whatever it names). vLLM's own `vllm:*` metrics carry lint
    # findings of their upstream naming (':' reserved for recording rules; a histogram called
    # `vllm:iteration_tokens_total`); they keep their published names, which vLLM's dashboards use.
    # codeserve's own metrics must have none.
    others = [p for p in problems if not p.startswith("vllm:")]
    assert others == []
    assert not any(p.startswith("codeserve") for p in problems)


@pytest.fixture(scope="module")
def prometheus(live: Live, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed (scripts/setup.sh --test installs Debian's prometheus)")
    work = tmp_path_factory.mktemp("prometheus")
    target = live.url.removeprefix("http://")
    rules = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rules" / "codeserve.yml"
    (work / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{rules}]\n"
        f"scrape_configs: [{{job_name: codeserve, static_configs: [{{targets: ['{target}']}}]}}]\n")
    port = free_port()
    with (work / "log").open("wb") as log:
        process = subprocess.Popen([binary, f"--config.file={work / 'prometheus.yml'}",
                                    f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                   stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if _query(url, 'up{job="codeserve"}', quiet=True) == [1.0]:
                break
            time.sleep(0.5)
        else:
            pytest.fail("prometheus never scraped codeserve:\n" + (work / "log").read_text()[-2000:])
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _query(url: str, expr: str, quiet: bool = False) -> list[float]:
    try:
        body = httpx.get(url + "/api/v1/query", params={"query": expr}, timeout=10).json()
    except httpx.HTTPError:
        if quiet:
            return []
        raise
    assert body["status"] == "success", (expr, body)
    return [float(r["value"][1]) for r in body["data"]["result"]]


def test_prometheus_scrapes_what_the_server_counts(client: openai.OpenAI, live: Live, prometheus: str) -> None:
    for prompt in ("def f():", "while True:", "try:"):
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0)
    tokens = live.metric("codeserve_generation_tokens_total")
    ttft_count = live.metric("codeserve_time_to_first_token_seconds_count", f'endpoint="completions",model="{MODEL}"')
    time.sleep(3)  # a few scrape intervals
    assert _query(prometheus, "sum(codeserve_generation_tokens_total)") == [tokens]
    assert _query(prometheus, 'codeserve_time_to_first_token_seconds_count{endpoint="completions"}') == [ttft_count]
    p95 = _query(prometheus, 'histogram_quantile(0.95, sum by (le) '
                             '(codeserve_time_to_first_token_seconds_bucket{endpoint="completions"}))')
    assert len(p95) == 1 and 0 < p95[0] < 60


def test_dashboard_queries_run_on_real_prometheus(live: Live, prometheus: str) -> None:
    from tests.deploy.test_dashboard import dashboard, metric_names

    exported = {line.split(" ")[2] for line in httpx.get(live.url + "/metrics").text.splitlines()
                if line.startswith("# TYPE ")}
    series = {n + suffix for n in exported for suffix in ("", "_total", "_bucket", "_count", "_sum", "_info")}
    for expr in dashboard.expressions(dashboard.dashboard()):
        assert metric_names(expr) <= series, metric_names(expr) - series
        _query(prometheus, expr.replace("$__rate_interval", "1m").replace("$job", ".*"))


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"prompt": "", "max_tokens": 4}, 400, "prompt"),
    ({"prompt": [-1, 5], "max_tokens": 4}, 400, "prompt"),
    ({"prompt": [10**7], "max_tokens": 4}, 400, "prompt"),
    ({"prompt": "x", "seed": 2**64, "max_tokens": 4}, 400, "seed"),
    ({"prompt": "x\ud800", "max_tokens": 4}, 400, "prompt"),
    ({"prompt": "def f():", "max_tokens": 0, "stream": True}, 200, None),
    ({"prompt": "def f():", "max_tokens": 0}, 200, None),
], ids=["empty", "negative-id", "out-of-vocab", "seed-int64", "surrogate", "max-tokens-0-stream", "max-tokens-0"])
def test_client_mistakes_never_reach_the_engine_as_500s(live: Live, body: dict, status: int, param: str | None) -> None:
    """Each was a 500 from vLLM (and max_tokens 0 left the in-flight gauge at 1 for ever)."""
    response = httpx.post(live.url + "/v1/completions", content=json.dumps(body).encode(),
                          headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == status, response.text
    if param is not None:
        assert response.json()["error"]["param"] == param
    assert live.metric("codeserve_requests_in_flight") == 0
    assert live.metric("codeserve_engine_unfinished_requests") == 0
    after = httpx.post(live.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}, timeout=60)
    assert after.status_code == 200


def test_locust_smoke_run(live: Live, tmp_path: Path) -> None:
    """20 s of IDE traffic (FIM completions cut from the stdlib, half abandoned mid-stream, plus chat)."""
    out = tmp_path / "loadtest"
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve().parents[2] / "loadtests" / "run.py"), "--host", live.url,
         "--users", "4", "--spawn-rate", "4", "--run-time", "20s", "--out", str(out), "--",
         "--cancel-share", "0.5", "--completion-weight", "2", "--chat-weight", "1", "--typing-weight", "1",
         "--max-prefix-tokens", "120",
         "--max-suffix-tokens", "40", "--completion-max-tokens", "8-24", "--chat-max-tokens", "16-32"],
        capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failures"] == [] and summary["server_5xx"] == 0
    assert summary["by_endpoint"]["completions"]["ttft_ms"]["p50"] is not None
    assert summary["server"]["in_flight_after"] == 0 and summary["server"]["engine_unfinished_after"] == 0
    assert summary["cancelled"] > 0
    for name in ("locust_stats.csv", "report.html", "summary.md", "latency.png"):
        assert (out / name).stat().st_size > 0, name
    stats = (out / "locust_stats.csv").read_text()
    assert "TTFT completions" in stats and "tokens/s completions" in stats
    assert summary["by_endpoint"]["typing"]["ttft_ms"]["p50"] is not None  # the typing user, reported apart
    assert summary["server"]["prefix_cache_hit_rate"] > 0


def test_sigterm_lets_in_flight_requests_finish(live: Live) -> None:
    result: dict[str, object] = {}

    def long_request() -> None:
        with httpx.Client(timeout=120) as http:
            response = http.post(live.url + "/v1/completions",
                                 json={"prompt": "def main():\n", "max_tokens": 40, "temperature": 0, "stream": True})
            result["status"] = response.status_code
            result["done"] = response.text.rstrip().endswith("data: [DONE]")

    thread = threading.Thread(target=long_request)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and live.metric("codeserve_requests_in_flight") < 1:
        time.sleep(0.05)
    live.process.send_signal(signal.SIGTERM)
    thread.join(timeout=120)
    assert result == {"status": 200, "done": True}
    # uvicorn re-raises the signal after its graceful shutdown, so the exit status is "killed by SIGTERM"
    assert live.process.wait(timeout=60) in (0, -signal.SIGTERM)
    tail = live.log.read_text().split("Shutting down")[-1]
    assert "engine stopped" in tail and "Traceback" not in tail
