"""llama.cpp's /infill and /completion as llama.vscode, llama.vim and Continue call them."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.api.conftest import Served
from tests.fake_engine import FakeEngine


def test_infill_builds_the_fim_prompt_with_extra_context(fake: Served) -> None:
    body = {"input_prefix": "def f(x):\n    ", "input_suffix": "\n    return y\n", "prompt": "y",
            "input_extra": [{"filename": "util.py", "text": "def g(): pass"}], "n_predict": 4,
            "samplers": ["top_k", "top_p"], "t_max_prompt_ms": 500, "t_max_predict_ms": 1000, "id_slot": 0,
            "cache_prompt": True, "model": ""}
    response = httpx.post(fake.url + "/infill", json=body)
    assert response.status_code == 200
    data = response.json()
    assert data["content"] and data["tokens_predicted"] == 4 and data["stop"] is True
    assert "generation_settings" in data and data["timings"]["predicted_n"] == 4
    # Qwen2.5-Coder's repository format: other files after <|file_sep|>, then the edited file
    expected = ("<|file_sep|>util.py\ndef g(): pass\n<|file_sep|>\n"
                "<|fim_prefix|>def f(x):\n    <|fim_suffix|>\n    return y\n<|fim_middle|>")
    assert fake.engine.prompts[-1] == fake.engine.tokenize(expected) + fake.engine.tokenize("y")


def test_infill_with_the_cursor_at_the_end_keeps_the_fim_format(fake: Served) -> None:
    response = httpx.post(fake.url + "/infill", json={"input_prefix": "x = ", "input_suffix": "", "n_predict": 2})
    assert response.status_code == 200
    assert fake.engine.prompts[-1] == fake.engine.tokenize("<|fim_prefix|>x = <|fim_suffix|><|fim_middle|>")


def test_infill_warm_up_with_n_predict_zero_prefills_the_prompt(fake: Served) -> None:
    """llama.vscode warms the server with the editor's context (n_predict 0, input_extra chunks): the prompt goes
    through the engine, so its prefix is cached for the completions that follow, and nothing is answered."""
    body = {"input_prefix": "def f(x):\n    ", "input_suffix": "\n", "n_predict": 0, "samplers": [],
            "cache_prompt": True, "t_max_predict_ms": 1,
            "input_extra": [{"filename": "util.py", "text": "def g(): pass"}]}
    response = httpx.post(fake.url + "/infill", json=body)
    assert response.status_code == 200
    data = response.json()
    assert data["content"] == "" and data["tokens_predicted"] == 0 and data["tokens_evaluated"] > 0
    completion = httpx.post(fake.url + "/infill", json={**body, "n_predict": 4})
    assert fake.engine.prompts[-2] == fake.engine.prompts[-1]  # the prompt the completion then reuses
    assert fake.engine.samplings[-2].max_tokens == 1 and completion.json()["content"]


def test_llama_vim_response_fields_and_compact_json(fake: Served) -> None:
    response = httpx.post(fake.url + "/infill", headers={"Authorization": "Bearer"}, json={
        "input_prefix": "x = ", "input_suffix": "", "n_predict": 3, "model": "",
        "response_fields": ["content", "timings/prompt_n", "timings/predicted_n", "tokens_cached"]})
    assert response.status_code == 200
    assert '"content":"' in response.text  # llama.vim drops bodies without it (compact JSON)
    data = response.json()
    assert set(data) == {"content", "timings/prompt_n", "timings/predicted_n", "tokens_cached"}
    assert data["timings/predicted_n"] == 3


def test_n_cmpl_returns_an_array(fake: Served) -> None:
    data = httpx.post(fake.url + "/infill", json={"input_prefix": "a", "input_suffix": "b", "n_predict": 2,
                                                   "n_cmpl": 2, "temperature": 0.5}).json()
    assert isinstance(data, list) and len(data) == 2 and all(d["content"] for d in data)


def test_infill_stream(fake: Served) -> None:
    response = httpx.post(fake.url + "/infill", json={"input_prefix": "a", "input_suffix": "b", "n_predict": 3,
                                                       "stream": True})
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert [e["stop"] for e in events] == [False, False, False, True]
    assert events[-1]["tokens_predicted"] == 3


def test_llamacpp_completion(fake: Served) -> None:
    data = httpx.post(fake.url + "/completion", json={"prompt": "def f():", "n_predict": 5}).json()
    assert data["content"] and data["tokens_predicted"] == 5
    assert fake.engine.prompts[-1] == fake.engine.tokenize("def f():")


def test_bad_n_predict_is_named(fake: Served) -> None:
    response = httpx.post(fake.url + "/infill", json={"input_prefix": "a", "n_predict": -5})
    assert response.status_code == 400 and response.json()["error"]["param"] == "n_predict"


def test_streamed_warm_up_answers_one_final_event(fake) -> None:
    """n_predict 0, streamed: no content events, one result with stop true; the engine only prefilled the prompt."""
    response = httpx.post(fake.url + "/infill", json={"input_prefix": "def f(", "input_suffix": ")", "n_predict": 0,
                                                      "stream": True})
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert response.status_code == 200 and len(events) == 1
    assert events[0]["stop"] is True and events[0]["content"] == "" and events[0]["tokens_predicted"] == 0
    assert len(fake.engine.prompts) == 1 and fake.engine.samplings[0].max_tokens == 1


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_t_max_predict_ms_ends_the_answer_at_a_newline_once_the_time_is_up(serve_fake, stream: bool) -> None:
    """llama.vscode's time budget: past t_max_predict_ms of generating, the answer ends at the next newline
    (stop_type "limit"), and the engine's request is aborted; without it the whole answer comes."""
    reply = "".join(f"line{i}\n" for i in range(40))  # 80 tokens at 20 ms: 1.6 s
    served = serve_fake(engine=FakeEngine(reply=reply, token_delay_s=0.02))
    body = {"prompt": "x", "n_predict": 200, "stream": stream, "t_max_predict_ms": 300}
    response = httpx.post(served.url + "/completion", json=body, timeout=30)
    if stream:
        events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
        content, last = "".join(e.get("content", "") for e in events[:-1]), events[-1]
    else:
        last = response.json()
        content = last["content"]
    assert last["stop_type"] == "limit" and content.endswith("\n") and 3 <= content.count("\n") < 40
    assert content == reply[:len(content)]
    assert served.engine.aborted  # the rest was never generated
    whole = httpx.post(served.url + "/completion", json={**body, "t_max_predict_ms": 0, "stream": False}, timeout=30)
    assert whole.json()["content"] == reply
