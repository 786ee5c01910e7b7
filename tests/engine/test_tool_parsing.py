"""vLLM's tool parser for every format the catalog names (and the generic prompt's): a scripted answer in the family's
format becomes the right calls, the same whether it arrives whole or cut into two chunks at any position."""

from __future__ import annotations

import json

import pytest

from server.engine.tool_parsing import ToolParserSession, known_parser
from server.generation.tool_reader import ParsedReader
from server.generation.tools import GENERIC_PARSER, CallStart, TextPiece
from server.planner.catalog import Catalog, load_catalog
from server.settings import DEFAULT_CATALOG_PATH

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
              "type": "object", "properties": {"city": {"type": "string"}}}}},
         {"type": "function", "function": {"name": "read_file", "parameters": {
             "type": "object", "properties": {"path": {"type": "string"},
                                              "lines": {"type": "array", "items": {"type": "integer"}}}}}}]
# Each parser's format (the model family's own, as its chat template asks for it), with two calls after some text.
SCRIPTED = {
    "hermes": ('I will check both.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
               '<tool_call>\n{"name": "read_file", "arguments": {"path": "a.py", "lines": [1, 2]}}\n</tool_call>'),
    # Qwen3-Coder's XML calls (its chat template; vLLM's qwen3_coder parser types each value by the tool's schema)
    "qwen3_coder": ("I will check both.<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
                    "</function>\n</tool_call>\n<tool_call>\n<function=read_file>\n<parameter=path>\na.py\n"
                    "</parameter>\n<parameter=lines>\n[1, 2]\n</parameter>\n</function>\n</tool_call>"),
}
EXPECTED = ("I will check both.",
            [("get_weather", {"city": "Paris"}), ("read_file", {"path": "a.py", "lines": [1, 2]})])
PARSERS = sorted({e.tool_parser for e in load_catalog(DEFAULT_CATALOG_PATH).models if e.tool_parser} | {GENERIC_PARSER})


class _Vocabulary:
    def get_vocab(self) -> dict[str, int]:
        return {}


def _read(parser: str, chunks: list[str]) -> tuple[str, list[tuple[str, dict]]]:
    reader = ParsedReader(ToolParserSession(parser, _Vocabulary(), TOOLS))
    events = [event for chunk in chunks for event in reader.feed(chunk)] + reader.close()
    text = "".join(e.text for e in events if isinstance(e, TextPiece))
    assert [e.name for e in events if isinstance(e, CallStart)] == [c.name for c in reader.calls]
    assert len({c.id for c in reader.calls}) == len(reader.calls)
    return text, [(c.name, json.loads(c.arguments)) for c in reader.calls]


def test_every_catalog_parser_is_one_vllm_ships_and_has_a_script(catalog: Catalog) -> None:
    for parser in PARSERS:
        assert known_parser(parser), parser
        assert parser in SCRIPTED, f"add {parser}'s format to SCRIPTED"


@pytest.mark.parametrize("parser", PARSERS)
def test_a_whole_answer(parser: str) -> None:
    assert _read(parser, [SCRIPTED[parser]]) == EXPECTED


@pytest.mark.parametrize("parser", PARSERS)
def test_an_answer_cut_at_every_position(parser: str) -> None:
    script = SCRIPTED[parser]
    for cut in range(1, len(script)):
        assert _read(parser, [script[:cut], script[cut:]]) == EXPECTED, cut


@pytest.mark.parametrize("parser", PARSERS)
def test_an_answer_token_by_token(parser: str) -> None:
    script = SCRIPTED[parser]
    assert _read(parser, [script[i:i + 3] for i in range(0, len(script), 3)]) == EXPECTED


def test_text_without_a_call_passes_whole() -> None:
    assert _read(GENERIC_PARSER, ["def f(x):\n", "    return x < 3"]) == ("def f(x):\n    return x < 3", [])
