"""A hole trimmed to fit the context instead of refused, as editors send whatever surrounds the cursor.

Trimming order: other files first, oldest first (llama.cpp's server also keeps the newest extra context), then
the far end of the prefix, then the far end of the suffix, always whole lines, never the cursor's own line.
What was cut is reported back (`Truncation`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from ..errors import ContextLengthExceeded
from .prompt import Hole

DEFAULT_RESERVE_TOKENS = 256  # room kept for the completion when trimming and the client set no limit
FIT_ROUNDS = 12  # each round re-tokenizes once; the cut grows with the measured excess, so few are needed


@dataclass(frozen=True)
class Truncation:
    """What trimming removed so the prompt fits."""

    extra_files_dropped: int
    prefix_chars_dropped: int
    suffix_chars_dropped: int
    prompt_tokens_before: int
    prompt_tokens: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)



def fit(hole: Hole, tokens_of: Callable[[Hole], int], limit: int) -> tuple[Hole, Truncation | None]:
    """`hole` trimmed until its prompt is at most `limit` tokens; ContextLengthExceeded when even the cursor's
    own lines are too long. Order: other files (oldest first), the prefix's far end down to its share of the
    context, the suffix's far end, then the prefix further. The share follows llama.cpp's server, which gives
    the prefix 3/4 of the room and the suffix 1/4 (server.cpp, format_infill)."""
    before = count = tokens_of(hole)
    current = hole
    for step in (_drop_files, _prefix_to_share, _trim_suffix, _trim_prefix):
        for _ in range(FIT_ROUNDS):
            if count <= limit:
                break
            trimmed = step(current, count - limit, _chars_per_token(current, count), limit)
            if trimmed == current:
                break  # this part has nothing more to give
            current, count = trimmed, tokens_of(trimmed)
    if count > limit:
        raise ContextLengthExceeded(
            f"the prompt is {count} tokens after dropping every other file and all but the cursor's line of the "
            f"prefix and suffix, over the {limit} this model's context leaves for it; send a shorter cursor "
            "line or ask for fewer tokens", param=hole.prefix_field)
    if current is hole:
        return hole, None
    return current, Truncation(len(hole.extra) - len(current.extra), len(hole.prefix) - len(current.prefix),
                               len(hole.suffix) - len(current.suffix), before, count)


PREFIX_SHARE = 0.75


def bounded(hole: Hole, room_chars: int) -> Hole:
    """No token covers more than the tokenizer's longest token's characters: text beyond the room's worth of
    them cannot fit, so it is cut by characters before the tokenizer sees it (megabytes would hold a CPU)."""
    if len(hole.prefix) > room_chars:
        hole = replace(hole, prefix=hole.prefix[len(hole.prefix) - room_chars:])
    if len(hole.suffix) > room_chars:
        hole = replace(hole, suffix=hole.suffix[:room_chars])
    return hole


def _chars_per_token(hole: Hole, tokens: int) -> float:
    chars = len(hole.prefix) + len(hole.suffix) + sum(len(f.text) + len(f.filename) for f in hole.extra)
    return max(1.0, chars / max(tokens, 1))


def _drop_files(hole: Hole, excess: int, per_token: float, limit: int) -> Hole:
    dropped, chars = 0, 0.0
    while dropped < len(hole.extra) and chars < excess * per_token:
        chars += len(hole.extra[dropped].text) + len(hole.extra[dropped].filename)
        dropped += 1
    return replace(hole, extra=hole.extra[dropped:])


def _prefix_to_share(hole: Hole, excess: int, per_token: float, limit: int) -> Hole:
    above_share = len(hole.prefix) / per_token - PREFIX_SHARE * limit
    return _trim_prefix(hole, min(excess, int(above_share)), per_token, limit) if above_share > 0 else hole


def _trim_prefix(hole: Hole, excess: int, per_token: float, limit: int) -> Hole:
    """Whole lines off the prefix's start, about `excess` tokens' worth; the cursor's line stays."""
    keep_from = hole.prefix.rfind("\n") + 1
    if keep_from == 0 or excess <= 0:
        return hole
    at = hole.prefix.find("\n", min(int(excess * per_token), keep_from - 1))
    return replace(hole, prefix=hole.prefix[at + 1:])


def _trim_suffix(hole: Hole, excess: int, per_token: float, limit: int) -> Hole:
    """Whole lines off the suffix's end, about `excess` tokens' worth; the rest of the cursor's line stays."""
    keep_to = hole.suffix.find("\n")
    if keep_to < 0 or keep_to == len(hole.suffix) - 1:
        return hole
    at = hole.suffix.rfind("\n", keep_to, max(keep_to + 1, len(hole.suffix) - int(excess * per_token)))
    return replace(hole, suffix=hole.suffix[:max(at, keep_to) + 1])
