"""Retrieval roles beside the generation roles: all four planned on the golden GPU inventories without overcommitting
any GPU, each retrieval role on its kind of model in 16-bit, its own engine, started first."""

from __future__ import annotations

import pytest

from server.planner.catalog import Catalog
from server.planner.fleet import Fleet, plan_fleet
from server.planner.hardware import simulated
from tests.conftest import FIXED_CPU, make_settings

ALL = "completion,chat,embedding,rerank"
GOLDEN = ["1xT4", "1xT4,1xL4", "1xA100-80GB", "2xA100-80GB", "8xH100"]


def _fleet(catalog: Catalog, spec: str, utilization: float = 0.9, **settings: object) -> Fleet:
    return plan_fleet(simulated(spec, FIXED_CPU), catalog,
                      make_settings(role=ALL, gpu_memory_utilization=utilization, **settings))


@pytest.mark.parametrize("spec", [*GOLDEN, "1xL4", "2xL4", "1xL40S", "1xH100", "4xA100-40GB", "1xRTX-4090", "8xL4"])
def test_four_roles_never_overcommit_a_gpu(catalog: Catalog, spec: str) -> None:
    utilization = 0.9
    fleet = _fleet(catalog, spec, utilization)
    assert fleet.roles == ("completion", "chat", "embedding", "rerank")
    by_gpu: dict[int, list[int]] = {}
    fractions: dict[int, float] = {}
    for served in fleet.served:
        option = served.option
        assert option.memory.total <= option.memory.budget
        assert served.gpus, f"{served.role} runs on no GPU"
        for index in served.gpus:
            by_gpu.setdefault(index, []).append(option.memory.budget)
            fractions[index] = fractions.get(index, 0.0) + (option.launch.gpu_memory_fraction or 0.0)
    for index, budgets in by_gpu.items():
        assert sum(budgets) <= utilization * fleet.inventory.gpus[index].total_bytes
        assert fractions[index] <= utilization + 1e-9  # vLLM's per-instance shares on this GPU, summed
    kinds = {s.role: s.option.model.role for s in fleet.served}
    assert kinds["embedding"] == "embedding" and kinds["rerank"] == "reranker"
    for served in fleet.served:
        if served.role in ("embedding", "rerank"):
            launch = served.option.launch
            assert served.option.precision in ("bf16", "fp16") and launch.pooling is not None
            assert served.gpus == (fleet.inventory.gpus[-1].index,) and launch.devices == served.gpus
    # retrieval engines start first (the smaller shares), each its own engine; four engines in all
    engines = fleet.engines()
    assert [group[0].role for group in engines[:2]] == ["embedding", "rerank"] and len(engines) == 4


# (inventory, embedding model, reranker): the largest in each role's share of the last GPU
TABLE = [
    ("1xT4", "qwen3-embedding-0.6b", "bge-reranker-base"),
    ("1xA100-80GB", "qwen3-embedding-4b", "bge-reranker-v2-m3"),
    ("8xH100", "qwen3-embedding-4b", "bge-reranker-v2-m3"),
]


@pytest.mark.parametrize(("spec", "embedding", "reranker"), TABLE, ids=[t[0] for t in TABLE])
def test_retrieval_models_by_inventory(catalog: Catalog, spec: str, embedding: str, reranker: str) -> None:
    models = {s.role: s.option.model.id for s in _fleet(catalog, spec).served}
    assert (models["embedding"], models["rerank"]) == (embedding, reranker)


def test_retrieval_alone_takes_only_its_share(catalog: Catalog) -> None:
    fleet = plan_fleet(simulated("1xA100-80GB", FIXED_CPU), catalog, make_settings(role="embedding"))
    (served,) = fleet.served
    assert served.option.launch.gpu_memory_fraction is not None
    assert served.option.launch.gpu_memory_fraction <= 0.25
    assert served.option.launch.pooling == "embed" and served.option.launch.pooling_type == "last"


def test_cpu_gives_each_retrieval_role_a_transformers_engine(catalog: Catalog) -> None:
    inventory = simulated("none", FIXED_CPU)
    local = frozenset({"qwen3-embedding-0.6b", "bge-reranker-base"})  # on the CPU only models already here qualify
    fleet = plan_fleet(inventory, catalog, make_settings(role=ALL), local)
    engines = fleet.engines()
    assert len(engines) == 3  # embedding, rerank, and one engine for completion and chat
    by_role = {s.role: s.option.launch for s in fleet.served}
    assert by_role["embedding"].engine == by_role["rerank"].engine == "transformers"
    assert by_role["embedding"].pooling == "embed" and by_role["rerank"].pooling == "score"
    assert by_role["completion"] == by_role["chat"] and by_role["chat"].pooling is None


def test_bundled_model_never_serves_a_retrieval_role(catalog: Catalog) -> None:
    from server.planner.plan import NoFit

    with pytest.raises(NoFit, match="only the bundled model or a model already in the cache dir"):
        plan_fleet(simulated("none", FIXED_CPU), catalog, make_settings(role="embedding"))
