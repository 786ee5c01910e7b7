"""The stream client of llama-server's /completion (engine/llamacpp_client.py) against a stand-in server that answers
as llama-server does: event lines, an error status, a last event carrying the whole prompt, a client that goes away."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.engine.llamacpp_client import CompletionClient, Refused, Unreachable

PROMPT_TOKENS = 32_768


class StandIn:
    """`/completion`: `n` events of one token each, the last with the prompt echoed as llama-server's final event
    has it; a body with "refuse" gets a 400, one with "drop" loses the connection after the first event."""

    def __init__(self) -> None:
        self.disconnected = asyncio.Event()
        self.sent = 0

    async def completion(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("refuse"):
            return web.json_response({"error": {"code": 400, "message": "bad grammar"}}, status=400)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for index in range(body["n"]):
                last = index == body["n"] - 1
                event = {"content": f"t{index}", "tokens": [index], "stop": last}
                if last:
                    event["prompt"] = "x\"\n" * PROMPT_TOKENS  # escaped in JSON: ~4 bytes a character
                await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                self.sent += 1
                if body.get("drop"):
                    assert request.transport is not None
                    request.transport.close()
                    return response
                await asyncio.sleep(body.get("every_s", 0))
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnected.set()
            raise
        return response


@pytest.fixture
async def served() -> AsyncIterator[tuple[StandIn, CompletionClient]]:
    stand_in = StandIn()
    app = web.Application()
    app.router.add_post("/completion", stand_in.completion)
    server = TestServer(app)
    await server.start_server()
    client = CompletionClient(str(server.make_url("")).rstrip("/"), max_event_bytes=PROMPT_TOKENS * 16)
    yield stand_in, client
    await client.close()
    await server.close()


async def test_events_in_order_and_a_last_event_longer_than_aiohttps_default_line(
        served: tuple[StandIn, CompletionClient]) -> None:
    _, client = served
    events = [event async for event in client.events({"n": 3})]
    assert [e["content"] for e in events] == ["t0", "t1", "t2"] and events[-1]["stop"] is True
    assert len(events[-1]["prompt"]) == 3 * PROMPT_TOKENS  # ~130 KB of JSON on one line


async def test_an_error_status_is_refused_with_its_body(served: tuple[StandIn, CompletionClient]) -> None:
    _, client = served
    with pytest.raises(Refused) as refused:
        _ = [event async for event in client.events({"refuse": True, "n": 1})]
    assert refused.value.status == 400 and "bad grammar" in refused.value.text


async def test_cancelling_the_reader_closes_the_connection(served: tuple[StandIn, CompletionClient]) -> None:
    stand_in, client = served
    first = asyncio.Event()

    async def read() -> None:
        async for _ in client.events({"n": 1000, "every_s": 0.01}):
            first.set()

    reader = asyncio.create_task(read())
    await asyncio.wait_for(first.wait(), 5)
    reader.cancel()
    await asyncio.wait_for(stand_in.disconnected.wait(), 5)  # the server saw the client go: generation stops
    assert stand_in.sent < 1000


async def test_a_connection_lost_mid_stream_is_unreachable(served: tuple[StandIn, CompletionClient]) -> None:
    _, client = served
    seen = []
    with pytest.raises(Unreachable):
        async for event in client.events({"n": 5, "drop": True}):
            seen.append(event)
    assert len(seen) == 1


async def test_nothing_listening_is_unreachable() -> None:
    client = CompletionClient("http://127.0.0.1:9", max_event_bytes=PROMPT_TOKENS * 16)
    with pytest.raises(Unreachable):
        _ = [event async for event in client.events({"n": 1})]
    await client.close()


async def test_an_event_line_over_the_buffer_is_unreachable_not_an_unexpected_error(
        served: tuple[StandIn, CompletionClient]) -> None:
    _, big = served
    small = CompletionClient(big.url, max_event_bytes=2**16)  # a context planned smaller than the echoed prompt
    with pytest.raises(Unreachable):
        _ = [event async for event in small.events({"n": 2})]
    await small.close()
