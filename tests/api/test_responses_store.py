"""The stored Responses: bounded in number (the oldest goes first) and in age, on a clock the test turns."""

from __future__ import annotations

import threading

import pytest

from server.api.responses.store import ResponseStore, Stored


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _stored(response_id: str, *texts: str) -> Stored:
    return Stored(response_id, tuple({"role": "user", "content": t} for t in texts), {"id": response_id})


def test_the_oldest_is_evicted_beyond_the_count() -> None:
    store = ResponseStore(max_count=3, ttl_s=60, clock=Clock())
    for i in range(5):
        store.put(_stored(f"resp_{i}", "hi"))
    assert len(store) == 3
    assert [store.get(f"resp_{i}") is not None for i in range(5)] == [False, False, True, True, True]


def test_memory_stays_bounded_however_many_are_stored() -> None:
    store = ResponseStore(max_count=10, ttl_s=60, clock=Clock())
    for i in range(10_000):
        store.put(_stored(f"resp_{i}", "x" * 100))
    assert len(store._entries) == 10 and store.get("resp_9999") is not None


def test_storing_an_id_again_makes_it_the_newest() -> None:
    store = ResponseStore(max_count=2, ttl_s=60, clock=Clock())
    store.put(_stored("a"))
    store.put(_stored("b"))
    store.put(_stored("a", "again"))
    store.put(_stored("c"))
    assert store.get("b") is None
    kept = store.get("a")
    assert kept is not None and kept.conversation[0]["content"] == "again"


def test_a_response_expires_after_its_lifetime() -> None:
    clock = Clock()
    store = ResponseStore(max_count=10, ttl_s=60, clock=clock)
    store.put(_stored("old"))
    clock.now += 30
    store.put(_stored("young"))
    clock.now += 29.9
    assert store.get("old") is not None
    clock.now += 0.1
    assert store.get("old") is None and store.get("young") is not None
    assert len(store) == 1
    clock.now += 30
    assert len(store) == 0 and not store.delete("young")


def test_delete() -> None:
    store = ResponseStore(max_count=2, ttl_s=60, clock=Clock())
    store.put(_stored("a"))
    assert store.delete("a") and store.get("a") is None and not store.delete("a")


@pytest.mark.parametrize(("max_count", "ttl_s"), [(0, 60), (1, 0)])
def test_a_store_needs_room_and_a_lifetime(max_count: int, ttl_s: float) -> None:
    with pytest.raises(ValueError):
        ResponseStore(max_count, ttl_s)


def test_threads_share_it_safely() -> None:
    """Requests are converted (and read the store) in worker threads while answers are stored on the event loop."""
    store = ResponseStore(max_count=50, ttl_s=60)

    def work(worker: int) -> None:
        for i in range(2000):
            store.put(_stored(f"{worker}-{i}"))
            store.get(f"{worker}-{i // 2}")
            if i % 7 == 0:
                store.delete(f"{worker}-{i - 1}")

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store) == 50
