"""Time to serve: each option's start estimate, the start budget, what quantizing needs from the host, and what the
cache unlocks. One test per rule, tables where the rule has cases."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from server.planner import startup
from server.planner.catalog import Catalog
from server.planner.choose import choose
from server.planner.hardware import CpuInfo, Inventory, simulated
from server.planner.memory import GIB, weight_bytes
from server.planner.plan import Plan
from tests.conftest import FIXED_CPU, make_settings


@pytest.fixture
def no_instruct_32b(catalog: Catalog) -> Catalog:
    """The catalog without Qwen2.5-Coder-32B-Instruct, whose published AWQ checkpoint would otherwise win every
    1 x L40S plan: what is left of 32B in 4-bit must be made at start."""
    return Catalog(models=tuple(e for e in catalog.models if e.id != "qwen2.5-coder-32b-instruct"))


def _plan(catalog: Catalog, inventory: Inventory | str, local: frozenset[str] = frozenset(),
          quantized: frozenset[tuple[str, int]] = frozenset(), **settings: object) -> Plan:
    if isinstance(inventory, str):
        inventory = simulated(inventory, FIXED_CPU)
    return choose(inventory, catalog, make_settings(**settings), local, (), quantized)


def _chosen(plan: Plan) -> tuple[str, str, int]:
    return plan.chosen.model.id, plan.chosen.precision, plan.chosen.tensor_parallel_size


# (budget in minutes, chosen): calibrating Qwen2.5-Coder-32B at start is ~2 h (224 s per billion parameters on an
# A100-class GPU, plus its 65.5 GB download); the 14B in FP8 (made by the engine as it loads) starts in ~6 min.
@pytest.mark.parametrize(("minutes", "chosen"), [
    (30, ("qwen2.5-coder-14b", "fp8", 1)),
    (120, ("qwen2.5-coder-14b", "fp8", 1)),
    (1000, ("qwen2.5-coder-32b", "awq", 1)),
], ids=["default", "two-hours", "unbounded"])
def test_a_budget_excludes_quantizing_at_start(no_instruct_32b: Catalog, minutes: int,
                                               chosen: tuple[str, str, int]) -> None:
    plan = _plan(no_instruct_32b, "1xL40S", max_start_minutes=minutes)
    assert _chosen(plan) == chosen
    assert plan.chosen.start is not None and plan.chosen.start.minutes <= minutes


def test_the_plan_names_the_option_passed_over_and_how_to_unlock_it(no_instruct_32b: Catalog) -> None:
    plan = _plan(no_instruct_32b, "1xL40S")
    passed = plan.passed_over[0]
    assert (passed.option.model.id, passed.option.precision) == ("qwen2.5-coder-32b", "awq")
    assert passed.option.start is not None and passed.option.start.quantize_s > 3600
    assert "`codeserve quantize qwen2.5-coder-32b --group-size 128 --tp 1`" in passed.unlock
    assert passed.unlock.endswith("then restart: it starts in ~26 s; or raise CODESERVE_MAX_START_MINUTES to 134")
    assert any("passed over qwen2.5-coder-32b awq" in note for note in plan.notes)
    assert any(r.model == "qwen2.5-coder-32b" and r.precision == "awq" and "CODESERVE_MAX_START_MINUTES=30" in r.reason
               for r in plan.rejected)
    data = plan.to_dict()
    assert data["start"]["minutes"] < 30 and data["passed_over_for_time"][0]["model"] == "qwen2.5-coder-32b"
    assert all(f["start"]["minutes"] <= 30 for f in data["fallbacks"])


# (host RAM, free disk, why 32B in 4-bit cannot be made here): calibration holds the 16-bit weights (65.6 GB) in
# host RAM, and the cache dir takes the download plus the 4-bit checkpoint (85 GB).
@pytest.mark.parametrize(("ram_gib", "disk_gib", "reason"), [
    (32, None, "quantizing needs 61 GiB of host RAM for the 16-bit weights; this machine has 32 GiB"),
    (64, 50, "needs 79 GiB of disk in the cache dir"),
], ids=["host-ram", "disk"])
def test_quantizing_needs_host_memory_and_disk(no_instruct_32b: Catalog, ram_gib: int, disk_gib: int | None,
                                               reason: str) -> None:
    cpu = replace(FIXED_CPU, ram_total_bytes=ram_gib * GIB)
    inventory = replace(simulated("1xL40S", cpu), disk_free_bytes=disk_gib * GIB if disk_gib else None)
    plan = _plan(no_instruct_32b, inventory, max_start_minutes=1000)
    assert _chosen(plan)[0] != "qwen2.5-coder-32b" or plan.chosen.precision != "awq"
    refusals = [r.reason for r in plan.rejected if (r.model, r.precision) == ("qwen2.5-coder-32b", "awq")]
    assert refusals and reason in refusals[0]
    assert "CODESERVE_CACHE_DIR" in refusals[0]  # the setting to change


@pytest.mark.parametrize(("local", "quantized", "minutes"), [
    (frozenset(), frozenset(), None),  # nothing cached: passed over, as above
    (frozenset({"qwen2.5-coder-32b"}), frozenset(), None),  # the download saved, calibration still ~2 h
    (frozenset({"qwen2.5-coder-32b"}), frozenset({("qwen2.5-coder-32b", 128)}), 0.5),  # load 19.3 GB: ~26 s
], ids=["empty-cache", "weights-cached", "checkpoint-cached"])
def test_a_cached_checkpoint_unlocks_the_larger_option(no_instruct_32b: Catalog, local: frozenset[str],
                                                       quantized: frozenset[tuple[str, int]],
                                                       minutes: float | None) -> None:
    plan = _plan(no_instruct_32b, "1xL40S", local, quantized)
    if minutes is None:
        assert _chosen(plan) == ("qwen2.5-coder-14b", "fp8", 1)
        return
    assert _chosen(plan) == ("qwen2.5-coder-32b", "awq", 1) and plan.chosen.start is not None
    start = plan.chosen.start
    assert (start.download_bytes, start.quantize_s) == (0, 0.0) and start.minutes < minutes
    assert start.steps[0] == "the cached 4-bit checkpoint (g128)"


def test_without_auto_quantization_only_existing_checkpoints_plan(no_instruct_32b: Catalog) -> None:
    plan = _plan(no_instruct_32b, "1xL40S", max_start_minutes=1000, auto_quantize=False)
    assert _chosen(plan) == ("qwen2.5-coder-14b", "fp8", 1)
    refusal = next(r.reason for r in plan.rejected if (r.model, r.precision) == ("qwen2.5-coder-32b", "awq"))
    assert "AUTO_QUANTIZE=false: run `codeserve quantize qwen2.5-coder-32b --group-size 128 --tp 1`" in refusal
    cached = _plan(no_instruct_32b, "1xL40S", frozenset({"qwen2.5-coder-32b"}), frozenset({("qwen2.5-coder-32b", 128)}),
                   auto_quantize=False)
    assert _chosen(cached) == ("qwen2.5-coder-32b", "awq", 1)


def test_a_published_checkpoint_is_preferred_over_quantizing_the_same_model(catalog: Catalog) -> None:
    """Qwen2.5-Coder-32B-Instruct publishes AWQ: with it, 1 x L40S starts in minutes; the same entry without it
    would download 16-bit weights and calibrate for hours, and the base model of the same size ranks below it."""
    plan = _plan(catalog, "1xL40S", max_start_minutes=1000)
    assert _chosen(plan) == ("qwen2.5-coder-32b-instruct", "awq", 1)
    assert plan.chosen.start is not None and plan.chosen.start.quantize_s == 0
    base = next(o for o in plan.fallbacks if o.model.id == "qwen2.5-coder-32b" and o.precision == "awq")
    assert base.start is not None and base.start.quantize_s > 0  # same size, ranked after: it calibrates
    entry = catalog.get("qwen2.5-coder-32b-instruct")
    assert entry is not None
    host = startup.Host("cuda", 64 * GIB, None, 362.0)
    published = startup.estimate(entry, "awq", 128, False, startup.Cache(), host, 100e6)
    unpublished = startup.estimate(entry.model_copy(update={"prequantized": entry.prequantized.model_copy(
        update={"awq": None})}), "awq", 128, True, startup.Cache(), host, 100e6)
    assert published.download_bytes == weight_bytes(entry.architecture, "awq", 1, 128)
    assert unpublished.download_bytes > 3 * published.download_bytes and unpublished.total_s > 20 * published.total_s


# (precision, published fp8, what is downloaded): 16-bit and the engine's online FP8 read the 16-bit checkpoint
# (no calibration); a published FP8 checkpoint downloads at its own size.
@pytest.mark.parametrize(("precision", "fp8_repo", "sixteen_bit"), [
    ("bf16", None, True), ("fp8", None, True), ("fp8", "someone/model-FP8", False),
])
def test_what_each_precision_downloads(catalog: Catalog, precision: str, fp8_repo: str | None,
                                       sixteen_bit: bool) -> None:
    entry = catalog.get("qwen2.5-coder-7b")
    assert entry is not None
    entry = entry.model_copy(update={"prequantized": entry.prequantized.model_copy(update={"fp8": fp8_repo})})
    start = startup.estimate(entry, precision, None, False, startup.Cache(), startup.Host("cuda", GIB, None), 1e8)
    expected = weight_bytes(entry.architecture, "bf16" if sixteen_bit else "fp8")
    assert start.download_bytes == expected and start.quantize_s == 0
    cached = startup.estimate(entry, precision, None, False, startup.Cache(frozenset({entry.id})),
                              startup.Host("cuda", GIB, None), 1e8)
    assert cached.download_bytes == (0 if sixteen_bit else expected)


def test_calibration_rates_follow_their_sources(catalog: Catalog) -> None:
    """The CPU point is DESIGN.md's measurement (SmolLM2-135M, 32 x 256 tokens, 13 min on 2 cores); the GPU point is
    llm-compressor's (Llama-3-8B AWQ on an A100, ~30 min), slowed for GPUs with less 16-bit throughput."""
    bundled = catalog.bundled()
    cpu = startup.estimate(bundled, "awq", 64, True, startup.Cache(), startup.Host("cpu", 24 * GIB, None), 1e8)
    assert cpu.quantize_s == pytest.approx(13 * 60, rel=0.01) and cpu.download_bytes == 0  # it ships in a package
    eight_b = catalog.get("qwen2.5-coder-7b")
    assert eight_b is not None
    a100 = startup.estimate(eight_b, "awq", 128, True, startup.Cache(), startup.Host("cuda", GIB, None, 312), 1e8)
    t4 = startup.estimate(eight_b, "awq", 128, True, startup.Cache(), startup.Host("cuda", GIB, None, 65), 1e8)
    h100 = startup.estimate(eight_b, "awq", 128, True, startup.Cache(), startup.Host("cuda", GIB, None, 989), 1e8)
    assert a100.quantize_s == pytest.approx(7.62 / 8.03 * 1800, rel=0.01)
    assert t4.quantize_s == pytest.approx(a100.quantize_s * 312 / 65) and h100.quantize_s == a100.quantize_s


