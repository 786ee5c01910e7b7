"""The vLLM adapter's rendering of a plan: AsyncEngineArgs keywords and `vllm serve` flags, parsed back by
vLLM's own argument parser, so a GPU plan vLLM would reject fails here, on a machine without a GPU."""

from __future__ import annotations

from typing import Any

import pytest

from server.engine.vllm_args import engine_args, serve_flags
from server.planner.catalog import Catalog
from server.planner.choose import choose
from server.planner.hardware import simulated
from server.planner.launch import Launch
from tests.conftest import FIXED_CPU, make_settings
from tests.planner.test_plan import GOLDEN_CASES

GPU_GOLDEN = [spec for spec in GOLDEN_CASES if spec != "none"]
# Beyond the golden plans: fp8 weights and KV cache, remote code, a pinned TP degree, the CPU plan, MXFP4.
EXTRA = {
    "1xH100-fp8-kv": ("1xH100", {"precision": "fp8", "kv_cache_dtype": "fp8"}),
    "1xL4-trust-remote-code": ("1xL4", {"model": "codegeex4-9b", "precision": "awq"}),
    "4xL40S-tp4": ("4xL40S", {"tensor_parallel_size": 4, "precision": "bf16"}),
    "1xT4-chat-published-awq": ("1xT4", {"role": "chat"}),
    "cpu": ("none", {}),
    "2x8xA100-40GB-pipeline": ("8xA100-40GB", {"model": "deepseek-coder-v2", "nodes": 2}),
    # the authors' MXFP4 checkpoint: its config.json names the method, no quantization argument is rendered
    "1xH100-mxfp4": ("1xH100", {"model": "gpt-oss-120b", "role": "chat"}),
    "1xL40S-mellum": ("1xL40S", {"model": "mellum-4b-base", "role": "completion"}),
}


