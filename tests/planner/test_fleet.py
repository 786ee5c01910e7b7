"""Both roles on one inventory: table cases, never overcommitting a GPU, and the plan JSON's `served` list."""

from __future__ import annotations

import pytest

from server.planner.catalog import Catalog
from server.planner.fleet import Fleet, plan_fleet
from server.planner.hardware import simulated
from server.roles import role_spec
from server.settings import DEFAULT_TARGET_TOKEN_LATENCY_MS
from tests.conftest import FIXED_CPU, make_settings


def _fleet(catalog: Catalog, spec: str, **settings: object) -> Fleet:
    return plan_fleet(simulated(spec, FIXED_CPU), catalog, make_settings(role="completion,chat", **settings))


# (inventory, layout, completion: model, precision, tp, GPUs; chat: model, precision, tp, GPUs)
TABLE = [
    ("1xL40S", "shared", "qwen2.5-coder-7b", "fp8", 1, (0,), "qwen2.5-coder-14b-instruct", "awq", 1, (0,)),
    ("2xL4", "separate", "qwen2.5-coder-3b", "fp8", 1, (0,), "qwen2.5-coder-7b-instruct", "bf16", 1, (1,)),
    ("1xH100", "shared", "qwen2.5-coder-14b", "fp8", 1, (0,), "qwen2.5-coder-32b-instruct", "awq", 1, (0,)),
    ("4xA100-40GB", "separate", "qwen2.5-coder-32b", "fp8", 2, (0, 1), "qwen2.5-coder-32b-instruct", "fp8", 2,
     (2, 3)),
    # DeepSeek-Coder-V2's 472 GB would take ~90 min to download (planner/startup.py): the 32B pair starts in time
    ("8xH100", "separate", "qwen2.5-coder-32b", "bf16", 2, (0, 1), "qwen2.5-coder-32b-instruct", "bf16", 2, (2, 3)),
]


def test_cached_weights_let_the_236b_pair_start_in_time(catalog: Catalog) -> None:
    cached = frozenset({"deepseek-coder-v2", "deepseek-coder-v2-instruct"})
    fleet = plan_fleet(simulated("8xH100", FIXED_CPU), catalog, make_settings(role="completion,chat"), cached)
    got = [(s.option.model.id, s.option.precision, s.option.tensor_parallel_size, s.gpus) for s in fleet.served]
    assert got == [("deepseek-coder-v2", "fp8", 4, (0, 1, 2, 3)),
                   ("deepseek-coder-v2-instruct", "fp8", 4, (4, 5, 6, 7))]


@pytest.mark.parametrize(("spec", "layout", "c_model", "c_precision", "c_tp", "c_gpus", "h_model", "h_precision",
                          "h_tp", "h_gpus"), TABLE, ids=[t[0] for t in TABLE])
def test_both_roles(catalog: Catalog, spec: str, layout: str, c_model: str, c_precision: str, c_tp: int,
                    c_gpus: tuple[int, ...], h_model: str, h_precision: str, h_tp: int,
                    h_gpus: tuple[int, ...]) -> None:
    fleet = _fleet(catalog, spec)
    completion, chat = fleet.served
    assert fleet.layout == layout and (completion.role, chat.role) == ("completion", "chat")
    got = [(s.option.model.id, s.option.precision, s.option.tensor_parallel_size, s.gpus) for s in fleet.served]
    assert got == [(c_model, c_precision, c_tp, c_gpus), (h_model, h_precision, h_tp, h_gpus)]
    # each engine is pinned to its GPUs, and told its share
    for served in fleet.served:
        assert served.option.launch.devices == served.gpus
        assert all(o.launch.devices == served.gpus for o in served.plan.fallbacks)


@pytest.mark.parametrize("spec", [*(t[0] for t in TABLE), "1xT4", "1xL4", "1xA100-80GB", "2xA100-80GB", "1xT4,1xL4",
                                  "8xL4", "4xL40S", "1xRTX-4090"])