def test_no_option_within_the_budget_serves_the_quickest_and_says_so(catalog: Catalog) -> None:
    plan = _plan(catalog, "8xH100", model="deepseek-coder-v2")
    assert plan.chosen.model.id == "deepseek-coder-v2"
    assert any(note.startswith("no option starts within CODESERVE_MAX_START_MINUTES=30") for note in plan.notes)


def test_the_planning_edge_finds_reusable_checkpoints(tmp_path: Path, catalog: Catalog) -> None:
    from server.planning import quantized_checkpoints
    from server.quantize import runner
    from server.quantize.recipe import QuantSpec, fingerprint

    source = tmp_path / "models" / "qwen2.5-coder-7b"
    source.mkdir(parents=True)
    (source / "config.json").write_text("{}")
    spec = QuantSpec("qwen2.5-coder-7b", fingerprint(source), group_size=64)
    done = runner.quantized_root(tmp_path) / spec.dirname
    done.mkdir(parents=True)
    (done / runner.COMPLETE_MARKER).write_text(json.dumps({"model_id": spec.model_id, "group_size": 64,
                                                           "key": spec.key, "source_dir": str(source)}))
    settings = make_settings(cache_dir=tmp_path)
    assert quantized_checkpoints(settings, catalog) == {("qwen2.5-coder-7b", 64)}
    (source / "config.json").write_text('{"changed": true}')  # other source weights: the server would not reuse it
    assert quantized_checkpoints(settings, catalog) == frozenset()


