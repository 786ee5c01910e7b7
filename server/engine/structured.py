"""Structured output checked before a request runs: a constraint the grammar engine cannot compile is the client's
400, naming the field, not an engine failure after the stream's 200.

xgrammar is the backend vLLM picks first ("auto", vllm/v1/structured_output); it ships with vLLM's builds and
compiles JSON schemas, regular expressions and EBNF grammars without a tokenizer, which is all a check needs.
"""

from __future__ import annotations

import json
import re

from ..errors import InvalidRequest
from .base import StructuredOutput

_SOURCE = re.compile(r"^\[[0-9:]+\] \S+:\d+: ")  # xgrammar's "[time] file.cc:line: " before the reason


def check_structured(structured: StructuredOutput) -> None:
    import xgrammar

    try:
        if structured.json_schema is not None:
            xgrammar.Grammar.from_json_schema(json.dumps(structured.json_schema))
        elif structured.regex is not None:
            xgrammar.Grammar.from_regex(structured.regex)
        elif structured.grammar is not None:
            xgrammar.Grammar.from_ebnf(structured.grammar)
    except Exception as exc:  # xgrammar raises RuntimeError / ValueError with the position of the problem
        reason = _SOURCE.sub("", str(exc).strip())[:500]
        field = structured.param or "structured_outputs"
        raise InvalidRequest(f"'{field}' cannot be compiled into a grammar: {reason}", param=field) from exc
