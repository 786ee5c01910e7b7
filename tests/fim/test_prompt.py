"""A hole as the family's prompt (repository formats) and trimming to fit, with characters as tokens."""

from __future__ import annotations

from typing import Any

import pytest

from server.errors import ContextLengthExceeded
from server.fim.fit import fit
from server.fim.prompt import ExtraFile, Hole, HoleFormat
from server.fim.templates import TEMPLATES


class _Codec:
    """A tokenizer with every character a token, except the markers it has as single tokens."""

    def __init__(self, split: tuple[str, ...] = ()):
        self.split = split

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [1] if text not in self.split and text.startswith("<") else [ord(c) for c in text]

    def chat_text(self, messages: list[dict[str, Any]]) -> str:
        raise AssertionError("no chat here")


QWEN = HoleFormat.for_model(TEMPLATES["qwen"], _Codec(), chat=False)
LINES = "".join(f"line {i:03d}\n" for i in range(100))  # 9 characters a line


def _tokens(hole: Hole) -> int:
    return len(QWEN.text(hole))


def test_repository_format_only_where_the_tokenizer_has_its_markers() -> None:
    assert HoleFormat.for_model(TEMPLATES["qwen"], _Codec(), chat=False).repo is not None
    assert HoleFormat.for_model(TEMPLATES["qwen"], _Codec(split=("<|file_sep|>",)), chat=False).repo is None
    assert HoleFormat.for_model(TEMPLATES["deepseek"], _Codec(), chat=False).repo is None  # no repository tokens


def test_qwen_repository_prompt() -> None:
    hole = Hole("x = ", "\n", (ExtraFile("a.py", "A = 1"),), "b.py", "me/app")
    assert QWEN.text(hole) == ("<|repo_name|>me/app\n<|file_sep|>a.py\nA = 1\n<|file_sep|>b.py\n"
                               "<|fim_prefix|>x = <|fim_suffix|>\n<|fim_middle|>")
    assert QWEN.text(Hole("x = ", "\n")) == TEMPLATES["qwen"].prompt("x = ", "\n")  # one file: file-level format


def test_a_prompt_that_fits_is_left_alone() -> None:
    hole = Hole(LINES, LINES)
    assert fit(hole, _tokens, 10_000) == (hole, None)


def test_other_files_go_first_oldest_first() -> None:
    extra = tuple(ExtraFile(f"f{i}.py", "x" * 100) for i in range(5))
    hole = Hole("a = ", "\n", extra)
    trimmed, cut = fit(hole, _tokens, _tokens(hole) - 150)
    assert cut is not None and cut.extra_files_dropped == 2 and trimmed.extra == extra[2:]
    assert (cut.prefix_chars_dropped, cut.suffix_chars_dropped) == (0, 0)


def test_the_prefix_gives_down_to_its_share_then_the_suffix() -> None:
    hole = Hole(LINES + "value = ", "\n" + LINES)
    limit = 1000
    trimmed, cut = fit(hole, _tokens, limit)
    assert cut is not None and cut.prompt_tokens <= limit and cut.prompt_tokens_before == _tokens(hole)
    assert trimmed.prefix.endswith("value = ") and trimmed.prefix.startswith("line ")  # whole lines
    assert trimmed.suffix.startswith("\nline 000") and trimmed.suffix.endswith("\n")
    assert 0.6 * limit < len(trimmed.prefix) < 0.8 * limit  # about 3/4 of the room
    assert cut.suffix_chars_dropped > 0


def test_the_cursor_lines_stay_or_the_request_is_refused() -> None:
    hole = Hole(LINES + "value = ", "\n" + LINES)
    trimmed, _ = fit(hole, _tokens, 60)
    assert trimmed.prefix == "value = " and trimmed.suffix == "\n"
    with pytest.raises(ContextLengthExceeded, match="cursor"):
        fit(Hole("x" * 500, ""), _tokens, 100)
