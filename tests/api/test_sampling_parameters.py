"""Every sampling parameter a request sends reaches the engine, or the request is refused naming it: nothing
accepted and then ignored (vLLM's extra parameters, OpenAI's logit_bias and response_format, llama.cpp's)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from server.engine.base import StructuredOutput
from tests.api.conftest import Served
from tests.serverutil import openai_error

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
# (request field, value, SamplingSettings field, what the engine gets)
OPENAI_EXTRAS = [
    ("top_k", 5, "top_k", 5),
    ("min_p", 0.1, "min_p", 0.1),
    ("repetition_penalty", 1.2, "repetition_penalty", 1.2),
    ("min_tokens", 3, "min_tokens", 3),
    ("ignore_eos", True, "ignore_eos", True),
    ("logit_bias", {"5": 2.5, "9": -100}, "logit_bias", ((5, 2.5), (9, -100.0))),
    ("stop_token_ids", [7, 8], "stop_token_ids", (7, 8)),
    ("allowed_token_ids", [1, 2, 3], "allowed_token_ids", (1, 2, 3)),
    ("bad_words", ["foo"], "bad_words", ("foo",)),
    ("skip_special_tokens", False, "skip_special_tokens", False),
    ("spaces_between_special_tokens", False, "spaces_between_special_tokens", False),
    ("include_stop_str_in_output", True, "include_stop_str_in_output", True),
    ("response_format", {"type": "json_object"}, "structured", StructuredOutput(json_object=True,
                                                                                param="response_format")),
    ("response_format", {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA, "strict": True}},
     "structured", StructuredOutput(json_schema=SCHEMA, param="response_format.json_schema")),
    ("response_format", {"type": "text"}, "structured", None),
    ("structured_outputs", {"choice": ["yes", "no"]}, "structured",
     StructuredOutput(choice=("yes", "no"), param="structured_outputs.choice")),
    ("structured_outputs", {"regex": "[0-9]+"}, "structured",
     StructuredOutput(regex="[0-9]+", param="structured_outputs.regex")),
]
ROUTES = {"completions": ("/v1/completions", {"prompt": "def f(", "max_tokens": 4}),
          "chat": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})}


def _post(served: Served, route: str, **fields: Any) -> httpx.Response:
    path, body = ROUTES[route]
    return httpx.post(served.url + path, json={**body, **fields}, timeout=30)


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize(("field", "value", "setting", "expected"), OPENAI_EXTRAS,
                         ids=[f"{f}={v}" if not isinstance(v, dict) else f for f, v, _, _ in OPENAI_EXTRAS])
def test_each_parameter_reaches_the_engine(fake: Served, route: str, field: str, value: Any, setting: str,
                                           expected: Any) -> None:
    response = _post(fake, route, **{field: value})
    assert response.status_code == 200, response.text
    assert getattr(fake.engine.samplings[-1], setting) == expected


@pytest.mark.parametrize("route", list(ROUTES))
def test_an_unknown_field_is_refused_by_name(fake: Served, route: str) -> None:
    error = openai_error(_post(fake, route, frobnicate=1), 400)
    assert error["param"] == "frobnicate" and error["code"] == "unsupported_field"
    assert "frobnicate" in error["message"]
    assert fake.engine.samplings == []  # never reached the engine


@pytest.mark.parametrize("route", list(ROUTES))
def test_fields_that_change_nothing_are_accepted_by_name(fake: Served, route: str) -> None:
    response = _post(fake, route, metadata={"a": "b"}, store=False, service_tier="auto", prompt_cache_key="k",
                     safety_identifier="u")
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("fields", "param"), [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"structured_outputs": {"regex": "[a-"}}, "structured_outputs.regex"),
    ({"structured_outputs": {"grammar": "root ::= missing"}}, "structured_outputs.grammar"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "a"}, "response_format": {"type": "json_object"}}, "body"),
    ({"logit_bias": {"12345678901": 1}}, "logit_bias"),
    ({"logit_bias": {"x": 1}}, "logit_bias"),
    ({"logit_bias": {"5": 101}}, "logit_bias.5"),
    ({"stop_token_ids": [-1]}, "stop_token_ids"),
    ({"top_k": -2}, "top_k"),
    ({"min_p": 1.5}, "min_p"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
], ids=lambda v: v if isinstance(v, str) else next(iter(v)))
def test_bad_parameters_are_400s_naming_the_field(fake: Served, fields: dict[str, Any], param: str) -> None:
    for route in ROUTES:
        error = openai_error(_post(fake, route, **fields), 400)
        assert error["param"] == param, error
    assert fake.engine.samplings == []


def test_copilot_fields_are_accepted(fake: Served) -> None:
    response = httpx.post(fake.url + "/v1/engines/copilot-codex/completions", json={
        "prompt": "def f(", "suffix": "\n", "max_tokens": 4, "extra": {"language": "python"}, "nwo": "me/repo",
        "code_annotations": True})
    assert response.status_code == 200, response.text


LLAMACPP = {"input_prefix": "def f(", "input_suffix": "):\n", "n_predict": 4}


def test_llamacpp_sampling_reaches_the_engine(fake: Served) -> None:
    body = {**LLAMACPP, "top_k": 7, "min_p": 0.2, "repeat_penalty": 1.1, "presence_penalty": 0.5,
            "frequency_penalty": 0.25, "ignore_eos": True, "json_schema": SCHEMA,
            # what llama.vscode sends that changes nothing here
            "samplers": ["top_k", "top_p", "infill"], "cache_prompt": True, "t_max_prompt_ms": 500, "model": ""}
    response = httpx.post(fake.url + "/infill", json=body)
    assert response.status_code == 200, response.text
    sampling = fake.engine.samplings[-1]
    assert (sampling.top_k, sampling.min_p, sampling.repetition_penalty, sampling.presence_penalty,
            sampling.frequency_penalty, sampling.ignore_eos) == (7, 0.2, 1.1, 0.5, 0.25, True)
    assert sampling.structured == StructuredOutput(json_schema=SCHEMA, param="json_schema")


def test_llamacpp_defaults_are_llamacpps(fake: Served) -> None:
    assert httpx.post(fake.url + "/completion", json={"prompt": "x", "n_predict": 2}).status_code == 200
    sampling = fake.engine.samplings[-1]
    assert (sampling.top_k, sampling.min_p, sampling.temperature, sampling.top_p) == (40, 0.05, 0.8, 0.95)


@pytest.mark.parametrize(("fields", "param"), [
    ({"mirostat": 2}, "mirostat"), ({"typical_p": 0.5}, "typical_p"), ({"dry_multiplier": 0.8}, "dry_multiplier"),
    ({"grammar": "root ::= nothing"}, "grammar"), ({"json_schema": {"type": 5}}, "json_schema"),
])
def test_llamacpp_parameters_not_implemented_are_refused(fake: Served, fields: dict[str, Any], param: str) -> None:
    error = openai_error(httpx.post(fake.url + "/completion", json={"prompt": "x", **fields}), 400)
    assert error["param"] == param
    assert fake.engine.samplings == []
