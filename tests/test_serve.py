"""Start-up logic of `codeserve serve` without a model: the adapter's out-of-memory decision on vLLM's real
messages, the fallback it drives, what the server publishes afterwards, and settings that feed the server."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from server import serve
from server.api.app import build_app
from server.engine import vllm
from server.engine.base import EngineStartError
from server.fim.templates import TEMPLATES
from server.generation.core import fim_marker_problem
from server.metrics import Metrics
from server.planner.catalog import Catalog
from server.planner.choose import choose
from server.planner.fleet import Fleet
from server.planner.hardware import simulated
from server.planner.launch import Launch
from server.planner.plan import Plan
from tests.conftest import FIXED_CPU, make_settings
from tests.fake_engine import FakeEngine
from tests.serverutil import running

# vLLM 0.32's own start-up failures, copied from its source (file in the id), with the decision they must get.
VLLM_START_FAILURES = [
    ("No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the "
     "engine (this flag also controls CPU memory reservation on the CPU backend, despite its name).", True),
    ("To serve at least one request with the model's max seq len (32768), (6.00 GiB KV cache is needed, which is "
     "larger than the available KV cache memory (2.31 GiB). Based on the available memory, the estimated maximum "
     "model length is 12608. Try increasing `gpu_memory_utilization` (which also controls CPU memory on the CPU "
     "backend) or decreasing `max_model_len` when initializing the engine.", True),
    ("Free memory on device cuda:0 (20.1/79.2 GiB) on startup is less than desired GPU memory utilization (0.9, "
     "71.3 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes.", True),
    ("Available memory on node 0 (1.2/23.4 GiB) on kv cache allocation is less than requested memory for kv "
     "(3.00 GiB). Decrease --kv-cache-memory-bytes, VLLM_CPU_KVCACHE_SPACE, or reduce CPU memory used by other "
     "processes.", True),
    ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.03 GiB "
     "is free.", True),
    ("Model architectures ['CodeGenForCausalLM'] are not supported for now.", False),
    ("Cannot find model module. 'T5ForConditionalGeneration' is not a registered model.", False),
]
IDS = ["kv_cache_utils-no-blocks", "kv_cache_utils-max-len", "worker-utils-free-memory", "cpu_worker-kv",
       "torch-cuda-oom", "unsupported-architecture", "unregistered-model"]


class _AsyncLlmFailing:
    """Stands in for AsyncLLM.from_engine_args: raises what vLLM raises, and records what it was given."""

    def __init__(self, message: str):
        self.message = message
        self.args: list[Any] = []

    def __call__(self, engine_args: Any) -> Any:
        self.args.append(engine_args)
        raise ValueError(self.message)


@pytest.fixture
def failing_vllm(monkeypatch: pytest.MonkeyPatch):
    from vllm.v1.engine.async_llm import AsyncLLM

    def install(message: str) -> _AsyncLlmFailing:
        fake = _AsyncLlmFailing(message)
        monkeypatch.setattr(AsyncLLM, "from_engine_args", staticmethod(fake))
        return fake

    return install


@pytest.fixture
def gpu_plan(catalog: Catalog) -> Plan:
    # 1 x A100-80GB, chat: the choice and its fallbacks are all published or online-quantized checkpoints
    return choose(simulated("1xA100-80GB", FIXED_CPU), catalog, make_settings(role="chat", precision="fp8"))


@pytest.mark.parametrize(("message", "out_of_memory"), VLLM_START_FAILURES, ids=IDS)
def test_adapter_reads_out_of_memory_from_vllms_messages(failing_vllm, gpu_plan: Plan, message: str,
                                                         out_of_memory: bool) -> None:
    fake = failing_vllm(message)
    with pytest.raises(EngineStartError) as info:
        vllm.VllmEngine.start(gpu_plan.chosen.launch)
    assert info.value.out_of_memory is out_of_memory
    assert message in str(info.value)
    assert fake.args[0].model == gpu_plan.chosen.launch.model  # vLLM got the plan's engine arguments


class _FirstRunsOutOfMemory:
    """VllmEngine.start whose first call goes through the real adapter onto vLLM's KV-cache failure; later
    calls load the fake engine under the option's name."""

    def __init__(self, failing_vllm):
        self.failing_vllm = failing_vllm
        self.launches: list[Launch] = []

    def __call__(self, launch: Launch, overrides: dict[str, Any] | None = None) -> Any:
        self.launches.append(launch)
        if len(self.launches) == 1:
            self.failing_vllm(VLLM_START_FAILURES[1][0])
            return REAL_START(launch, overrides)
        return FakeEngine(model_id=launch.served_name, max_model_len=launch.max_model_len // 2)


REAL_START = vllm.VllmEngine.start


def test_after_an_out_of_memory_fallback_the_running_option_is_published(
        monkeypatch: pytest.MonkeyPatch, failing_vllm, gpu_plan: Plan, caplog, tmp_path: Path) -> None:
    starter = _FirstRunsOutOfMemory(failing_vllm)
    monkeypatch.setattr(vllm.VllmEngine, "start", staticmethod(starter))
    settings = make_settings(cache_dir=tmp_path)
    metrics = Metrics(CollectorRegistry())
    runtime = serve.make_runtime(settings, metrics)
    runtime.plan = gpu_plan
    with caplog.at_level(logging.WARNING, logger="codeserve"):
        asyncio.run(serve.load(runtime, Fleet.single(gpu_plan), settings))
    planned, running_option = gpu_plan.chosen, gpu_plan.fallbacks[0]
    assert runtime.status == "ready", runtime.detail
    assert [launch.served_name for launch in starter.launches] == [planned.model.id, running_option.model.id]
    assert "falling back to" in caplog.text
    with running(build_app(runtime, settings)) as url:
        published = httpx.get(url + "/v1/plan").json()
        models = httpx.get(url + "/v1/models").json()["data"]
        exposition = httpx.get(url + "/metrics").text
    assert published["model"]["id"] == running_option.model.id != planned.model.id
    assert [f["model"] for f in published["failed_to_start"]] == [planned.model.id]
    assert "larger than the available KV cache memory" in published["failed_to_start"][0]["error"]
    assert published["engine"]["max_model_len"] == running_option.max_model_len // 2  # the engine's, not the plan's
    assert [(m["id"], m["max_model_len"]) for m in models] == [(running_option.model.id,
                                                                running_option.max_model_len // 2)]
    info = re.search(r"^codeserve_plan_info\{(.*)\} 1\.0$", exposition, re.M)
    assert info is not None and f'model="{running_option.model.id}"' in info.group(1)
    assert f'max_model_len="{running_option.max_model_len // 2}"' in info.group(1)
    assert 'fallbacks_taken="1"' in info.group(1)


def test_other_start_errors_are_not_hidden(failing_vllm, gpu_plan: Plan, tmp_path: Path) -> None:
    failing_vllm(VLLM_START_FAILURES[-2][0])
    with pytest.raises(EngineStartError, match="not supported") as info:
        serve.start_engine(gpu_plan, make_settings(cache_dir=tmp_path))
    assert not info.value.out_of_memory


class _SplitsMarkers(FakeEngine):
    """A tokenizer that does not know the FIM markers: each character is a token."""

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) for c in text]


def test_fim_markers_are_checked_against_the_served_tokenizer() -> None:
    assert fim_marker_problem(FakeEngine(), TEMPLATES["qwen"]) is None
    problem = fim_marker_problem(_SplitsMarkers(), TEMPLATES["qwen"])
    assert problem is not None and "<|fim_prefix|>" in problem and "single tokens" in problem


def test_a_model_whose_tokenizer_splits_its_fim_markers_fails_to_start(
        monkeypatch: pytest.MonkeyPatch, catalog: Catalog, tmp_path: Path) -> None:
    plan = choose(simulated("1xL4", FIXED_CPU), catalog, make_settings())
    assert plan.chosen.model.fim == "qwen"
    engine = _SplitsMarkers(model_id=plan.chosen.model.id)
    monkeypatch.setattr(vllm.VllmEngine, "start", staticmethod(lambda launch, overrides=None: engine))
    runtime = serve.make_runtime(make_settings(cache_dir=tmp_path), None)
    asyncio.run(serve.load(runtime, Fleet.single(plan), make_settings(cache_dir=tmp_path)))
    assert runtime.status == "failed" and "<|fim_prefix|>" in runtime.detail
    assert runtime.cores == ()


class _TokenizerFailsToLoad(FakeEngine):
    """An engine up and warm whose chat template cannot be read: llama.cpp's Transformers tokenizer, which loads
    beside llama-server, raised (a tokenizer_config.json that is not JSON)."""

    shut = False

    def chat_prompt(self, *args: Any, **kwargs: Any) -> str:
        raise OSError("tokenizer_config.json: Expecting value: line 1 column 1")

    def template_takes_tools(self, template: str | None = None) -> bool:  # the generation core asks at start
        raise OSError("tokenizer_config.json: Expecting value: line 1 column 1")

    async def shutdown(self) -> None:
        self.shut = True


def test_an_engine_that_fails_after_warming_up_is_reported_failed_and_shut_down(
        monkeypatch: pytest.MonkeyPatch, catalog: Catalog, tmp_path: Path) -> None:
    """Not left on 'loading' for ever: what serving the engine needs (its chat template, read by the generation
    core) fails like a start does."""
    settings = make_settings(engine="vllm")  # the shared cache: the bundled model is converted for vLLM once
    plan = choose(simulated("none", FIXED_CPU), catalog, settings)
    assert plan.chosen.model.fim is None  # the bundled instruct model: the core reads its chat template's markers
    engine = _TokenizerFailsToLoad(model_id=plan.chosen.model.id)
    monkeypatch.setattr(vllm.VllmEngine, "start", staticmethod(lambda launch, overrides=None: engine))
    runtime = serve.make_runtime(settings, None)
    asyncio.run(serve.load(runtime, Fleet.single(plan), settings))
    assert runtime.status == "failed" and "tokenizer_config.json" in runtime.detail
    assert engine.shut and not runtime.engine and runtime.cores == ()


class _WarmsUpForEver(FakeEngine):
    shut = False

    async def generate(self, prompt: Any, sampling: Any, request_id: str) -> Any:
        await asyncio.Event().wait()
        yield None

    async def shutdown(self) -> None:
        self.shut = True


def test_a_server_stopped_while_warming_up_stops_the_engine_it_started(
        monkeypatch: pytest.MonkeyPatch, catalog: Catalog, tmp_path: Path) -> None:
    plan = choose(simulated("1xL4", FIXED_CPU), catalog, make_settings())
    engine = _WarmsUpForEver(model_id=plan.chosen.model.id)
    monkeypatch.setattr(vllm.VllmEngine, "start", staticmethod(lambda launch, overrides=None: engine))
    runtime = serve.make_runtime(make_settings(cache_dir=tmp_path), None)

    async def stop_while_loading() -> None:
        task = asyncio.create_task(serve.load(runtime, Fleet.single(plan), make_settings(cache_dir=tmp_path)))
        while runtime.phase != "loading" or "warming" not in runtime.detail:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(stop_while_loading())
    assert engine.shut and runtime.cores == ()


def test_api_keys_from_variable_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# team keys\nfile-key-1\n\nfile-key-2\n")
    monkeypatch.setenv("CODESERVE_API_KEYS", "env-a, env-b")
    monkeypatch.setenv("CODESERVE_API_KEYS_FILE", str(keys))
    settings = make_settings()
    assert settings.all_api_keys() == ["env-a", "env-b", "file-key-1", "file-key-2"]
    assert "env-a" not in repr(settings)  # SecretStr: never printed or logged


def test_engine_args_from_the_environment_are_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODESERVE_ENGINE_ARGS", '{"pipeline_parallel_size": 2}')
    assert make_settings().engine_args == {"pipeline_parallel_size": 2}


def test_engine_args_override_reaches_vllm(failing_vllm, catalog: Catalog, tmp_path: Path) -> None:
    option = choose(simulated("2xA100-80GB", FIXED_CPU), catalog, make_settings(precision="fp8")).chosen
    fake = failing_vllm(VLLM_START_FAILURES[0][0])
    settings = make_settings(cache_dir=tmp_path, engine_args={"distributed_executor_backend": "ray"})
    with pytest.raises(EngineStartError):
        serve.start_engine(Plan(option, 8, simulated("2xA100-80GB", FIXED_CPU)), settings)
    assert fake.args[0].distributed_executor_backend == "ray"
    assert fake.args[0].model == option.launch.model and fake.args[0].quantization == "fp8"


class _Exits:
    """Stands in for uvicorn's server: what the watchdog sets on it."""

    should_exit = False
    exit_code = 0


def test_watchdog_exits_3_after_the_engine_died(catalog: Catalog) -> None:
    from tests.api.conftest import ready_runtime

    engine = FakeEngine()
    runtime, settings = ready_runtime(catalog, engine, failure_exit_s=0.0)
    server = _Exits()

    async def scenario() -> None:
        watcher = asyncio.create_task(serve.watch(runtime, settings, server))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        assert not watcher.done() and runtime.status == "ready"
        engine.kill("the engine core process exited (killed)")
        await asyncio.wait_for(watcher, timeout=5)

    asyncio.run(scenario())
    assert (server.should_exit, server.exit_code) == (True, serve.EXIT_ENGINE_FAILED)
    assert runtime.phase == "failed" and "killed" in runtime.detail
    assert runtime.status == "failed" and "killed" in runtime.detail


def test_a_failed_load_is_named_on_ready_and_health(monkeypatch: pytest.MonkeyPatch, failing_vllm,
                                                     gpu_plan: Plan, tmp_path: Path) -> None:
    failing_vllm(VLLM_START_FAILURES[-1][0])
    settings = make_settings(cache_dir=tmp_path)
    runtime = serve.make_runtime(settings, Metrics(CollectorRegistry()))
    runtime.plan = gpu_plan
    asyncio.run(serve.load(runtime, Fleet.single(gpu_plan), settings))
    with running(build_app(runtime, settings), ready_path="/openapi.json") as url:
        ready, health = httpx.get(url + "/ready"), httpx.get(url + "/health")
        completion = httpx.post(url + "/v1/completions", json={"prompt": "x"})
    assert ready.status_code == 503 and ready.json()["status"] == "failed"
    assert "not a registered model" in ready.json()["detail"]
    assert health.status_code == 503 and "not a registered model" in health.json()["detail"]
    assert completion.status_code == 503 and "failed to load" in completion.json()["error"]["message"]


def test_sigterm_marks_the_server_draining(catalog: Catalog) -> None:
    import uvicorn

    from server.api.errors import NotReady
    from tests.api.conftest import ready_runtime

    runtime, settings = ready_runtime(catalog, FakeEngine())
    server = serve._Server(uvicorn.Config(build_app(runtime, settings)), runtime)
    server.handle_exit(15, None)
    assert server.should_exit and runtime.status == "stopping" and not runtime.ready
    with pytest.raises(NotReady, match="shutting down"):
        runtime.require_ready()


def test_shutdown_timeout_cuts_a_stream_that_runs_longer(catalog: Catalog) -> None:
    import threading
    import time

    import uvicorn

    from tests.api.conftest import ready_runtime
    from tests.serverutil import free_port, wait_until

    runtime, settings = ready_runtime(catalog, FakeEngine(token_delay_s=0.1), shutdown_timeout_s=1.0)
    port = free_port()
    config = uvicorn.Config(build_app(runtime, settings), host="127.0.0.1", port=port, log_level="warning",
                            timeout_graceful_shutdown=int(settings.shutdown_timeout_s))
    server = serve._Server(config, runtime)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_until(lambda: server.started)
    received: list[str] = []

    def long_stream() -> None:  # 300 tokens x 0.1 s: far past the 1 s allowed
        body = {"prompt": "x", "max_tokens": 300, "stream": True}
        try:
            with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=30) as r:
                received.extend(line for line in r.iter_lines() if line.startswith("data: "))
        except httpx.HTTPError:
            received.append("cut")

    client = threading.Thread(target=long_stream)
    client.start()
    assert wait_until(lambda: len(runtime.cores[0].engine._running) == 1)  # type: ignore[union-attr]
    started = time.monotonic()
    server.handle_exit(15, None)
    thread.join(timeout=15)
    client.join(timeout=15)
    assert not thread.is_alive() and time.monotonic() - started < 10
    assert runtime.status == "stopping"
    assert "data: [DONE]" not in received  # cut off, not finished: 300 tokens would take 30 s


