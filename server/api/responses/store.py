"""Stored Responses: what `previous_response_id` continues and GET /v1/responses/{id} returns. They live in this
process's memory, bounded in number (the oldest is evicted first) and in age (CODESERVE_RESPONSES_STORE_MAX and
CODESERVE_RESPONSES_STORE_TTL_S); with several replicas a client must come back to the one that answered (README,
"Responses API"). Thread-safe: requests are converted off the event loop."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stored:
    """One stored response: its conversation as chat messages (every earlier turn's input and output, then its own
    answer; never the instructions, which OpenAI does not carry over) and the response body GET returns. A
    conversation shares its earlier messages (the same dicts) with the response it continued: never mutate them."""

    id: str
    conversation: tuple[dict[str, Any], ...]
    response: dict[str, Any]


class ResponseStore:
    def __init__(self, max_count: int, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        if max_count < 1 or ttl_s <= 0:
            raise ValueError(f"a store needs room for one response and a positive lifetime, got {max_count}, {ttl_s}")
        self.max_count = max_count
        self.ttl_s = ttl_s
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, Stored]] = OrderedDict()  # oldest first

    def put(self, stored: Stored) -> None:
        with self._lock:
            now = self.clock()
            self._expire(now)
            self._entries.pop(stored.id, None)
            self._entries[stored.id] = (now, stored)
            while len(self._entries) > self.max_count:
                self._entries.popitem(last=False)

    def get(self, response_id: str) -> Stored | None:
        """The response, or None when it was never stored, was evicted, deleted or has expired."""
        with self._lock:
            self._expire(self.clock())
            entry = self._entries.get(response_id)
            return entry[1] if entry is not None else None

    def delete(self, response_id: str) -> bool:
        with self._lock:
            self._expire(self.clock())
            return self._entries.pop(response_id, None) is not None

    def __len__(self) -> int:
        with self._lock:
            self._expire(self.clock())
            return len(self._entries)

    def _expire(self, now: float) -> None:
        # Entries are kept in the order they were stored, so the expired ones are the first ones.
        while self._entries:
            stored_at, _ = next(iter(self._entries.values()))
            if now - stored_at < self.ttl_s:
                break
            self._entries.popitem(last=False)
