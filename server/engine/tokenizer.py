"""What generation reads off an engine's tokenizer (engine/base.py's vocab_size, max_token_chars, special_tokens),
computed the same way for every engine: each holds a Transformers tokenizer (vLLM hands out the same kind)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TokenizerFacts:
    vocab_size: int  # token ids run from 0 to vocab_size - 1, added tokens included
    max_token_chars: int  # the longest text one token stands for
    special_tokens: frozenset[str]  # named special tokens and added tokens marked special (template markers)


def tokenizer_facts(tokenizer: Any) -> TokenizerFacts:
    # Vocabulary keys spell a token's bytes (byte-level BPE) or characters (SentencePiece): never fewer
    # characters than the token's text, so the longest key bounds the characters one token can cover.
    max_token_chars = max(len(token) for token in tokenizer.get_vocab())
    added = getattr(tokenizer, "added_tokens_decoder", {}).values()
    special = frozenset(tokenizer.all_special_tokens) | {t.content for t in added if getattr(t, "special", False)}
    return TokenizerFacts(len(tokenizer), max_token_chars, special)