def _phase(metrics: Metrics) -> tuple[str, float | None]:
    """The phase codeserve_start_phase says (exactly one at 1) and its codeserve_start_progress_ratio, if any."""
    from server.metrics import START_PHASES

    (phase,) = [p for p in START_PHASES if metrics.registry.get_sample_value("codeserve_start_phase", {"phase": p})]
    assert all(metrics.registry.get_sample_value("codeserve_start_progress_ratio", {"phase": p}) is None
               for p in START_PHASES if p != phase)
    return phase, metrics.registry.get_sample_value("codeserve_start_progress_ratio", {"phase": phase})


def test_ready_shows_what_a_long_start_step_is_doing(monkeypatch: pytest.MonkeyPatch, catalog: Catalog,
                                                     tmp_path: Path) -> None:
    """While the server quantizes at start, /ready says the phase, the share of layers calibrated, and the quantizer's
    latest progress line; the metrics say the same; a start that fails turns the phase to failed."""
    settings = make_settings(cache_dir=tmp_path)
    plan = choose(simulated("1xL4", FIXED_CPU), catalog, settings)
    metrics = Metrics(CollectorRegistry())
    runtime = serve.make_runtime(settings, metrics)
    seen: list[tuple[int, dict[str, Any], tuple[str, float | None]]] = []
    line = "calibrate layer 3/30 elapsed 20s eta 180s"

    def start(plan: Plan, settings: Any, progress: Any = None, fetch: Any = None) -> Any:
        progress("quantizing", f"quantizing x to 4-bit: {line}", serve.quantize_progress(line))
        with running(build_app(runtime, settings)) as url:
            response = httpx.get(url + "/ready")
            seen.append((response.status_code, response.json(), _phase(metrics)))
        raise EngineStartError("stop here")

    monkeypatch.setattr(serve, "start_engine", start)
    asyncio.run(serve.load(runtime, Fleet.single(plan), settings))
    assert seen == [(503, {"status": "loading", "phase": "quantizing", "progress": 0.1,
                           "detail": f"quantizing x to 4-bit: {line}"}, ("quantizing", 0.1))]
    assert runtime.status == "failed" and runtime.detail == "stop here"
    assert (runtime.phase, _phase(metrics)) == ("failed", ("failed", None))