def _parse(flags: list[str]) -> Any:
    """What `vllm serve` would make of the flags: vLLM's parser and AsyncEngineArgs.from_cli_args."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = AsyncEngineArgs.add_cli_args(FlexibleArgumentParser())
    namespace = parser.parse_args(["--model", *flags])  # `vllm serve MODEL` puts the positional in --model
    return AsyncEngineArgs.from_cli_args(namespace)


def _launch(catalog: Catalog, spec: str, settings: dict[str, Any]) -> Launch:
    return choose(simulated(spec, FIXED_CPU), catalog, make_settings(**settings)).chosen.launch


CASES = {**{spec: (spec, {}) for spec in GPU_GOLDEN}, **EXTRA}


@pytest.mark.parametrize("case", list(CASES))
def test_vllms_parser_reads_back_every_argument(catalog: Catalog, case: str) -> None:
    spec, settings = CASES[case]
    launch = _launch(catalog, spec, settings)
    args = engine_args(launch)
    parsed = _parse(serve_flags(args))
    for key, value in args.items():
        read = getattr(parsed, key)
        if isinstance(value, dict) and not isinstance(read, dict):  # a config object: the fields we set
            read = {field: getattr(read, field) for field in value}
        assert read == value, f"{key}: rendered {value!r}, vLLM parsed {read!r}"


def test_the_golden_gpu_plans_cover_what_the_planner_decides(catalog: Catalog) -> None:
    launches = [_launch(catalog, *CASES[case]) for case in CASES]
    assert {launch.tensor_parallel_size for launch in launches} >= {1, 2, 4, 8}
    assert any(launch.online_quantization == "fp8" for launch in launches)
    assert any(launch.kv_cache_dtype == "fp8" for launch in launches)
    assert any("AWQ" in launch.model for launch in launches)  # a published AWQ checkpoint
    assert any(launch.trust_remote_code for launch in launches)
    assert any(launch.kv_cache_bytes is not None for launch in launches)  # the CPU's explicit KV cache
    assert any(launch.pipeline_parallel_size > 1 for launch in launches)  # across nodes, with Ray


@pytest.mark.parametrize("spec", ["1xH100", "2xL4"])
def test_each_engine_of_a_fleet_renders_its_share_and_gpus(catalog: Catalog, spec: str) -> None:
    from server.engine.vllm_args import engine_env
    from server.planner.fleet import plan_fleet

    fleet = plan_fleet(simulated(spec, FIXED_CPU), catalog, make_settings(role="completion,chat"))
    shares = []
    for served in fleet.served:
        launch = served.option.launch
        args = engine_args(launch)
        parsed = _parse(serve_flags(args))
        assert parsed.gpu_memory_utilization == args["gpu_memory_utilization"]
        shares.append(args["gpu_memory_utilization"])
        env = engine_env(launch)
        assert env == {"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in served.gpus)}
        # mapped through what the process itself was given
        assert engine_env(launch, visible="3,5")["CUDA_VISIBLE_DEVICES"] == ",".join(
            ["3", "5"][i] for i in served.gpus)
    if fleet.layout == "shared":
        assert sum(shares) <= 0.9


def test_flags_are_vllms_spelling() -> None:
    args = {"model": "m", "served_model_name": ["a"], "enforce_eager": False, "enable_prefix_caching": True,
            "max_model_len": 8192, "override_generation_config": {"temperature": 0}}
    assert serve_flags(args) == ["m", "--served-model-name", "a", "--no-enforce-eager", "--enable-prefix-caching",
                                 "--max-model-len", "8192", "--override-generation-config", '{"temperature": 0}']


def test_overrides_win_and_are_rendered(catalog: Catalog) -> None:
    args = engine_args(_launch(catalog, "2xA100-80GB", {}), {"distributed_executor_backend": "ray",
                                                             "tensor_parallel_size": 1})
    parsed = _parse(serve_flags(args))
    assert (parsed.distributed_executor_backend, parsed.tensor_parallel_size) == ("ray", 1)


def test_a_misspelt_argument_is_refused_by_vllm(catalog: Catalog) -> None:
    args = engine_args(_launch(catalog, "1xL4", {}), {"tensor_paralel_size": 2})
    with pytest.raises(SystemExit):  # argparse's refusal of an unknown flag
        _parse(serve_flags(args))


def test_cpu_binding_reaches_vllm_as_its_environment_variable(catalog: Catalog) -> None:
    """vLLM takes the binding only from VLLM_CPU_OMP_THREADS_BIND; its own parser reads the rendering back."""
    import vllm.utils.cpu_resource_utils as cr_utils

    from server.engine.vllm_args import engine_env, serve_command
    from server.planner.hardware import CpuInfo

    cpu = CpuInfo(cores=8, ram_total_bytes=64 * 2**30, ram_available_bytes=60 * 2**30,
                  core_cpus=tuple((i, i + 8) for i in range(8)))
    launch = choose(simulated("none", cpu), catalog, make_settings()).chosen.launch
    env = engine_env(launch)
    assert cr_utils.parse_id_list(env["VLLM_CPU_OMP_THREADS_BIND"]) == [0, 1, 2, 3, 4, 5, 6]
    assert serve_command(engine_args(launch), env).startswith("VLLM_CPU_OMP_THREADS_BIND=0,1,2,3,4,5,6 vllm serve ")
    # no binding planned (NUMA, or CODESERVE_CPU_CORES=engine): nothing is set, vLLM keeps its default
    engine_choice = choose(simulated("none", cpu), catalog, make_settings(cpu_cores="engine")).chosen.launch
    assert engine_env(engine_choice) == {}
    assert engine_env(_launch(catalog, "1xL4", {})) == {}  # GPUs: no CPU binding


@pytest.mark.parametrize("spec", ["1xT4", "1xA100-80GB"])
def test_retrieval_engines_render_vllms_pooling_runner(catalog: Catalog, spec: str) -> None:
    """Each retrieval engine of a four-role fleet: vLLM's pooling runner with the model's pooling, read back by vLLM's
    own parser (its PoolerConfig), no prefix cache, no structured-output backend, its share of its GPU."""
    from server.planner.fleet import plan_fleet

    fleet = plan_fleet(simulated(spec, FIXED_CPU), catalog, make_settings(role="completion,chat,embedding,rerank"))
    pooled = {s.role: s.option.launch for s in fleet.served if s.option.launch.pooling is not None}
    assert set(pooled) == {"embedding", "rerank"}
    for role, launch in pooled.items():
        args = engine_args(launch)
        assert args["runner"] == "pooling" and args["enable_prefix_caching"] is False
        assert "structured_outputs_config" not in args
        parsed = _parse(serve_flags(args))
        assert parsed.runner == "pooling"
        assert parsed.pooler_config.seq_pooling_type == ("LAST" if role == "embedding" else "CLS")
        assert parsed.gpu_memory_utilization == args["gpu_memory_utilization"] <= 0.25
