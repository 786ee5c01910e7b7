"""The llama.cpp engine end to end: `codeserve serve` with CODESERVE_ENGINE=llamacpp runs llama-server as its child
on the bundled model's shipped GGUF (no conversion), and what the server promises holds on it: streaming, FIM,
typing that reuses the slot's cache, supersession, disconnect abort, 429s, metrics (codeserve's and llama-server's),
structured output and forced tool calls through its grammars, and a dead child noticed (503, exit 3).

One codeserve start for the module (~15 s: llama-server loads the model in ~1 s); the last test kills its child.
Skipped where no llama-server binary is found (scripts/setup.sh builds it; CODESERVE_LLAMA_SERVER points at one)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import psutil
import pytest
from jsonschema import Draft202012Validator

from server.engine.gguf_file import read
from server.engine.llamacpp_process import find_llama_server
from tests.e2e.conftest import MODEL, Live, isolated_env, wait_ready
from tests.serverutil import free_port

# read at import: the tests' autouse fixture clears CODESERVE_* variables while each test runs
_SETTING = os.environ.get("CODESERVE_LLAMA_SERVER")
BINARY = find_llama_server(Path(_SETTING) if _SETTING else None)
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(
    BINARY is None, reason="no llama-server binary (scripts/setup.sh builds it; or set CODESERVE_LLAMA_SERVER)")]
START_TIMEOUT_S = 180
SLOTS = 4


@pytest.fixture(scope="session")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    assert BINARY is not None
    port = free_port()
    work = tmp_path_factory.mktemp("serve-llamacpp")
    log = work / "serve.log"
    env = isolated_env(work, CODESERVE_ENGINE="llamacpp", CODESERVE_LLAMA_SERVER=BINARY, CODESERVE_HOST="127.0.0.1",
                       CODESERVE_PORT=str(port), CODESERVE_MAX_CONCURRENT_SEQUENCES=str(SLOTS),
                       CODESERVE_MAX_CONCURRENT_REQUESTS=str(SLOTS), CODESERVE_MAX_QUEUED_REQUESTS="2",
                       CODESERVE_FAILURE_EXIT_S="1", CODESERVE_LOG_LEVEL="debug")
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], stdout=out, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_ready(process, url, log, START_TIMEOUT_S)
    yield Live(url, process, log, Path(BINARY))
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="session")
def llama_client(llama: Live) -> openai.OpenAI:
    return openai.OpenAI(base_url=llama.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _settle(live: Live) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (live.metric("codeserve_engine_unfinished_requests") != 0
                                           or live.metric("llamacpp:requests_processing") != 0):
        time.sleep(0.1)
    assert live.metric("codeserve_engine_unfinished_requests") == 0
    assert live.metric("llamacpp:requests_processing") == 0


def test_the_plan_runs_llamacpp_on_the_converted_bundled_gguf(llama: Live) -> None:
    """The shipped Q4_1 file, converted once to Q8_0 (llama.cpp has no fast prompt kernel for Q4_1), is what
    llama-server loaded."""
    plan = httpx.get(llama.url + "/v1/plan").json()
    weights = plan["launch"]["weights_type"]
    assert weights == "Q8_0" and plan["launch"]["model"].endswith("Q4_1.gguf")
    args = plan["engine"]["args"]
    loaded = Path(args[args.index("--model") + 1])
    assert plan["engine"]["name"] == "llama.cpp" and loaded.name.endswith(f".{weights}.gguf")
    assert read(loaded).file.weights_type == weights
    assert any(f"converted once to {weights}" in note for note in plan["notes"])


def test_streaming_equals_blocking(llama_client: openai.OpenAI) -> None:
    prompt = "def fibonacci(n):\n"
    blocking = llama_client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0)
    chunks = list(llama_client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0,
                                                  stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == blocking.choices[0].text
    assert blocking.choices[0].finish_reason == "length" and blocking.usage.completion_tokens == 24
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stop_string_ends_the_text(llama_client: openai.OpenAI) -> None:
    answer = llama_client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=30, temperature=0,
                                             stop=["7"])
    assert answer.choices[0].finish_reason == "stop" and "7" not in answer.choices[0].text


def test_chat_streams_and_ends_at_the_template_marker(llama_client: openai.OpenAI) -> None:
    answer = llama_client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hi."}],
                                                  max_tokens=64, temperature=0)
    text = answer.choices[0].message.content or ""
    assert text and "<|im_end|>" not in text and "<|im_start|>" not in text


def test_n_sampled_choices_are_separate_samples(llama_client: openai.OpenAI, llama: Live) -> None:
    """n > 1 sampled: one llama-server request each (seeded seed, seed+1, ...), streamed together, every choice
    ended; greedy n > 1 runs once and is copied."""
    sampled = llama_client.completions.create(model=MODEL, prompt="def parse(text):\n", max_tokens=24, n=3,
                                              temperature=1.0, seed=11)
    texts = {c.index: c.text for c in sampled.choices}
    assert sorted(texts) == [0, 1, 2] and all(c.finish_reason in ("length", "stop") for c in sampled.choices)
    assert len(set(texts.values())) >= 2  # three samples at temperature 1, not one copied
    assert sampled.usage is not None and 3 <= sampled.usage.completion_tokens <= 3 * 24
    again = llama_client.completions.create(model=MODEL, prompt="def parse(text):\n", max_tokens=24, n=3,
                                            temperature=1.0, seed=11)
    assert {c.index: c.text for c in again.choices} == texts  # the seeds make it repeatable
    streamed = list(llama_client.completions.create(model=MODEL, prompt="def parse(text):\n", max_tokens=24, n=3,
                                                    temperature=1.0, seed=11, stream=True))
    assert {i: "".join(c.choices[0].text for c in streamed if c.choices and c.choices[0].index == i)
            for i in range(3)} == texts
    greedy = llama_client.completions.create(model=MODEL, prompt="def parse(text):\n", max_tokens=8, n=2,
                                             temperature=0)
    assert greedy.choices[0].text == greedy.choices[1].text
    _settle(llama)


def test_fill_in_the_middle_and_infill(llama: Live) -> None:
    body = {"prompt": "def add(a, b):\n    ", "suffix": "\n\nprint(add(1, 2))\n", "max_tokens": 16, "temperature": 0}
    response = httpx.post(llama.url + "/v1/completions", json=body, timeout=60)
    assert response.status_code == 200 and response.json()["choices"][0]["text"].strip()
    infill = httpx.post(llama.url + "/infill", json={"input_prefix": "def add(a, b):\n    ", "input_suffix": "\n",
                                                     "n_predict": 8, "temperature": 0}, timeout=60)
    assert infill.status_code == 200 and infill.json()["tokens_predicted"] >= 1


def test_typing_reuses_the_slots_cache(llama: Live) -> None:
    """The next keystroke goes to the slot that holds the prompt so far: llama-server evaluates only what changed."""
    source = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text(encoding="utf-8")
    prefix, suffix = source[2000:4000], source[4000:5000]
    body = {"prompt": prefix, "suffix": suffix, "max_tokens": 1, "temperature": 0}
    assert httpx.post(llama.url + "/v1/completions", json=body, timeout=120).status_code == 200
    evaluated = llama.metric("llamacpp:prompt_tokens_total")
    typed = httpx.post(llama.url + "/v1/completions", json={**body, "prompt": prefix + "if n"}, timeout=120)
    assert typed.status_code == 200
    prompt_tokens = typed.json()["usage"]["prompt_tokens"]
    new = llama.metric("llamacpp:prompt_tokens_total") - evaluated
    assert prompt_tokens > 300 and new <= 16, f"{new} of {prompt_tokens} prompt tokens evaluated again"


def test_disconnect_aborts_the_engine_request(llama: Live) -> None:
    cancelled_before = llama.metric("codeserve_requests_cancelled_total")
    with httpx.Client(timeout=60) as http, http.stream(
            "POST", llama.url + "/v1/completions",
            json={"prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 2000, "stream": True, "temperature": 0}) as response:
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                break  # tokens are flowing
        assert llama.metric("codeserve_engine_unfinished_requests") == 1
    _settle(llama)
    assert llama.metric("codeserve_requests_cancelled_total") == cancelled_before + 1


def test_a_newer_completion_of_the_same_user_supersedes_the_older(llama: Live) -> None:
    body = {"prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 2000, "stream": True, "temperature": 0, "user": "typist"}
    with httpx.Client(timeout=60) as http, http.stream("POST", llama.url + "/v1/completions", json=body) as response:
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                break
        newer = http.post(llama.url + "/v1/completions", json={**body, "stream": False, "max_tokens": 4})
        rest = [line for line in lines if line.startswith("data: ")]
    assert newer.status_code == 200 and newer.json()["usage"]["completion_tokens"] == 4
    assert json.loads(rest[-1][6:])["error"]["code"] == "request_superseded"
    _settle(llama)


def test_a_full_server_answers_429(llama: Live) -> None:
    """SLOTS requests run, 2 wait, the rest are refused at once."""
    body = {"prompt": "1, 2, 3,", "max_tokens": 64, "temperature": 0}
    with ThreadPoolExecutor(SLOTS + 4) as pool:
        codes = list(pool.map(lambda _: httpx.post(llama.url + "/v1/completions", json=body, timeout=120).status_code,
                              range(SLOTS + 4)))
    assert codes.count(429) >= 1 and codes.count(200) >= SLOTS, codes
    _settle(llama)


def test_json_schema_and_forced_tool_calls_validate(llama_client: openai.OpenAI) -> None:
    schema = {"type": "object", "additionalProperties": False, "required": ["path", "line"],
              "properties": {"path": {"type": "string", "maxLength": 24},
                             "line": {"type": "integer", "minimum": 1, "maximum": 9999}}}
    ask = [{"role": "user", "content": "Open the parser."}]
    for seed in range(3):
        answer = llama_client.chat.completions.create(
            model=MODEL, messages=ask, max_tokens=96, temperature=1.0, seed=seed,  # type: ignore[arg-type]
            response_format={"type": "json_schema", "json_schema": {"name": "loc", "schema": schema}})
        Draft202012Validator(schema).validate(json.loads(answer.choices[0].message.content or ""))
        tools = [{"type": "function", "function": {"name": "open_file", "parameters": schema}}]
        called = llama_client.chat.completions.create(model=MODEL, messages=ask, max_tokens=96,  # type: ignore[arg-type]
                                                      temperature=1.0, seed=seed, tools=tools,  # type: ignore[arg-type]
                                                      tool_choice="required", parallel_tool_calls=False)
        call = called.choices[0].message.tool_calls
        assert called.choices[0].finish_reason == "tool_calls" and call, called
        Draft202012Validator(schema).validate(json.loads(call[0].function.arguments))  # type: ignore[union-attr]


def test_what_llamacpp_cannot_honour_is_a_400(llama: Live) -> None:
    response = httpx.post(llama.url + "/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "structured_outputs": {"regex": "[a-z]+"}})
    assert response.status_code == 400 and response.json()["error"]["param"] == "structured_outputs.regex"
    response = httpx.post(llama.url + "/v1/completions", json={"prompt": "a", "min_tokens": 3})
    assert response.status_code == 400 and response.json()["error"]["param"] == "min_tokens"


def test_a_constraint_llama_server_refuses_is_a_400_naming_it(llama: Live) -> None:
    """llama-server refuses, when it runs the request, a schema it cannot convert (a $ref outside the document,
    common/json-schema.cpp) and a GBNF grammar it cannot parse: each is a 400 naming the field, not a 500."""
    outside = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "https://example.com/x.json"}}}
    response = httpx.post(llama.url + "/v1/chat/completions", timeout=60, json={
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
        "response_format": outside})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "response_format.json_schema"
    assert "only references into the same document" in response.json()["error"]["message"]
    response = httpx.post(llama.url + "/v1/completions", timeout=60, json={
        "prompt": "a", "max_tokens": 4, "structured_outputs": {"grammar": "root ::= ("}})
    assert response.status_code == 400 and response.json()["error"]["param"] == "structured_outputs.grammar"
    streamed = httpx.post(llama.url + "/v1/completions", timeout=60, json={
        "prompt": "a", "max_tokens": 4, "stream": True, "structured_outputs": {"grammar": "root ::= ("}})
    last = [line for line in streamed.text.splitlines() if line.startswith("data: {")][-1]
    assert json.loads(last[6:])["error"]["type"] == "invalid_request_error"
    _settle(llama)


def test_metrics_show_codeserve_and_llama_server(llama: Live) -> None:
    assert llama.metric("codeserve_time_to_first_token_seconds_count") >= 1
    assert llama.metric("llamacpp:tokens_predicted_total") >= 1
    assert llama.metric("codeserve_ready") == 1


def test_zz_a_dead_llama_server_is_noticed(llama: Live) -> None:
    """Last: kills the module's server. The child's death turns /health 503 and the server exits with status 3."""
    children = [p for p in psutil.Process(llama.process.pid).children(recursive=True) if "llama-server" in p.name()]
    assert len(children) == 1
    children[0].kill()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and httpx.get(llama.url + "/health", timeout=5).status_code != 503:
        time.sleep(0.2)
    assert httpx.get(llama.url + "/health", timeout=5).status_code == 503
    answer = httpx.post(llama.url + "/v1/completions", json={"prompt": "a", "max_tokens": 2}, timeout=10)
    assert answer.status_code == 503
    assert llama.process.wait(30) == 3
    assert "llama-server exited (killed by signal 9)" in llama.log.read_text()
