"""What an editor receives on every FIM path: cleaned text (streamed and not), code-aware stops where they are
on by default, the engine's request ended as soon as the text is decided, and trimming to fit."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.api.conftest import Served
from tests.fake_engine import FakeEngine

PREFIX = "import os\n\ndef list_python_files(root):\n    result = []\n    for "
SUFFIX = "\n    return result\n"
MIDDLE = "f in os.listdir(root):\n        result.append(f)"
# The report: the model starts the file over, then runs on into the suffix and beyond.
RESTATED = PREFIX + MIDDLE + "\n    return result\n\n\nprint(list_python_files('.'))\n"


def _sse(response: httpx.Response) -> list[dict]:
    return [json.loads(line[6:]) for line in response.iter_lines()
            if line.startswith("data: ") and line != "data: [DONE]"]


def _cleanups(served: Served, endpoint: str, action: str) -> float:
    value = served.metrics.registry.get_sample_value("codeserve_infill_cleanups_total",
                                                    {"endpoint": endpoint, "model": served.runtime.cores[0].served.id,  # type: ignore[union-attr]
                                                     "action": action})
    return value or 0.0


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_infill_returns_only_the_middle(serve_fake, stream: bool) -> None:
    served = serve_fake(engine=FakeEngine(reply=RESTATED))
    body = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 200, "stream": stream}
    with httpx.stream("POST", served.url + "/infill", json=body) as response:
        assert response.status_code == 200
        if stream:
            events = _sse(response)
            content = "".join(e["content"] for e in events if not e["stop"])
        else:
            response.read()
            content = response.json()["content"]
    assert content == MIDDLE
    assert served.engine.aborted  # the rest of the reply was never generated
    assert _cleanups(served, "infill", "repeat") == 1 and _cleanups(served, "infill", "suffix") == 1


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_copilot_route_cleans_and_stops_at_the_line_end(serve_fake, stream: bool) -> None:
    served = serve_fake(engine=FakeEngine(reply="    for f in os.listdir(root):\n        result.append(f)\n"))
    body = {"prompt": PREFIX, "suffix": " # files\n    return result\n", "max_tokens": 64, "stream": stream, "n": 1,
            "extra": {"language": "python"}, "nwo": "me/repo"}
    with httpx.stream("POST", served.url + "/v1/engines/copilot-codex/completions", json=body) as response:
        assert response.status_code == 200
        if stream:
            chunks = _sse(response)
            text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
            finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1]
        else:
            response.read()
            text, finish = response.json()["choices"][0]["text"], response.json()["choices"][0]["finish_reason"]
    assert (text, finish) == ("f in os.listdir(root):", "stop")  # cursor mid-line: one line


def test_v1_completions_cleans_but_leaves_stopping_to_the_client_by_default(serve_fake) -> None:
    served = serve_fake(engine=FakeEngine(reply=RESTATED))
    body = {"prompt": PREFIX, "suffix": " # files\n    return result\n", "max_tokens": 200}
    text = httpx.post(served.url + "/v1/completions", json=body).json()["choices"][0]["text"]
    # the restatement dropped and the run into the suffix's second line cut, but no stop at the cursor line's end
    assert text == MIDDLE
    body["code_stops"] = True
    assert httpx.post(served.url + "/v1/completions", json=body).json()["choices"][0]["text"] == MIDDLE.split("\n")[0]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_v1_completions_cuts_where_the_answer_repeats_a_later_suffix_line(serve_fake, stream: bool) -> None:
    """Code stops are off here by default, so the answer runs on; where it reproduces the suffix's second
    non-blank line (it skipped the first, a comment) the editor would get that code twice."""
    suffix = ("\n    # an empty file is a mistake\n    if not config:\n        raise ValueError(path)\n"
              "    return config\n")
    middle = "config = json.loads(Path(path).read_text())"
    served = serve_fake(engine=FakeEngine(reply=middle + "\n" + suffix.split("\n", 2)[2]))
    body = {"prompt": "def read_config(path):\n    ", "suffix": suffix, "max_tokens": 200, "stream": stream}
    with httpx.stream("POST", served.url + "/v1/completions", json=body) as response:
        if stream:
            text = "".join(c["choices"][0]["text"] for c in _sse(response) if c["choices"])
        else:
            response.read()
            text = response.json()["choices"][0]["text"]
    assert text == middle
    assert _cleanups(served, "completions", "suffix") == 1


def test_the_setting_turns_code_stops_on_for_v1_completions(serve_fake) -> None:
    served = serve_fake(engine=FakeEngine(reply="a, b\nrest = 1\n"), completion_code_stops=True)
    body = {"prompt": "x = f(", "suffix": ")\n", "max_tokens": 20}
    assert httpx.post(served.url + "/v1/completions", json=body).json()["choices"][0]["text"] == "a, b"


def test_plain_completions_are_not_touched(serve_fake) -> None:
    served = serve_fake(engine=FakeEngine(reply="import os\nx = 1"))
    body = {"prompt": "import os\n", "max_tokens": 20}
    assert httpx.post(served.url + "/v1/completions", json=body).json()["choices"][0]["text"] == "import os\nx = 1"


def test_n_choices_are_cleaned_each(serve_fake) -> None:
    served = serve_fake(engine=FakeEngine(reply="    for f in x:\n        pass\n"))
    body = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 50, "n_cmpl": 3, "temperature": 0.7}
    results = httpx.post(served.url + "/infill", json=body).json()
    assert [r["content"] for r in results] == ["f in x:\n        pass\n"] * 3


def test_a_chat_hole_fill_stops_on_the_templates_tokens(serve_fake) -> None:
    """A chat model that opens another turn (special tokens, hidden from text) ends its answer there; role
    lines and fences before the code are dropped."""
    served = serve_fake(engine=FakeEngine(reply="assistant\n```python\nbreak\nno<|user|>assistant\nmore"),
                        model_id="smollm2-135m-instruct", hole_fill="chat")
    body = {"input_prefix": "for x in y:\n    if x:\n        ", "input_suffix": "\n", "n_predict": 30}
    response = httpx.post(served.url + "/infill", json=body).json()
    stop_ids = served.engine.samplings[-1].stop_token_ids
    assert set(served.engine.tokenize("<|user|><|assistant|>")) <= set(stop_ids)
    assert response["content"] == "break"  # and the dedented "no" line ends it (code-aware stops)
    body["code_stops"] = False
    assert httpx.post(served.url + "/infill", json=body).json()["content"] == "break\nno"


def test_a_model_without_fim_tokens_continues_the_prefix_by_default(serve_fake) -> None:
    """The prompt is the prefix alone (measured better than asking by chat on the bundled model); the
    suffix still tells the cleaner where the answer runs into the code after the cursor."""
    served = serve_fake(engine=FakeEngine(reply=MIDDLE + "\n    return result\n"), model_id="smollm2-135m-instruct")
    body = {"prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 60}
    text = httpx.post(served.url + "/v1/completions", json=body).json()["choices"][0]["text"]
    assert served.engine.prompts[-1] == served.engine.tokenize(PREFIX)
    assert text == MIDDLE
    assert set(served.engine.tokenize("<|user|><|assistant|>")) <= set(served.engine.samplings[-1].stop_token_ids)


def test_infill_trims_to_fit_and_says_what_it_cut(serve_fake) -> None:
    served = serve_fake(engine=FakeEngine(max_model_len=512, reply="x"))
    prefix = "".join(f"line_{i} = {i}\n" for i in range(400)) + "value = "
    suffix = "\n" + "".join(f"after_{i} = {i}\n" for i in range(400))
    extra = [{"filename": f"mod{i}.py", "text": "def helper():\n    return 1\n" * 20} for i in range(5)]
    body = {"input_prefix": prefix, "input_suffix": suffix, "input_extra": extra, "n_predict": 16}
    data = httpx.post(served.url + "/infill", json=body).json()
    cut = data["truncation"]
    assert data["truncated"] is True and cut["extra_files_dropped"] == 5
    assert cut["prefix_chars_dropped"] > 0 and cut["suffix_chars_dropped"] > 0
    assert 512 * 0.6 < cut["prompt_tokens"] <= 512 - 16  # cut to fit, not far below
    sent = served.engine.prompts[-1]
    assert len(sent) == data["tokens_evaluated"] == cut["prompt_tokens"]
    kept = prefix[cut["prefix_chars_dropped"]:]
    assert kept.startswith("line_") and kept.endswith("value = ")  # whole lines went, the cursor line stayed
    kept_suffix = suffix[:len(suffix) - cut["suffix_chars_dropped"]]
    assert kept_suffix.endswith("\n") and kept_suffix.count("\n") < kept.count("\n")  # the prefix keeps more


def test_v1_completions_keeps_openais_400_unless_asked_to_fit(serve_fake) -> None:
    served = serve_fake(engine=FakeEngine(max_model_len=256, reply="1"))
    prefix = "".join(f"v{i} = {i}\n" for i in range(300)) + "x = "
    body = {"prompt": prefix, "suffix": "\nprint(x)\n", "max_tokens": 8}
    refused = httpx.post(served.url + "/v1/completions", json=body)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"
    fitted = httpx.post(served.url + "/v1/completions", json={**body, "fit_context": True})
    assert fitted.status_code == 200
    assert fitted.json()["truncation"]["prefix_chars_dropped"] > 0
    assert fitted.json()["usage"]["prompt_tokens"] <= 256 - 8
    # the Copilot route fits by default
    copilot = httpx.post(served.url + "/v1/engines/x/completions", json=body)
    assert copilot.status_code == 200 and "truncation" in copilot.json()


def test_a_cursor_line_longer_than_the_context_is_still_refused(serve_fake) -> None:
    served = serve_fake(engine=FakeEngine(max_model_len=128))
    body = {"input_prefix": "x = [" + ", ".join(str(i) for i in range(200)), "input_suffix": "]", "n_predict": 8}
    response = httpx.post(served.url + "/infill", json=body)
    error = response.json()["error"]
    assert response.status_code == 400 and "cursor" in error["message"] and error["param"] == "input_prefix"


def test_repository_context_uses_the_familys_tokens(serve_fake) -> None:
    served = serve_fake(engine=FakeEngine(reply="1"), model_id="starcoder2-7b")
    body = {"prompt": "x = ", "suffix": "\n", "max_tokens": 2, "filename": "src/main.py", "repo_name": "me/app",
            "input_extra": [{"filename": "src/util.py", "text": "def helper(): pass\n"}]}
    assert httpx.post(served.url + "/v1/completions", json=body).status_code == 200
    expected = ("<repo_name>me/app<file_sep>src/util.py\ndef helper(): pass\n<file_sep>"
                "<fim_prefix>src/main.py\nx = <fim_suffix>\n<fim_middle>")
    assert served.engine.prompts[-1] == served.engine.tokenize(expected)
