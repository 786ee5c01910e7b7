"""The OpenAI wire contract on the fake engine, driven by the real `openai` SDK and raw HTTP."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.api.conftest import Served
from tests.fake_engine import FakeEngine


def _client(served: Served, **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.url + "/v1", api_key=kwargs.pop("api_key", "none"), max_retries=0,
                         **kwargs)  # type: ignore[arg-type]


def _events(response: httpx.Response) -> list[str]:
    return [line[len("data: "):] for line in response.text.splitlines() if line.startswith("data: ")]


def test_models_lists_the_served_model(fake: Served) -> None:
    models = _client(fake).models.list()
    assert [m.id for m in models.data] == ["qwen2.5-coder-7b"]
    raw = httpx.get(fake.url + "/v1/models").json()
    assert raw["data"][0]["max_model_len"] == fake.engine.max_model_len  # Continue's vllm provider reads it
    # a base model with FIM: its format, no chat, tools (were it asked) through the generic prompt
    assert raw["data"][0]["capabilities"] == {"fill_in_the_middle": "qwen", "chat": False, "tool_calls": "generic",
                                              "tool_parser": "hermes", "structured_output": True}


def test_models_says_how_an_instruct_model_calls_tools(serve_fake) -> None:
    native = serve_fake(engine=FakeEngine(tool_template=True), model_id="qwen2.5-coder-7b-instruct")
    card = httpx.get(native.url + "/v1/models").json()["data"][0]
    assert (card["capabilities"]["chat"], card["capabilities"]["tool_calls"]) == (True, "native")


def test_completion_with_usage(fake: Served) -> None:
    result = _client(fake).completions.create(model="qwen2.5-coder-7b", prompt="def add(a, b):", max_tokens=5,
                                              temperature=0)
    choice = result.choices[0]
    assert choice.finish_reason == "length" and choice.text
    assert result.usage is not None
    assert result.usage.prompt_tokens == len(fake.engine.tokenize("def add(a, b):"))
    assert result.usage.completion_tokens == 5
    assert result.usage.total_tokens == result.usage.prompt_tokens + 5


def test_fim_prompt_uses_the_family_template(fake: Served) -> None:
    result = _client(fake).completions.create(model="qwen2.5-coder-7b", prompt="def f(x):\n    ",
                                              suffix="\n    return y", max_tokens=3)
    assert result.choices[0].text
    sent = fake.engine.prompts[-1]
    expected = fake.engine.tokenize("<|fim_prefix|>def f(x):\n    <|fim_suffix|>\n    return y<|fim_middle|>")
    assert sent == expected


def test_null_suffix_is_plain_completion(fake: Served) -> None:
    response = httpx.post(fake.url + "/v1/completions", json={"prompt": "x = ", "suffix": None, "max_tokens": 2})
    assert response.status_code == 200
    assert fake.engine.prompts[-1] == fake.engine.tokenize("x = ")


def test_suffix_on_a_model_without_fim_is_refused(serve_fake) -> None:
    served = serve_fake(model_id="codellama-34b")  # base model, not trained for infilling
    response = httpx.post(served.url + "/v1/completions", json={"prompt": "a", "suffix": "b"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "suffix" and "codellama-34b" in error["message"]


def test_suffix_on_an_instruct_model_without_fim_uses_the_chat_template_when_asked(serve_fake) -> None:
    served = serve_fake(model_id="smollm2-135m-instruct", hole_fill="chat")
    response = httpx.post(served.url + "/v1/completions", json={"prompt": "def f():\n", "suffix": "\nf()"})
    assert response.status_code == 200
    sent = served.engine.prompts[-1]
    assert sent[:1] == served.engine.tokenize("<|user|>")
    assert served.engine.tokenize("<HOLE>")[0] in sent


class _MarkdownAnswer(FakeEngine):
    """Answers like a chat model: code inside a Markdown fence, then prose."""

    ANSWER = ("```", "python", "\n", "x", " =", " 1", "\n", "```", "\n", "This", " sets", " x")

    def _word(self, prompt, index, seed, step):  # type: ignore[no-untyped-def]
        return self.ANSWER[step % len(self.ANSWER)]


@pytest.mark.parametrize("stream", [False, True], ids=["blocking", "stream"])
def test_hole_filled_by_chat_returns_only_code(serve_fake, stream: bool) -> None:
    served = serve_fake(engine=_MarkdownAnswer(), model_id="smollm2-135m-instruct", hole_fill="chat")
    body = {"prompt": "def f():\n    ", "suffix": "\n", "max_tokens": 12, "stream": stream}
    response = httpx.post(served.url + "/v1/completions", json=body)
    if stream:
        text = "".join(json.loads(e)["choices"][0]["text"] for e in _events(response)[:-1])
    else:
        text = response.json()["choices"][0]["text"]
    assert text == "x = 1"


def test_n_and_list_prompts_index_choices(fake: Served) -> None:
    result = _client(fake).completions.create(model="qwen2.5-coder-7b", prompt=["a", "b"], n=3, max_tokens=2,
                                              temperature=0.8, seed=1)
    assert [c.index for c in result.choices] == list(range(6))
    assert result.usage is not None
    assert result.usage.completion_tokens == 12
    assert result.usage.prompt_tokens == 2


def test_greedy_n_is_answered_with_identical_choices(fake: Served) -> None:
    result = _client(fake).completions.create(model="qwen2.5-coder-7b", prompt="a", n=3, max_tokens=4,
                                              temperature=0)
    assert len({c.text for c in result.choices}) == 1 and len(result.choices) == 3
    assert result.usage is not None and result.usage.completion_tokens == 3 * 4  # every choice counts
    assert fake.engine.prompts == [fake.engine.tokenize("a")]  # generated once


def test_stop_strings_reach_the_engine(fake: Served) -> None:
    """The server hands the client's stops to the engine (which cuts the text: tested on vLLM in e2e), and
    adds the FIM family's own stops when it builds a FIM prompt."""
    stops = [" pass", " print", "return", "\n", ":"]
    _client(fake).completions.create(model="qwen2.5-coder-7b", prompt="q", max_tokens=4, stop=stops)
    assert list(fake.engine.samplings[-1].stop) == stops
    _client(fake).completions.create(model="qwen2.5-coder-7b", prompt="q", suffix="z", max_tokens=4, stop="\n\n")
    assert list(fake.engine.samplings[-1].stop) == ["\n\n", "<|endoftext|>", "<|fim_pad|>", "<|repo_name|>",
                                                    "<|file_sep|>"]