@pytest.mark.parametrize(("line", "progress"), [
    ("calibrate layer 3/30 elapsed 20s eta 180s", 0.1),
    ("calibrate layer 30/30 elapsed 200s", 1.0),
    ("load 0/1", None),  # the worker's other stages: no share of the calibration is known
    ("gate 4/24 samples elapsed 9s eta 45s", None),
])
def test_quantization_progress_is_the_share_of_layers_calibrated(line: str, progress: float | None) -> None:
    assert serve.quantize_progress(line) == progress


def test_each_start_phase_is_on_ready_and_in_the_metrics(monkeypatch: pytest.MonkeyPatch, catalog: Catalog,
                                                         tmp_path: Path) -> None:
    """The real start with the fake engine: a Hub repo is downloaded first (bytes done of the total), then loaded and
    warmed up, then served; each phase is on /ready and in codeserve_start_phase while it lasts."""
    settings = make_settings(cache_dir=tmp_path)
    plan = choose(simulated("1xL4", FIXED_CPU), catalog, make_settings(cache_dir=tmp_path, precision="bf16"))
    assert not plan.chosen.needs_quantization and plan.chosen.launch.model == plan.chosen.model.repo
    metrics = Metrics(CollectorRegistry())
    runtime = serve.make_runtime(settings, metrics)
    assert (runtime.phase, _phase(metrics)) == ("loading", ("loading", None))
    seen: list[tuple[str, Any, float | None, tuple[str, float | None]]] = []

    def fetch(repo: str, report: Any) -> Path:
        report(0, 4_000_000_000)
        report(1_000_000_000, 4_000_000_000)
        with running(build_app(runtime, settings), ready_path="/openapi.json") as url:
            ready = httpx.get(url + "/ready")
        seen.append(("fetch", ready.json(), runtime.progress, _phase(metrics)))
        return tmp_path

    def start(launch: Launch, overrides: Any = None) -> FakeEngine:
        seen.append(("start", runtime.detail, runtime.progress, _phase(metrics)))
        return FakeEngine(model_id=plan.chosen.model.id)

    monkeypatch.setattr(vllm.VllmEngine, "start", staticmethod(start))
    asyncio.run(serve.load(runtime, Fleet.single(plan), settings, fetch))
    repo = plan.chosen.model.repo
    assert seen == [
        ("fetch", {"status": "loading", "phase": "downloading", "progress": 0.25,
                   "detail": f"downloading {repo}: 1.0 of 4.0 GB"}, 0.25, ("downloading", 0.25)),
        ("start", f"loading {plan.chosen.model.id} (bf16) into vllm", None, ("loading", None)),
    ]
    assert (runtime.status, runtime.phase, runtime.detail, _phase(metrics)) == ("ready", "serving", "",
                                                                               ("serving", None))
    with running(build_app(runtime, settings)) as url:
        ready = httpx.get(url + "/ready")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "phase": "serving", "progress": None,
                                                         "detail": ""}


