"""A bounded number of requests at once and a bounded queue behind them; beyond that, 429."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .errors import RETRY_AFTER_S, RateLimited


class Limiter:
    def __init__(self, max_concurrent: int, max_queued: int):
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self._slots = asyncio.Semaphore(max_concurrent)
        self.waiting = 0
        self.active = 0

    @property
    def full(self) -> bool:
        return self.active >= self.max_concurrent and self.waiting >= self.max_queued

    def refuse_if_full(self) -> None:
        if self.full:
            raise RateLimited(f"server is at capacity: {self.active} requests running and {self.waiting} "
                              f"queued (CODESERVE_MAX_CONCURRENT_REQUESTS={self.max_concurrent}, "
                              f"CODESERVE_MAX_QUEUED_REQUESTS={self.max_queued}); retry shortly",
                              headers={"Retry-After": str(RETRY_AFTER_S)})

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        self.refuse_if_full()
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self._slots.release()
