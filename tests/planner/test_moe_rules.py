"""Mixture-of-experts rules the Qwen3-Coder entries brought: a published block-FP8 checkpoint splits only in whole
blocks, and an MoE config's unused dense intermediate_size constrains neither TP nor AWQ groups."""

from __future__ import annotations

import pytest

from server.planner import candidates as rules
from server.planner.catalog import Catalog
from server.planner.choose import choose
from server.planner.hardware import simulated
from server.planner.memory import Mxfp4Kernel
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


# MXFP4, the format gpt-oss is published in: 4.25 bits per expert weight, everything else bf16, padded per kernel.
def test_mxfp4_weights_are_4_25_bit_experts_and_16_bit_rest(catalog: Catalog) -> None:
    from server.planner.memory import param_counts, weight_bytes

    entry = catalog.get("gpt-oss-120b")
    assert entry is not None
    counts = param_counts(entry.architecture)
    stored = weight_bytes(entry.architecture, "mxfp4", mxfp4_kernel=None)
    assert stored == counts.embedding * 2 + (counts.linear - counts.experts) * 2 + round(counts.experts * 4.25 / 8)
    assert counts.experts / counts.total > 0.98  # 36 x 128 experts of 3 x 2880 x 2880
    assert stored < 80e9  # the card: "fits into a single 80GB GPU"
    small = catalog.get("gpt-oss-20b")
    assert small is not None
    assert weight_bytes(small.architecture, "mxfp4", mxfp4_kernel=None) < 16e9  # the card: "within 16GB of memory"


# (kernel, tp, growth of each rank's experts): vLLM's mxfp4_round_up_hidden_size_and_intermediate_size on 2880 x 2880
@pytest.mark.parametrize(("kernel", "tp", "growth"), [
    ("marlin", 1, 3072 * 2944 / (2880 * 2880)),  # hidden to 256, width to 128
    ("marlin", 2, 3072 * 1536 / (2880 * 1440)),
    ("triton", 1, 1.0),  # Hopper: width to 64, 2880 already is
    ("triton", 2, 1472 / 1440),
    (None, 4, 1.0),  # the checkpoint as stored (a download)
])
def test_mxfp4_padding_follows_vllms_kernels(catalog: Catalog, kernel: Mxfp4Kernel | None, tp: int,
                                            growth: float) -> None:
    from server.planner.memory import mxfp4_padding

    entry = catalog.get("gpt-oss-20b")
    assert entry is not None
    assert mxfp4_padding(entry.architecture, tp, kernel) == pytest.approx(growth)


@pytest.mark.parametrize(("capability", "kernel"), [((8, 0), "marlin"), ((8, 9), "marlin"), ((9, 0), "triton"),
                                                    ((10, 0), "marlin")])
def test_hopper_runs_the_triton_mxfp4_kernels(capability: tuple[int, int], kernel: str) -> None:
    assert rules.mxfp4_kernel(capability) == kernel


# (inventory, pinned model, pinned precision, the reason a candidate gives)
@pytest.mark.parametrize(("spec", "model_id", "precision", "reason"), [
    ("1xT4", "gpt-oss-20b", "auto", "mxfp4 needs compute capability 8.0+; T4 has 7.5"),
    ("1xH100", "gpt-oss-20b", "bf16", "published in MXFP4 only"),
    ("1xH100", "qwen2.5-coder-7b-instruct", "mxfp4", "no MXFP4 checkpoint of qwen2.5-coder-7b-instruct is published"),
], ids=["pre-ampere", "no-16-bit-weights", "no-mxfp4-checkpoint"])
def test_mxfp4_is_planned_only_where_published_and_served(catalog: Catalog, spec: str, model_id: str, precision: str,
                                                          reason: str) -> None:
    from server.planner.plan import NoFit

    settings = make_settings(role="chat", model=model_id, precision=precision)
    with pytest.raises(NoFit) as info:
        choose(simulated(spec, FIXED_CPU), catalog, settings)
    assert reason in str(info.value)


def test_an_mxfp4_plan_loads_the_authors_checkpoint_as_is(catalog: Catalog) -> None:
    plan = choose(simulated("1xH100", FIXED_CPU), catalog, make_settings(role="chat", model="gpt-oss-120b"))
    launch, start = plan.chosen.launch, plan.chosen.start
    assert (launch.model, launch.online_quantization, launch.dtype) == ("openai/gpt-oss-120b", None, "bfloat16")
    assert start is not None and start.steps[-2:] == ("the published MXFP4 checkpoint", "load 65.2 GB")
    assert plan.chosen.memory.weights < start.load_bytes * 1.001  # Hopper's Triton kernels add no padding at tp=1
