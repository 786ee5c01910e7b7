"""The load test's verdict (loadtests/report.py: check): what makes `loadtests/run.py` exit non-zero."""

from __future__ import annotations

import time

import pytest

from loadtests.report import Results, Sample, check, render


def _results(errors: dict[tuple[str, int], int] | None = None, cancelled: int = 2,
             server_after: dict[str, float] | None = None) -> Results:
    results = Results()
    now = time.time()
    for i in range(20):
        results.add(Sample(now, "completions", 100.0 + i, 10.0, 300.0, 8, cancelled=i < cancelled))
    for (name, status), count in (errors or {}).items():
        for _ in range(count):
            results.add_error(name, status)
    results.server_before = {"codeserve_requests_cancelled_total": 5.0}
    results.server_after = server_after if server_after is not None else {
        "codeserve_requests_in_flight": 0.0, "codeserve_engine_unfinished_requests": 0.0,
        "codeserve_requests_cancelled_total": 5.0 + cancelled}
    return results


@pytest.mark.parametrize(("results", "require", "expected"), [
    (_results(), True, []),
    (_results(errors={("completions", 500): 1}), True, ["1 server errors (5xx)"]),
    (_results(errors={("completions", 429): 5}), True, ["error rate"]),
    (_results(server_after={"codeserve_requests_in_flight": 1.0, "codeserve_engine_unfinished_requests": 2.0,
                             "codeserve_requests_cancelled_total": 7.0}), True, ["leak: 1 requests in flight and 2"]),
    (_results(server_after={"codeserve_requests_in_flight": 0.0, "codeserve_engine_unfinished_requests": 0.0,
                             "codeserve_requests_cancelled_total": 5.0}), True, ["server counted 0 cancellations"]),
    # a stale stream the client closed just before its next request: the server may count it superseded
    (_results(server_after={"codeserve_requests_in_flight": 0.0, "codeserve_engine_unfinished_requests": 0.0,
                             "codeserve_requests_cancelled_total": 6.0, "codeserve_requests_superseded_total": 1.0}),
     True, []),
    (_results(server_after={}), True, ["could not read codeserve's metrics"]),
    (_results(server_after={}), False, []),
], ids=["clean", "5xx", "error-rate", "leak", "cancellations-lost", "superseded-counts-as-cancelled",
        "metrics-unreadable", "not-codeserve"])
def test_verdict(results: Results, require: bool, expected: list[str]) -> None:
    summary = results.summary()
    failures = check(summary, results, max_p95_ttft_ms=0, max_error_rate=0.05, require_server_metrics=require)
    assert len(failures) == len(expected), failures
    text = render({**summary, "failures": failures})  # the report the run prints and writes
    assert ("FAILED: " in text) is bool(failures)
    for failure, start in zip(failures, expected, strict=True):
        assert start in failure


def test_p95_ttft_threshold() -> None:
    results = _results()
    assert check(results.summary(), results, max_p95_ttft_ms=50, max_error_rate=0.05)[0].startswith(
        "completions: p95 TTFT")
    assert check(results.summary(), results, max_p95_ttft_ms=5000, max_error_rate=0.05) == []


def test_server_delta_reports_cache_hits_and_speculation() -> None:
    from loadtests.report import server_delta

    before = {"vllm:prefix_cache_queries_total": 100.0, "vllm:prefix_cache_hits_total": 50.0}
    after = {"vllm:prefix_cache_queries_total": 1100.0, "vllm:prefix_cache_hits_total": 950.0,
             "vllm:spec_decode_num_draft_tokens_total": 40.0, "vllm:spec_decode_num_accepted_tokens_total": 10.0}
    delta = server_delta(before, after)
    assert delta["prefix_cache_hit_rate"] == 0.9 and delta["spec_acceptance_rate"] == 0.25
    text = render({**_results().summary(), "server": {**delta, "in_flight_after": 0.0,
                                                      "engine_unfinished_after": 0.0}, "failures": []})
    assert "prefix cache hit rate 90.0%" in text and "25.0% of draft tokens accepted" in text
    no_drafts = {**after, "vllm:spec_decode_num_draft_tokens_total": 0.0}
    assert server_delta(before, no_drafts)["spec_acceptance_rate"] is None
