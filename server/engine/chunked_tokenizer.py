"""Tokenizing a long prompt by line chunks, each chunk once: a typist's next keystroke resends the same ~1.5k-token
file with two more characters, and tokenizing all of it again cost ~3.6 ms on 2 cores (6,000 characters, the
`tokenizers` library), on the path to the first token, while the engine waits for the same cores.

A prompt is cut only where the tokenizer's pre-tokenizer always puts a boundary, so the chunks' tokens are the whole
text's. Byte-level BPE tokenizers split text into pieces by a regular expression before merging, and no token
crosses a piece. GPT-2's expression (the `ByteLevel` pre-tokenizer: SmolLM2, StarCoder2), Llama 3's and Qwen2's
(`Split` + `ByteLevel`) and DeepSeek's all start a piece at:
- a line start whose first character is not whitespace, after a single line break that follows visible text;
- the last indentation character of a line that starts with a letter or punctuation (`\\s+(?!\\S)` leaves it to
  join the word after it, or takes it alone).
Text on either side of such a cut is split the same way alone as within the whole. SentencePiece-style tokenizers
(a normalizer or `Metaspace`, which marks the text's start) are tokenized whole, as is any tokenizer whose chunked
tokens differ from its whole tokens on the probe text at start (checked once per tokenizer).
tests/engine/test_chunked_tokenizer.py tries every candidate cut on real code and on random whitespace, digits and
non-ASCII text under five families' pre-tokenizers (DeepSeek's own tokenizer.json among them).

Chunks are chosen by content (a cut is taken where the next line's hash says so), so after an edit the cuts below it
are the same as before and only the chunk holding the edit is tokenized again."""

from __future__ import annotations

import collections
import json
import re
import threading
import zlib
from typing import Any

# Below this a prompt is tokenized whole: a FIM marker, a chat turn, a short file (tokenizing 2,000 characters
# costs ~1 ms)
MIN_CHUNKED_CHARS = 2048
# A cut is taken at one candidate in CUT_EVERY (by the hash of the line after it): chunks of ~4 lines
CUT_EVERY = 4
CACHED_CHUNKS = 4096  # ~64 typists' 1.5k-token files
# After a line break that follows visible text, where the line starts visibly; or before an indented line's last
# indentation character, where the line starts with an ASCII letter or punctuation (StarCoder2's Digits splitter
# isolates a digit from the space before it, which then joins the indentation). Led by the literal line break, the
# scan takes ~60 us over 6,000 characters (~240 us with the lookbehind first).
_CUT = re.compile(r"\n(?:(?<=\S\n)(?=\S)|[ \t]*(?=[ \t][A-Za-z_!-/:-@\[-`{-~]))")
_PIECE_SPLITTERS = {"ByteLevel", "Split", "Digits"}
# Whitespace, indentation, blank lines, tabs, CRLF, digits, punctuation, non-ASCII text and both cut kinds: the
# probe a tokenizer's chunked tokens must match its whole tokens on before its prompts are chunked.
PROBE = ("import os\n\n\nclass Café(object):\n    '''Ünïcode — 名前 \"quoted\"'''\n\n    def run(self, n=12345):\n"
         "\tif n:\n\t\treturn [x ** 2 for x in range(n)]  # 1,000,000\n  \n    x = {'a': 1}\r\n    y = 2\r\n"
         "}\n  })\n    // comment\n#define X 1\n    \n\n\tdone();\nend\n    1.5e10\n   ...\n") * 8


class ChunkedTokenizer:
    """A `tokenizers.Tokenizer` (Transformers' fast tokenizers hold one) whose long prompts are tokenized by line
    chunks, each kept for its next use; the ids are exactly the whole text's (see the module's notes)."""

    def __init__(self, backend: Any, cached_chunks: int = CACHED_CHUNKS):
        self.backend = backend
        self._cache: collections.OrderedDict[tuple[str, bool], list[int]] = collections.OrderedDict()
        self._size = cached_chunks
        self._lock = threading.Lock()  # prompts are tokenized on worker threads
        self.chunked = splits_at_line_cuts(backend) and all(
            self._by_chunks(PROBE, special) == self._whole(PROBE, special) for special in (True, False))
        self._cache.clear()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if self.chunked and len(text) >= MIN_CHUNKED_CHARS:
            return self._by_chunks(text, add_special_tokens)
        return self._whole(text, add_special_tokens)

    def _whole(self, text: str, special: bool) -> list[int]:
        return list(self.backend.encode(text, add_special_tokens=special).ids)

    def _by_chunks(self, text: str, special: bool) -> list[int]:
        ids: list[int] = []
        start = 0
        for end in [*cuts(text), len(text)]:
            ids += self._chunk(text[start:end], special and start == 0)
            start = end
        return ids

    def _chunk(self, chunk: str, special: bool) -> list[int]:
        key = (chunk, special)
        with self._lock:
            ids = self._cache.get(key)
            if ids is not None:
                self._cache.move_to_end(key)
                return ids
        ids = self._whole(chunk, special)
        with self._lock:
            self._cache[key] = ids
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return ids


def cuts(text: str) -> list[int]:
    """The positions a long prompt is cut at: line-cut candidates (module notes) taken by the hash of the ~40
    characters after each, so the same text around a cut gives the same cut wherever it sits in the prompt."""
    return [m.end() for m in _CUT.finditer(text)
            if zlib.crc32(text[m.end():m.end() + 40].encode("utf-8", "surrogatepass")) % CUT_EVERY == 0]


def splits_at_line_cuts(backend: Any) -> bool:
    """Whether the tokenizer's configuration is one the module's cut rule holds for: no normalizer, pieces split
    by regular expressions (ByteLevel / Split / Digits) with no space added at the text's start, and no added token
    that swallows the whitespace beside it or holds a line break."""
    config = json.loads(backend.to_str())
    normalizer = config.get("normalizer")
    if normalizer and not (normalizer.get("type") == "Sequence" and not normalizer.get("normalizers")):
        return False
    pre = config.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if not parts or any(p.get("type") not in _PIECE_SPLITTERS or p.get("add_prefix_space") for p in parts):
        return False
    if not any(p.get("type") == "ByteLevel" for p in parts):
        return False
    # an added token is matched in the whole text before pre-tokenizing: one that spans a line break could be cut
    return not any(t.get("lstrip") or t.get("rstrip") or "\n" in str(t.get("content", ""))
                   for t in config.get("added_tokens") or [])


def chunked_for_transformers(tokenizer: Any) -> ChunkedTokenizer | None:
    """A ChunkedTokenizer over a Transformers fast tokenizer's `tokenizers.Tokenizer`, where that gives the same ids
    as the Transformers tokenizer on the probe (a slow tokenizer, or one that changes text in Python, has none)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    chunked = ChunkedTokenizer(backend)
    same = all(chunked.encode(PROBE, special) == list(tokenizer.encode(PROBE, add_special_tokens=special))
               for special in (True, False))
    return chunked if chunked.chunked and same else None