def test_no_gpu_is_overcommitted_and_roles_get_their_kind_of_model(catalog: Catalog, spec: str) -> None:
    utilization = 0.9
    fleet = _fleet(catalog, spec, gpu_memory_utilization=utilization)
    by_gpu: dict[int, list[int]] = {}
    for served in fleet.served:
        option = served.option
        assert option.memory.total <= option.memory.budget
        for index in served.gpus:
            by_gpu.setdefault(index, []).append(option.memory.budget)
    for index, budgets in by_gpu.items():
        assert sum(budgets) <= utilization * fleet.inventory.gpus[index].total_bytes
    completion, chat = (s.option for s in fleet.served)
    assert completion.model.fim is not None
    assert chat.model.role == "instruct"
    if completion.latency is not None and not completion.latency.decode_ms_per_token <= DEFAULT_TARGET_TOKEN_LATENCY_MS:
        assert fleet.served[0].plan.notes  # missing the target is said, never silent
    if fleet.layout == "shared":
        # vLLM's per-instance shares: completion's is what it needs, at most half, and both fit the budget
        fractions = [s.option.launch.gpu_memory_fraction for s in fleet.served]
        assert fractions[0] is not None and fractions[1] is not None
        assert fractions[0] <= utilization * role_spec("completion").max_share + 0.01
        assert fractions[0] + fractions[1] <= utilization + 1e-9
    else:
        assert not set(fleet.served[0].gpus) & set(fleet.served[1].gpus)


def test_cpu_runs_one_engine_for_both_roles(catalog: Catalog) -> None:
    fleet = _fleet(catalog, "none")
    assert fleet.layout == "one-engine" and len(fleet.engines()) == 1
    assert [s.role for s in fleet.engines()[0]] == ["completion", "chat"]
    assert fleet.served[0].plan is fleet.served[1].plan and fleet.served[0].option.model.bundled


def test_one_role_is_the_single_role_plan(catalog: Catalog) -> None:
    from server.planner.choose import choose

    fleet = plan_fleet(simulated("1xL4", FIXED_CPU), catalog, make_settings(role="chat"))
    assert fleet.layout == "single" and fleet.roles == ("chat",)
    alone = choose(simulated("1xL4", FIXED_CPU), catalog, make_settings(role="chat"))
    assert fleet.served[0].option == alone.chosen and fleet.served[0].option.launch.devices is None


def test_chat_model_can_be_pinned(catalog: Catalog) -> None:
    fleet = _fleet(catalog, "1xH100", chat_model="qwen2.5-coder-7b-instruct")
    assert fleet.served[1].option.model.id == "qwen2.5-coder-7b-instruct"


def test_objective_largest_gives_completion_the_largest_fim_model(catalog: Catalog) -> None:
    fast = _fleet(catalog, "2xA100-80GB")
    large = _fleet(catalog, "2xA100-80GB", objective="largest")
    assert large.served[0].option.model.params >= fast.served[0].option.model.params
    assert fast.served[0].option.latency.decode_ms_per_token <= DEFAULT_TARGET_TOKEN_LATENCY_MS  # type: ignore[union-attr]


def test_fleet_json_lists_every_role(catalog: Catalog) -> None:
    document = _fleet(catalog, "1xH100").to_dict()
    assert document["roles"] == ["completion", "chat"] and document["layout"] == "shared"
    for entry in document["served"]:
        assert {"role", "model", "precision", "tensor_parallel_size", "gpus", "memory"} <= set(entry)
        assert entry["gpus"] == [0] and entry["memory"]["gpu_memory_fraction"] > 0
        assert entry["plan"]["model"]["id"] == entry["model"]


def test_started_fleet_publishes_what_runs(catalog: Catalog) -> None:
    fleet = _fleet(catalog, "2xL4")
    plans = [group[0].plan for group in fleet.engines()]
    fallback = plans[1].started(plans[1].fallbacks[0]) if plans[1].fallbacks else plans[1]
    turned = fleet.started([plans[0], fallback])
    assert turned.served[1].plan is fallback and turned.served[0].plan is plans[0]
