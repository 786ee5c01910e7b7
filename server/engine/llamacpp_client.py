"""llama-server's native `/completion` as a stream of JSON events, over aiohttp: one request per stream, its
connection closed to cancel it (llama-server polls the connection while it streams and frees the slot,
server-context.cpp `should_stop`).

aiohttp, not httpx: on this path every keystroke opens a stream and closes it at the first token, and httpx's
layers (anyio, httpcore, h11 in Python) cost 5-7 ms of CPU per such request on 2 cores against aiohttp's ~2 ms
(C parser), measured against the same llama-server; the cores are the ones llama-server computes the token on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

CONNECT_TIMEOUT_S = 5.0  # a local child; no overall timeout: a long generation streams for minutes


class Refused(Exception):
    """llama-server answered with an error status instead of a stream."""

    def __init__(self, status: int, text: str):
        super().__init__(f"llama-server answered {status}")
        self.status, self.text = status, text


class Unreachable(Exception):
    """The connection failed or broke mid-stream (the child died, or closed it)."""


class CompletionClient:
    """Streams of `/completion` events from llama-server at `url`. The session is opened on first use, on the event
    loop that serves requests (the engine is built on a worker thread, outside it)."""

    def __init__(self, url: str, max_event_bytes: int):
        self.url = url
        # The last event carries the whole prompt as text: a line may be the context's worth of JSON-escaped text
        # (aiohttp refuses lines over twice its read buffer)
        self._read_bufsize = max(2**16, max_event_bytes // 2)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _current(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            self._session = aiohttp.ClientSession(
                self.url, connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
                read_bufsize=self._read_bufsize)
            self._loop = loop
        return self._session

    async def events(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Each `data:` event of the stream, parsed; Refused for an error status, Unreachable when the connection
        fails or ends before the stream does. Closing the iterator (or cancelling its task) closes the connection."""
        try:
            async with self._current().post("/completion", json=body) as response:
                try:
                    if response.status != 200:
                        raise Refused(response.status, await response.text())
                    async for line in response.content:
                        if line.startswith(b"data: "):
                            yield json.loads(line[6:])
                finally:
                    if not response.content.at_eof():
                        response.close()  # mid-stream: the connection goes, and llama-server stops generating
        except (aiohttp.ClientError, aiohttp.http_exceptions.HttpProcessingError) as exc:  # the latter: a bad line
            raise Unreachable(str(exc) or type(exc).__name__) from exc

    async def close(self) -> None:
        if self._session is not None and not self._session.closed and self._loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = None