def test_disk_free_reads_the_nearest_existing_parent(tmp_path: Path) -> None:
    from server.planner.hardware import disk_free

    assert (disk_free(tmp_path / "not" / "yet") or 0) > 0
    assert CpuInfo(1, GIB, GIB).ram_total_bytes == GIB


def test_a_quantized_model_directory_downloads_nothing(catalog: Catalog) -> None:
    """CODESERVE_MODEL=/path to a 4-bit directory (derive.py: the checkpoint is the model itself)."""
    entry = catalog.get("qwen2.5-coder-7b")
    assert entry is not None
    weights = entry.prequantized.model_copy(update={"awq": "/models/my-w4"})
    own = entry.model_copy(update={"id": "my-w4", "repo": "/models/my-w4", "prequantized": weights})
    host = startup.Host("cuda", GIB, None)
    start = startup.estimate(own, "awq", 128, False, startup.Cache(frozenset({"my-w4"})), host, 1e8)
    assert start.download_bytes == 0 and start.steps[0] == "the model's own quantized weights"


def test_the_quantization_job_makes_the_option_passed_over(no_instruct_32b: Catalog) -> None:
    """`codeserve quantize --passed-over` (the chart's Job) makes what the plan passed over for calibrating, with its
    group size and degree; once that is cached the plan chooses it and passes nothing over to quantize."""
    from server.planner.fleet import Fleet
    from server.planning import passed_over_to_quantize

    option = passed_over_to_quantize(Fleet.single(_plan(no_instruct_32b, "1xL40S")))
    assert option is not None
    assert (option.model.id, option.precision, option.awq_group_size, option.tensor_parallel_size) == (
        "qwen2.5-coder-32b", "awq", 128, 1)
    unlocked = _plan(no_instruct_32b, "1xL40S", quantized=frozenset({("qwen2.5-coder-32b", 128)}))
    assert _chosen(unlocked) == ("qwen2.5-coder-32b", "awq", 1)
    assert passed_over_to_quantize(Fleet.single(unlocked)) is None