def _fleet_runtime(catalog: Catalog, spec: str, monkeypatch: pytest.MonkeyPatch,
                   fail: str | None = None) -> tuple[Any, Any, dict[str, FakeEngine]]:
    """load() over a two-role fleet, each engine a FakeEngine named after the option it was asked to start."""
    from server.planner.fleet import plan_fleet

    settings = make_settings(role="completion,chat")
    fleet = plan_fleet(simulated(spec, FIXED_CPU), catalog, settings)
    started: dict[str, FakeEngine] = {}

    def start(plan: Plan, settings: Any, progress: Any = None, fetch: Any = None) -> Any:
        model = plan.chosen.model.id
        if model == fail:
            raise EngineStartError(f"{model} did not start")
        started[model] = FakeEngine(model_id=model)
        return started[model], plan

    monkeypatch.setattr(serve, "start_engine", start)
    runtime = serve.make_runtime(settings, Metrics(CollectorRegistry()))
    asyncio.run(serve.load(runtime, fleet, settings))
    return runtime, fleet, started


def test_load_starts_every_engine_of_the_fleet(monkeypatch: pytest.MonkeyPatch, catalog: Catalog) -> None:
    runtime, fleet, started = _fleet_runtime(catalog, "2xL4", monkeypatch)
    assert runtime.status == "ready" and list(started) == [s.option.model.id for s in fleet.served]
    assert [core.served.id for core in runtime.cores] == list(started)
    assert runtime.roles["chat"].served.id == fleet.served[1].option.model.id
    with running(build_app(runtime, make_settings())) as url:
        plan = httpx.get(url + "/v1/plan").json()
        exposition = httpx.get(url + "/metrics").text
    assert plan["roles"] == ["completion", "chat"] and len(plan["engines"]) == 2
    for served in fleet.served:
        assert re.search(rf'^codeserve_plan_info{{[^}}]*model="{served.option.model.id}"[^}}]*role="{served.role}"',
                         exposition, re.M)
        assert f'codeserve_engine_unfinished_requests{{model="{served.option.model.id}"}} 0.0' in exposition


