"""How much runs at once and how much may wait, counted in sequences (prompts x n: what the engine batches),
with a bounded queue behind; beyond that, 429 with Retry-After. First come, first served; a waiter that
leaves (its client disconnected) gives up its place at once."""

from __future__ import annotations

import asyncio
from collections import deque

from ..errors import InvalidRequest
from .errors import RETRY_AFTER_S, RateLimited


class Limiter:
    def __init__(self, max_concurrent: int, max_queued: int):
        self.max_concurrent = max_concurrent  # sequences running at once
        self.max_queued = max_queued  # requests waiting
        self.active = 0  # sequences running
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _refuse(self, sequences: int) -> None:
        if sequences > self.max_concurrent:
            raise InvalidRequest(f"the request asks for {sequences} sequences (prompts x n) at once; this server runs "
                                 f"at most {self.max_concurrent} (CODESERVE_MAX_CONCURRENT_REQUESTS): lower n or "
                                 "send fewer prompts per request", param="n")
        if self.active + sequences > self.max_concurrent and self.waiting >= self.max_queued:
            raise RateLimited(f"server is at capacity: {self.active} sequences running and {self.waiting} requests "
                              f"queued (CODESERVE_MAX_CONCURRENT_REQUESTS={self.max_concurrent} sequences, "
                              f"CODESERVE_MAX_QUEUED_REQUESTS={self.max_queued}); retry shortly",
                              headers={"Retry-After": str(RETRY_AFTER_S)})

    async def acquire(self, sequences: int = 1) -> None:
        """Take `sequences` places, waiting in line if needed; 429 when the line is full too."""
        self._refuse(sequences)
        if not self._waiters and self.active + sequences <= self.max_concurrent:
            self.active += sequences
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (sequences, waiter)
        self._waiters.append(entry)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():  # granted just as it was cancelled: hand it back
                self.release(sequences)
            else:
                self._waiters.remove(entry)
                self._wake()
            raise

    def release(self, sequences: int = 1) -> None:
        self.active -= sequences
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.active + self._waiters[0][0] <= self.max_concurrent:
            sequences, waiter = self._waiters.popleft()
            self.active += sequences
            waiter.set_result(None)
