"""LoRA adapters in the plan: their slots' memory, the engine arguments, and where they cannot go."""

from __future__ import annotations

import pytest

from server.engine.vllm_args import engine_args
from server.planner.adapters import Adapter, max_rank
from server.planner.catalog import Catalog
from server.planner.choose import choose
from server.planner.hardware import simulated
from server.planner.memory import GIB, lora_bytes
from server.planner.plan import NoFit
from tests.conftest import FIXED_CPU, make_settings

ADAPTERS = (Adapter("team-style", "/adapters/style", 8, ("q_proj", "v_proj"), "Qwen/Qwen2.5-Coder-7B"),
            Adapter("repo-x", "/adapters/x", 16, ("q_proj",), "Qwen/Qwen2.5-Coder-7B"))


def test_max_rank_rounds_up_to_what_vllm_accepts() -> None:
    assert max_rank(ADAPTERS) == 16 and max_rank(ADAPTERS[:1]) == 8 and max_rank(()) == 0
    assert max_rank((Adapter("a", "/a", 12, (), ""),)) == 16


def test_lora_slots_are_in_the_memory_and_the_engine_arguments(catalog: Catalog) -> None:
    settings = make_settings(model="qwen2.5-coder-7b", max_loras=4)
    plain = choose(simulated("1xL40S", FIXED_CPU), catalog, settings).chosen
    served = choose(simulated("1xL40S", FIXED_CPU), catalog, settings, adapters=ADAPTERS).chosen
    assert plain.memory.lora == 0 and served.memory.lora == lora_bytes(served.model.architecture, 16, 4)
    # Qwen2.5-Coder-7B: 28 layers x (attention 3584+3584, 2 x (3584+512), 3584+3584; MLP 3 x (3584+18944))
    # = 28 x 90,112 rows+columns, x rank 16 x 4 slots x 2 bytes = 322,961,408 bytes
    assert served.memory.lora == 322_961_408 and served.memory.lora / GIB == pytest.approx(0.30, abs=0.01)
    assert served.memory.total == plain.memory.total + served.memory.lora
    assert served.kv_cache_capacity_tokens < plain.kv_cache_capacity_tokens  # the slots come out of the cache
    args = engine_args(served.launch)
    assert (args["enable_lora"], args["max_loras"], args["max_lora_rank"]) == (True, 4, 16)
    assert served.launch.lora_adapters == (("team-style", "/adapters/style"), ("repo-x", "/adapters/x"))


def test_vllms_parser_reads_the_lora_arguments_back(catalog: Catalog) -> None:
    from server.engine.vllm_args import serve_flags
    from tests.engine.test_vllm_args import _parse

    launch = choose(simulated("1xL4", FIXED_CPU), catalog, make_settings(), adapters=ADAPTERS).chosen.launch
    parsed = _parse(serve_flags(engine_args(launch)))
    assert (parsed.enable_lora, parsed.max_loras, parsed.max_lora_rank) == (True, 2, 16)


def test_the_transformers_engine_takes_no_adapters(catalog: Catalog) -> None:
    with pytest.raises(NoFit, match="serves no LoRA adapters"):
        choose(simulated("1xL4", FIXED_CPU), catalog, make_settings(model="codegen-2b-mono"), adapters=ADAPTERS)


def test_with_both_roles_the_completion_engine_serves_them(catalog: Catalog) -> None:
    from server.planner.fleet import plan_fleet

    fleet = plan_fleet(simulated("2xL4", FIXED_CPU), catalog, make_settings(role="completion,chat"),
                       adapters=ADAPTERS)
    completion, chat = (s.option.launch for s in fleet.served)
    assert completion.lora_adapters and not chat.lora_adapters