def test_echo_and_logprobs(fake: Served) -> None:
    result = _client(fake).completions.create(model="qwen2.5-coder-7b", prompt="abc", max_tokens=3, echo=True,
                                              logprobs=1)
    choice = result.choices[0]
    assert choice.text.startswith("abc")
    assert choice.logprobs is not None and len(choice.logprobs.tokens or []) == 3
    assert (choice.logprobs.text_offset or [0])[0] == 3


def test_streaming_completion_framing(fake: Served) -> None:
    response = httpx.post(fake.url + "/v1/completions", json={
        "prompt": "x", "max_tokens": 4, "stream": True, "stream_options": {"include_usage": True}})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(isinstance(c["choices"][0]["text"], str) for c in chunks[:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"  # before [DONE], as Tabby needs
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


def test_streaming_with_the_sdk(fake: Served) -> None:
    stream = _client(fake).completions.create(model="qwen2.5-coder-7b", prompt="x", max_tokens=6, stream=True)
    text = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
    assert len(fake.engine.tokenize(text)) >= 1


def test_chat_completion(fake: Served) -> None:
    result = _client(fake).chat.completions.create(
        model="qwen2.5-coder-7b", messages=[{"role": "system", "content": "be brief"},
                                            {"role": "user", "content": "write add"}], max_tokens=4)
    assert result.choices[0].message.role == "assistant" and result.choices[0].message.content
    assert fake.engine.prompts[-1] == fake.engine.tokenize("<|system|>be brief\n<|user|>write add\n<|assistant|>")
    assert result.usage is not None and result.usage.completion_tokens == 4


def test_chat_streaming_with_usage(fake: Served) -> None:
    stream = _client(fake).chat.completions.create(
        model="qwen2.5-coder-7b", messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


def test_chat_content_parts(fake: Served) -> None:
    response = httpx.post(fake.url + "/v1/chat/completions", json={
        "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
        "max_tokens": 1})
    assert response.status_code == 200
    assert fake.engine.prompts[-1] == fake.engine.tokenize("<|user|>ab\n<|assistant|>")


def test_copilot_engines_route_tolerates_extras(fake: Served) -> None:
    response = httpx.post(fake.url + "/v1/engines/copilot-codex/completions", headers={"Authorization": "Bearer x"},
                          json={"prompt": "def a():", "suffix": "\n", "max_tokens": 3, "n": 3, "stop": ["\n\n"],
                                "stream": True, "temperature": 0.2, "extra": {"language": "python"},
                                "nwo": "org/repo", "code_annotations": True, "model": "copilot-codex"})
    assert response.status_code == 200
    indices = {json.loads(e)["choices"][0]["index"] for e in _events(response)[:-1]}
    assert indices == {0, 1, 2}


def test_continue_style_request(fake: Served) -> None:
    # Continue: its own FIM prompt, max_tokens 4096, temperature 0.01, many stops, an empty api-key header.
    response = httpx.post(fake.url + "/v1/completions", headers={"api-key": ""}, json={
        "model": "qwen2.5-coder-7b", "prompt": "<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>", "max_tokens": 4096,
        "temperature": 0.01, "stop": ["<|endoftext|>", "<|fim_pad|>", "\n\n", "```", "<|file_sep|>"],
        "stream": True})
    assert response.status_code == 200 and _events(response)[-1] == "[DONE]"