def test_one_engine_failing_to_start_stops_the_others(monkeypatch: pytest.MonkeyPatch, catalog: Catalog) -> None:
    chat = "qwen2.5-coder-7b-instruct"
    runtime, _, started = _fleet_runtime(catalog, "2xL4", monkeypatch, fail=chat)
    assert runtime.status == "failed" and chat in runtime.detail and runtime.cores == ()
    (completion,) = started.values()
    assert completion.num_unfinished_requests() == 0 and completion.dead() is None  # shut down, not leaked


def test_cpu_serves_both_roles_from_one_engine(monkeypatch: pytest.MonkeyPatch, catalog: Catalog) -> None:
    runtime, _, started = _fleet_runtime(catalog, "none", monkeypatch)
    assert len(started) == 1 and len(runtime.cores) == 1
    assert runtime.roles["completion"] is runtime.roles["chat"] is runtime.cores[0]


def test_a_failed_gguf_conversion_serves_the_file_as_stored(monkeypatch: pytest.MonkeyPatch, catalog: Catalog,
                                                             tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The bundled Q4_1 is planned as Q8_0; a cache dir that cannot take the converted file (full, read-only) costs
    prompt speed, not the start: llama-server loads the shipped file, and the log says why."""
    from server.engine import gguf_convert
    from tests.engine.test_gguf_convert import write_q4_1
    from tests.planner.test_engine_choice import GGUF, _catalog, _cpu

    shipped = write_q4_1(tmp_path / "shipped.Q4_1.gguf")
    plan = choose(_cpu(), _catalog(catalog, GGUF.model_copy(update={"path": str(shipped)})), make_settings())
    assert plan.chosen.launch.weights_type == "Q8_0"
    settings = make_settings(cache_dir=tmp_path / "cache")
    monkeypatch.setattr(serve, "gguf_tokenizer_dir", lambda cache, path: tmp_path / "tokenizer")
    converted = serve.resolved_launch(plan.chosen, settings)
    assert converted.model.endswith(".Q8_0.gguf") and Path(converted.model).is_file()

    def full(source: Path, target: str, cache_dir: Path) -> Path:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf_convert, "convert", full)
    with caplog.at_level(logging.WARNING):
        launch = serve.resolved_launch(plan.chosen, make_settings(cache_dir=tmp_path / "other"))
    assert (launch.model, launch.weights_type) == (str(shipped), "Q4_1")
    assert "No space left on device" in caplog.text and "as stored" in caplog.text
