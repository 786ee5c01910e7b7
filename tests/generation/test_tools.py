"""Tools into the prompt: through a template that renders them, or the generic prompt for any other template."""

from __future__ import annotations

import json

from server.generation.core import GenerationCore
from server.generation.served import ServedModel
from server.generation.tools import Tool, for_template, generic, unmatched_tool_result
from server.planner.catalog import Catalog
from tests.fake_engine import FakeEngine

TOOL = Tool("read_file", "Read a file", {"type": "object", "properties": {"path": {"type": "string"}}})
HISTORY = [
    {"role": "user", "content": "open a.py"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\": \"a.py\"}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "x = 1"},
]


def test_generic_prompt_describes_the_tools_and_writes_history_in_the_format_it_asks_for() -> None:
    messages = generic(HISTORY, (TOOL,))
    assert messages[0]["role"] == "system" and '"read_file"' in messages[0]["content"]
    assert "<tool_call>" in messages[0]["content"]
    call = messages[2]["content"]
    assert call.startswith("<tool_call>") and json.loads(call.split("\n")[1]) == {
        "name": "read_file", "arguments": {"path": "a.py"}}
    assert messages[3] == {"role": "user", "content": "<tool_response>\nx = 1\n</tool_response>"}


def test_generic_prompt_joins_an_existing_system_message() -> None:
    messages = generic([{"role": "system", "content": "Be brief."}, *HISTORY], (TOOL,))
    assert messages[0]["content"].startswith("Be brief.\n\n") and sum(m["role"] == "system" for m in messages) == 1


def test_a_template_that_renders_tools_gets_arguments_as_objects() -> None:
    assert for_template(HISTORY)[1]["tool_calls"][0]["function"]["arguments"] == {"path": "a.py"}


def test_a_tool_result_must_answer_an_earlier_call() -> None:
    assert unmatched_tool_result(HISTORY) is None
    assert unmatched_tool_result([*HISTORY, {"role": "tool", "tool_call_id": "c2", "content": ""}]) == 3
    assert unmatched_tool_result(HISTORY[2:]) == 0


def test_native_only_with_a_template_that_renders_tools_and_a_parser(catalog: Catalog) -> None:
    qwen = catalog.get("qwen2.5-coder-7b-instruct")
    bundled = catalog.bundled()
    assert qwen is not None and qwen.tool_parser == "hermes"

    def toolbox(entry, template: bool):  # type: ignore[no-untyped-def]
        engine = FakeEngine(tool_template=template)
        return GenerationCore(engine, ServedModel(entry.id, entry, engine.max_model_len)).toolbox.describe()

    assert toolbox(qwen, True) == {"tool_calls": "native", "tool_parser": "hermes"}
    assert toolbox(qwen, False) == {"tool_calls": "generic", "tool_parser": "hermes"}  # a template without tools
    assert toolbox(bundled, True) == {"tool_calls": "generic", "tool_parser": "hermes"}  # no parser known
