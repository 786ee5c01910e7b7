"""The tokenizer facts both engines publish, on the bundled model's real tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.engine.tokenizer import tokenizer_facts
from server.planner.catalog import Catalog
from server.prepare import prepare_bundled
from tests.conftest import make_settings


@pytest.fixture
def tokenizer(catalog: Catalog):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    directory: Path = prepare_bundled(make_settings().cache_dir, catalog.bundled())
    return AutoTokenizer.from_pretrained(directory)


def test_no_token_stands_for_more_characters_than_max_token_chars(tokenizer) -> None:  # type: ignore[no-untyped-def]
    facts = tokenizer_facts(tokenizer)
    assert facts.vocab_size == len(tokenizer)
    texts = tokenizer.batch_decode([[token] for token in range(facts.vocab_size)])
    assert max(len(text) for text in texts) <= facts.max_token_chars  # what the generation core's bound relies on


def test_added_tokens_marked_special_count_as_special(tokenizer) -> None:  # type: ignore[no-untyped-def]
    from transformers import AddedToken

    tokenizer.add_tokens([AddedToken("<fim_hole_x>", special=True), AddedToken("plain_added", special=False)])
    facts = tokenizer_facts(tokenizer)
    assert "<fim_hole_x>" in facts.special_tokens and "plain_added" not in facts.special_tokens
    assert set(tokenizer.all_special_tokens) <= facts.special_tokens and facts.vocab_size == len(tokenizer)
