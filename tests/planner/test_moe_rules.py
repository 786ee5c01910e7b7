"""Mixture-of-experts rules the Qwen3-Coder entries brought: a published block-FP8 checkpoint splits only in whole
blocks, and an MoE config's unused dense intermediate_size constrains neither TP nor AWQ groups."""

from __future__ import annotations

import pytest

from server.planner import candidates as rules
from server.planner.catalog import Catalog
from server.planner.choose import choose
from server.planner.hardware import simulated
from tests.conftest import FIXED_CPU, make_settings


# (entry, tp, rows per GPU that break a 128-row block, or None): expert widths 768 (30B-A3B) and 2560 (480B-A35B)
@pytest.mark.parametrize(("model_id", "tp", "bad_rows"), [
    ("qwen3-coder-30b-a3b-instruct", 1, None), ("qwen3-coder-30b-a3b-instruct", 2, None),
    ("qwen3-coder-30b-a3b-instruct", 4, 192), ("qwen3-coder-30b-a3b-instruct", 8, 96),
    ("qwen3-coder-480b-a35b-instruct", 4, None), ("qwen3-coder-480b-a35b-instruct", 8, 320),
    ("qwen2.5-coder-7b", 8, None),  # no published FP8 checkpoint: the engine's own FP8 has no blocks
])
def test_published_block_fp8_splits_in_whole_blocks(catalog: Catalog, model_id: str, tp: int,
                                                    bad_rows: int | None) -> None:
    entry = catalog.get(model_id)
    assert entry is not None
    problem = rules.fp8_block_problem(entry, tp)
    assert (problem is None) == (bad_rows is None)
    if problem:
        assert f"({bad_rows} rows per GPU)" in problem and "CODESERVE_TENSOR_PARALLEL_SIZE" in problem


def test_an_unused_dense_width_does_not_shrink_awq_groups(catalog: Catalog) -> None:
    entry = catalog.get("qwen3-coder-30b-a3b-instruct")
    assert entry is not None
    # intermediate_size 5472 = 2^5 x 171 would allow only group 32; no layer has a dense MLP
    assert rules.awq_group_size(entry.architecture, 1) == 128
    assert rules.tp_problem(entry.architecture, 8) is None


def test_the_480b_in_fp8_runs_at_tp4_on_8_h200(catalog: Catalog) -> None:
    # the authors serve the FP8 checkpoint with --tp 4 (README; --tp 8 fails to load): 112 GiB per GPU: H200s
    settings = make_settings(role="chat", model="qwen3-coder-480b-a35b-instruct", precision="fp8",
                             max_start_minutes=10_000)
    plan = choose(simulated("8xH200", FIXED_CPU), catalog, settings)
    assert (plan.chosen.tensor_parallel_size, plan.chosen.replicas) == (4, 2)
    assert plan.chosen.launch.model == "Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8"
    assert any(r.tensor_parallel_size == 8 and "(320 rows per GPU)" in r.reason for r in plan.rejected)
