"""Answers read as tool calls while they stream: a forced `required` array call by call, whatever the chunks."""

from __future__ import annotations

import json

from server.generation.tool_reader import RequiredReader
from server.generation.tools import CallArguments, CallStart

# Compact, as the constrained engine writes it; strings holding brackets, quotes and escapes.
RAW = ('[{"name":"read_file","parameters":{"path":"a}[b\\"c","n":[1,{"x":2}]}},'
       '{"name":"grep","parameters":{"pattern":"q"}}]')
CALLS = [("read_file", {"path": 'a}[b"c', "n": [1, {"x": 2}]}), ("grep", {"pattern": "q"})]


def _read(chunks: list[str]) -> tuple[RequiredReader, list]:
    reader = RequiredReader()
    events = [e for chunk in chunks for e in reader.feed(chunk)] + reader.close()
    return reader, events


def test_required_calls_stream_call_by_call_at_any_cut() -> None:
    for cut in range(1, len(RAW)):
        reader, events = _read([RAW[:cut], RAW[cut:]])
        assert [(c.name, json.loads(c.arguments)) for c in reader.calls] == CALLS, cut
        assert [e.name for e in events if isinstance(e, CallStart)] == ["read_file", "grep"]


def test_a_call_starts_before_its_arguments_end() -> None:
    reader = RequiredReader()
    events = reader.feed(RAW[:RAW.index('"n"')])
    assert isinstance(events[0], CallStart) and events[0].name == "read_file"
    assert "".join(e.text for e in events if isinstance(e, CallArguments)) == '{"path":"a}[b\\"c",'


def test_an_answer_cut_before_any_call_is_text() -> None:
    reader, _ = _read(['[{"na'])
    assert reader.calls == [] and reader.content == '[{"na'