def test_a_checkpoint_made_with_a_smaller_calibration_set_is_reused(tmp_path: Path, catalog: Catalog) -> None:
    """The chart Job's `samples`/`seqLen` (codeserve quantize --samples/--seq-len) change the checkpoint's key, not
    whether the server finds it; a different recipe version (a key that no longer matches) is never reused."""
    from dataclasses import asdict

    from server.planning import find_checkpoint, quantized_checkpoints
    from server.quantize import runner
    from server.quantize.recipe import Calibration, QuantSpec, fingerprint

    source = tmp_path / "models" / "qwen2.5-coder-7b"
    source.mkdir(parents=True)
    (source / "config.json").write_text("{}")
    default = QuantSpec("qwen2.5-coder-7b", fingerprint(source), group_size=64)
    small = replace(default, calibration=Calibration(samples=8, max_seq_len=128))
    done = runner.quantized_root(tmp_path) / small.dirname
    done.mkdir(parents=True)
    marker = {**asdict(small), "key": small.key, "source_dir": str(source)}
    (done / runner.COMPLETE_MARKER).write_text(json.dumps(marker))
    assert runner.find(tmp_path, default) is None and find_checkpoint(tmp_path, default) == done
    assert quantized_checkpoints(make_settings(cache_dir=tmp_path), catalog) == {("qwen2.5-coder-7b", 64)}
    (done / runner.COMPLETE_MARKER).write_text(json.dumps({**marker, "key": "0" * 16}))  # another recipe version
    assert find_checkpoint(tmp_path, default) is None


# (what the Hugging Face cache holds of the repo the option downloads, as a share of it; the download left): a
# published checkpoint vLLM fetched before, or 16-bit weights partly there, count only what is missing.
@pytest.mark.parametrize(("precision", "cached_share", "left_share"), [
    ("bf16", 0.0, 1.0), ("bf16", 0.5, 0.5), ("bf16", 1.0, 0.0), ("fp8", 1.0, 0.0), ("awq", 1.0, 0.0),
    ("awq", 0.25, 0.75),
])
def test_the_hugging_face_cache_is_subtracted_from_the_download(catalog: Catalog, precision: str,
                                                                 cached_share: float, left_share: float) -> None:
    entry = catalog.get("qwen2.5-coder-32b-instruct")
    assert entry is not None and entry.prequantized.awq
    repo = entry.prequantized.awq if precision == "awq" else entry.repo
    full = weight_bytes(entry.architecture, "awq", 1, entry.prequantized.awq_group_size) if precision == "awq" else \
        weight_bytes(entry.architecture, "bf16")
    cache = startup.Cache(hub=((repo, int(full * cached_share)), ("other/repo", 10**12)))
    start = startup.estimate(entry, precision, entry.prequantized.awq_group_size if precision == "awq" else None,
                             False, cache, startup.Host("cuda", GIB, None), 1e8)
    assert start.download_bytes == pytest.approx(full * left_share, abs=1)
    assert start.steps[0].startswith("download") == (left_share > 0)


def test_the_planning_edge_reads_the_hugging_face_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub's layout (models--org--name/{blobs,refs,snapshots}), read by its own scan_cache_dir."""
    from huggingface_hub import constants

    from server.planning import hub_cached_bytes

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert hub_cached_bytes() == ()  # no cache at all
    repo = tmp_path / "hub" / "models--Qwen--Qwen2.5-Coder-7B"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "aaaa").write_bytes(b"x" * 4096)
    (repo / "blobs" / "bbbb.incomplete").write_bytes(b"x" * 999)  # a download under way: not counted
    snapshot = repo / "snapshots" / "c0ffee"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to("../../blobs/aaaa")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c0ffee")
    assert hub_cached_bytes() == (("Qwen/Qwen2.5-Coder-7B", 4096),)
