"""Chat on a model that cannot format messages is the client's 400, not a server error: a model without a chat
template (a base model, a fine-tune saved without one) names the model and the way out; a template that refuses the
messages (raise_exception) names 'messages'. CODESERVE_CHAT_TEMPLATE gives such a model one, as vLLM's
--chat-template does. Served by the real Transformers engine over a tiny CodeGen model with the bundled tokenizer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.engine.hf import TransformersEngine
from server.planner.catalog import Catalog
from server.prepare import prepare_bundled
from tests.api.conftest import Served
from tests.conftest import make_settings
from tests.engine.test_hf import launch_for
from tests.serverutil import openai_error
from tests.tiny_models import build

CHAT = {"messages": [{"role": "user", "content": "write a add function"}], "max_tokens": 4, "temperature": 0}
ALPACA = ("{% for m in messages %}{% if m['role'] == 'user' %}### Instruction:\n{{ m['content'] }}\n\n"
          "{% endif %}{% endfor %}### Response:\n")


@pytest.fixture(scope="module")
def untemplated(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog) -> Path:
    tokenizer = prepare_bundled(make_settings().cache_dir, catalog.bundled())
    path = build("codegen", tmp_path_factory.mktemp("chat") / "tiny-codegen", tokenizer)
    (path / "chat_template.jinja").unlink(missing_ok=True)  # saved as a base model is: no chat template
    config = json.loads((path / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


@pytest.fixture
def engine(untemplated: Path) -> Iterator[TransformersEngine]:
    started = TransformersEngine.start(launch_for(untemplated))
    yield started
    asyncio.run(started.shutdown())


def test_chat_on_a_model_without_a_chat_template_is_a_400_naming_the_model(serve_fake, engine) -> None:
    served: Served = serve_fake(engine=engine, model_id="codegen-350m-mono")
    error = openai_error(httpx.post(served.url + "/v1/chat/completions", json=CHAT, timeout=60), 400)
    assert error["param"] == "model" and "no chat template" in error["message"]
    assert "CODESERVE_CHAT_TEMPLATE" in error["message"] and "/v1/completions" in error["message"]
    assert httpx.post(served.url + "/v1/completions", json={"prompt": "x =", "max_tokens": 2}).status_code == 200


def test_a_template_that_refuses_the_messages_is_a_400_naming_them(serve_fake, engine) -> None:
    engine._tokenizer.chat_template = "{{ raise_exception('Conversation roles must alternate user/assistant') }}"
    served: Served = serve_fake(engine=engine, model_id="codegen-350m-mono")
    error = openai_error(httpx.post(served.url + "/v1/chat/completions", json=CHAT, timeout=60), 400)
    assert error["param"] == "messages" and "roles must alternate" in error["message"]


def test_the_chat_template_setting_gives_the_model_one(serve_fake, engine, tmp_path: Path) -> None:
    template = tmp_path / "alpaca.jinja"
    template.write_text(ALPACA)
    served: Served = serve_fake(engine=engine, model_id="codegen-350m-mono", chat_template=str(template))
    response = httpx.post(served.url + "/v1/chat/completions", json=CHAT, timeout=60)
    assert response.status_code == 200
    # the file's format, not a default's (Jinja drops a template's final newline)
    rendered = "### Instruction:\nwrite a add function\n\n### Response:"
    assert response.json()["usage"]["prompt_tokens"] == len(engine.tokenize(rendered, add_special_tokens=False))


def test_an_inline_template_works_and_a_missing_file_is_refused_naming_the_setting(tmp_path: Path) -> None:
    from pydantic import ValidationError

    assert make_settings(chat_template=ALPACA).chat_template_text() == ALPACA
    with pytest.raises(ValidationError, match="chat_template"):
        make_settings(chat_template=str(tmp_path / "missing.jinja"))
