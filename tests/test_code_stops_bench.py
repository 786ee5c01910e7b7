"""The code-stops benchmark replays the load test's workload both ways and reads which rule ended each
completion from the server's counters."""

from __future__ import annotations

from loadtests.code_stops import run, workload
from tests.api.conftest import serve_fake  # noqa: F401
from tests.fake_engine import FakeEngine


def test_the_workload_is_the_load_tests_and_seeded() -> None:
    bodies = workload(5, seed=1234)
    assert bodies == workload(5, seed=1234) and len(bodies) == 5
    assert all(16 <= b["max_tokens"] <= 128 and b["stop"] == ["\n\n\n"] and b["temperature"] == 0 for b in bodies)


def test_on_generates_fewer_tokens_and_says_why(serve_fake) -> None:  # noqa: F811
    served = serve_fake(engine=FakeEngine(reply="a = 1\n    b = 2\nprint(f())\n" * 20))
    bodies = [{"prompt": "def f():\n    ", "suffix": "\n", "max_tokens": 100, "temperature": 0}] * 3
    off = run(served.url, {}, bodies, code_stops=False)
    on = run(served.url, {}, bodies, code_stops=True)
    assert on["completion_tokens"] < off["completion_tokens"]
    assert on["ended_by"] == {"indent": 3} and off["ended_by"] == {}
