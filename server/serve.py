"""`codeserve serve`: settings -> hardware -> plan -> model directory -> engine (vLLM, or Transformers for the
architectures vLLM refuses) -> HTTP.

The HTTP server comes up first so that /health answers during a long model load; /ready turns 200
once the engine has loaded and answered a warm-up request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import uvicorn
from fastapi import FastAPI
from prometheus_client import REGISTRY

from .api.app import build_app
from .api.auth import KeyCheck
from .api.chat.serving import Chat
from .api.limits import Limiter
from .api.runtime import Runtime
from .api.supersession import Supersession
from .engine import gguf_convert
from .engine.base import Engine, EngineStartError, Pooler, SamplingSettings
from .evaluation import gate
from .fim.templates import template_for
from .generation.core import GenerationCore, fim_marker_problem
from .generation.served import ServedModel
from .metrics import Metrics
from .planner import hardware
from .planner.fleet import Fleet
from .planner.launch import Launch
from .planner.plan import NoFit, Option, Plan, StartFailure
from .planner.startup import describe_minutes
from .planning import detect_and_plan, find_checkpoint
from .prepare import (
    DownloadReport,
    fetch_from_hub,
    gguf_tokenizer_dir,
    is_complete,
    local_dir,
    resolve_model_dir,
    source_dir,
)
from .quantize import runner as quantize_runner
from .quantize.recipe import QuantSpec, fingerprint
from .roles import role_spec
from .settings import Settings

log = logging.getLogger("codeserve")
# (phase, what it does in words, progress 0..1 or None where unmeasured): the start's phases as Runtime.enter takes them
Progress = Callable[[str, str, "float | None"], None]
# Fetches a Hub repo into the Hugging Face cache before the engine starts, reporting bytes (prepare.fetch_from_hub);
# `serve` passes it, so tests of the start that plan Hub repos never reach the network.
Fetch = Callable[[str, "DownloadReport | None"], Path]
LAYER_PROGRESS = re.compile(r"\blayer (\d+)/(\d+)\b")  # quantize/worker.py's calibration lines


def _silent(phase: str, detail: str, progress: float | None = None) -> None:
    pass


def _downloading(repo: str, progress: Progress) -> DownloadReport:
    def report(done: int, total: int) -> None:
        progress("downloading", f"downloading {repo}: {done / 1e9:.1f} of {total / 1e9:.1f} GB",
                 done / total if total else None)
    return report


def resolved_launch(option: Option, settings: Settings, progress: Progress | None = None,
                    fetch: Fetch | None = None) -> Launch:
    """The option's Launch with its weights made concrete: our 4-bit checkpoint when the plan needs one
    nobody publishes, else a local directory where there is one, else the repo id (fetched into the Hugging Face
    cache first with `fetch`, so that /ready can say how far the download is)."""
    report = progress or _silent
    if option.launch.engine == "llamacpp":  # the GGUF file, in the type the plan chose; codeserve tokenizes
        bundled = local_dir(settings.cache_dir, option.model)
        source = Path(option.launch.model)
        tokenizer = bundled if option.model.bundled and is_complete(bundled) else gguf_tokenizer_dir(
            settings.cache_dir, source)
        stored = option.model.gguf.weights_type if option.model.gguf else None
        weights = option.launch.weights_type
        if weights is not None and weights != stored:
            try:
                source = gguf_convert.convert(source, weights, settings.cache_dir)
            except OSError as exc:  # a full or read-only cache dir costs prompt speed, not the start
                log.warning("converting %s to %s failed (%s): serving it as stored (%s), its prompts prefill slower; "
                            "free space in CODESERVE_CACHE_DIR", source.name, weights, exc, stored)
                weights = stored
        return replace(option.launch, model=str(source), tokenizer=str(tokenizer), weights_type=weights)
    if option.needs_quantization:
        checkpoint = _quantized(option, settings, report)
        _check_quality(option, checkpoint, settings)
        return replace(option.launch, model=str(checkpoint))
    launch = option.launch
    if launch.model == option.model.repo:  # no prequantized repo chosen: prefer a local directory
        launch = replace(launch, model=resolve_model_dir(settings.cache_dir, option.model, settings.model))
    if fetch is not None and not Path(launch.model).is_dir() and not os.environ.get("HF_HUB_OFFLINE"):
        try:
            fetch(launch.model, _downloading(launch.model, report))
        except Exception as exc:  # the engine downloads it itself, as before; only the progress is lost
            log.warning("fetching %s ahead of the engine failed (%s); the engine will download it", launch.model, exc)
    return launch


class QualityRefused(EngineStartError):
    """The 4-bit checkpoint lost more quality than CODESERVE_QUANT_MAX_QUALITY_LOSS allows: try the next option."""


def _spec(option: Option, settings: Settings, report: DownloadReport | None = None) -> tuple[QuantSpec, Path]:
    group = option.awq_group_size or option.model.prequantized.awq_group_size
    source = source_dir(settings.cache_dir, option.model, settings.model, report)
    return QuantSpec(option.model.id, fingerprint(source), group_size=group), source


def quantized_quality(option: Option, settings: Settings) -> gate.Quality | None:
    """The gate's scores of the option's cached 4-bit checkpoint, if it was made already (for `plan`)."""
    try:
        checkpoint = find_checkpoint(settings.cache_dir, _spec(option, settings)[0])
    except Exception:  # no local source weights yet: nothing was quantized either
        return None
    return gate.judge(checkpoint) if checkpoint is not None else None


def _check_quality(option: Option, checkpoint: Path, settings: Settings) -> None:
    if settings.quant_quality_gate == "off":
        return
    quality = gate.judge(checkpoint)
    if quality is None:
        log.info("the 4-bit checkpoint %s has no quality scores (made without the gate)", checkpoint)
        return
    message = f"{option.model.id}: {quality.describe()}"
    if quality.loss <= settings.quant_max_quality_loss:
        log.info("quality gate passed: %s", message)
        return
    over = f"{message}, over CODESERVE_QUANT_MAX_QUALITY_LOSS={settings.quant_max_quality_loss}"
    if settings.quant_quality_gate == "refuse":
        raise QualityRefused(f"{over}; refusing it (CODESERVE_QUANT_QUALITY_GATE=warn would serve it)")
    log.warning("%s; serving it anyway (CODESERVE_QUANT_QUALITY_GATE=refuse falls back to the plan's next "
                "option)", over)


def _quantized(option: Option, settings: Settings, progress: Progress) -> Path:
    """The 4-bit checkpoint the option needs: cached, or made now (CODESERVE_AUTO_QUANTIZE), or refused."""
    entry = option.model
    spec, source = _spec(option, settings, _downloading(entry.repo, progress))
    group = spec.group_size
    command = f"codeserve quantize {entry.id} --group-size {group} --tp {option.tensor_parallel_size}"
    existing = find_checkpoint(settings.cache_dir, spec)
    if existing is not None:
        return existing
    if not settings.auto_quantize:
        raise EngineStartError(f"the plan needs a 4-bit checkpoint of {entry.id} that no one publishes and "
                               f"CODESERVE_AUTO_QUANTIZE=false; run `{command}` first, or allow auto-quantization")
    expect = f"expect ~{describe_minutes(option.start.quantize_s)} (the plan's estimate)" if option.start else \
        "no estimate"
    log.warning("the plan picked %s at AWQ 4-bit (%s) and no published checkpoint exists: quantizing it now "
                "(AWQ W4A16 g%d, %d code samples; %s; the result is cached in %s)", entry.id, option.device_name,
                group, spec.calibration.samples, expect, quantize_runner.quantized_root(settings.cache_dir))
    evaluation = gate.job_for(template_for(entry.fim), settings)
    progress("quantizing", f"quantizing {entry.id} to 4-bit", None)

    def report(line: str) -> None:
        log.info("quantize: %s", line)
        progress("quantizing", f"quantizing {entry.id} to 4-bit: {line}", quantize_progress(line))

    return quantize_runner.quantize(spec, source, settings.cache_dir, report, settings.torch_index,
                                    evaluation=evaluation)


def quantize_progress(line: str) -> float | None:
    """How far calibration is, from the worker's `layer i/n` lines; None for its other stages (loading, the gate)."""
    match = LAYER_PROGRESS.search(line)
    return int(match.group(1)) / int(match.group(2)) if match and int(match.group(2)) else None


def start_engine(plan: Plan, settings: Settings, progress: Progress | None = None,
                 fetch: Fetch | None = None) -> tuple[Engine, Plan]:
    """Start the chosen option; on out-of-memory or a refused 4-bit checkpoint, the plan's next fallback (said
    in the log). Returns the engine and the plan as it turned out (the option running, the ones that failed).
    `progress` hears each phase (downloading, quantizing, loading) and how far it is."""
    from .engine.hf import TransformersEngine
    from .engine.hf_pooling import TransformersPooler
    from .engine.llamacpp import LlamaCppEngine
    from .engine.vllm import VllmEngine  # the only import of the vLLM adapter

    if settings.engine_args:
        log.info("CODESERVE_ENGINE_ARGS overrides the plan's engine arguments: %s", settings.engine_args)
    failures: list[StartFailure] = []
    for option in plan.options:
        if failures:
            log.warning("falling back to %s %s tp=%d after: %s", option.model.id, option.precision,
                        option.tensor_parallel_size, failures[-1].error)
        adapter: Any = VllmEngine  # vLLM's generate or pooling runner, as the launch says
        if option.launch.engine == "transformers":
            adapter = TransformersPooler if option.launch.pooling else TransformersEngine
        name = "LlamaCppEngine" if option.launch.engine == "llamacpp" else adapter.__name__
        log.info("starting %s: %s %s tp=%d on %s", name, option.model.id, option.launch.weights_type or
                 option.precision, option.tensor_parallel_size, option.device_name)
        try:
            launch = resolved_launch(option, settings, progress, fetch)
            weights = option.launch.weights_type or option.precision
            (progress or _silent)("loading", f"loading {option.model.id} ({weights}) into {launch.engine}", None)
            engine: Engine = LlamaCppEngine.start(launch, plan.inventory.llama_server) if \
                option.launch.engine == "llamacpp" else adapter.start(launch, settings.engine_args)
            return engine, plan.started(option, failures)
        except EngineStartError as exc:
            if not (exc.out_of_memory or isinstance(exc, QualityRefused)):
                raise
            failures.append(StartFailure(option, str(exc)))
    raise EngineStartError(f"no option of the plan could start; last error: {failures[-1].error}")


WARM_UP_PROMPT = "def fibonacci(n):\n    " * 64  # ~512 tokens: the first large prefill sets kernels up


async def warm_up(engine: Engine, pooling: str | None = None) -> None:
    """One short and one long request before /ready, so no client pays for first-use kernel setup
    (measured here: the first 700-token prefill on CPU took 20 s, the next 2 s)."""
    if pooling is not None:  # a retrieval engine: one short and one long input through its forward pass
        pooler = cast(Pooler, engine)
        if pooling == "score":
            await pooler.score([pooler.pair("def", "def"), pooler.pair("def", WARM_UP_PROMPT)], "warmup-score")
        else:
            long = engine.tokenize(WARM_UP_PROMPT)[:max(1, engine.max_model_len - 2)]
            await pooler.embed([engine.tokenize("def"), long], None, "warmup-embed")
        return
    # an engine without first-use setup (llama.cpp: engine/llamacpp.py) needs only the short one
    prompts = (("warmup-short", "def"), ("warmup-long", WARM_UP_PROMPT))[:2 if getattr(engine, "first_use_setup",
                                                                                     True) else 1]
    for rid, prompt in prompts:
        ids = engine.tokenize(prompt)[:max(1, engine.max_model_len - 2)]  # a model of a short context takes less
        async for _ in engine.generate(ids, SamplingSettings(max_tokens=2, temperature=0), rid):
            pass


async def load(runtime: Runtime, fleet: Fleet, settings: Settings, fetch: Fetch | None = None) -> None:
    """Start every engine the fleet plans, one after another (the smaller share first, so the next sees what is
    really free), check and warm each, then serve them all at once; if one fails, none is served. Each phase
    (downloading, quantizing, loading, then serving or failed) is on /ready and in the metrics as it happens."""
    started: list[tuple[tuple[str, ...], Engine, Plan]] = []
    try:
        for group in fleet.engines():  # each engine's launch names its GPUs where several share the machine
            # runtime.enter from the start's thread: plain attributes and prometheus_client's locked gauges
            engine, plan = await asyncio.to_thread(start_engine, group[0].plan, settings, runtime.enter, fetch)
            started.append((tuple(s.role for s in group), engine, plan))
            problem = fim_marker_problem(engine, template_for(plan.chosen.model.fim))
            if problem is not None:
                raise EngineStartError(problem)
            runtime.enter("loading", f"warming {plan.chosen.model.id} up")
            await warm_up(engine, plan.chosen.launch.pooling)
        _publish(runtime, fleet, settings, started)
    except asyncio.CancelledError:  # the server stops while loading: the engines started so far stop with it
        for _, engine, _ in started:
            await engine.shutdown()
        raise
    except Exception as exc:  # reported on /ready; the process stays up so operators can read it
        log.exception("the engine failed to start")
        for _, engine, _ in started:
            await engine.shutdown()
        runtime.status, runtime.engine, runtime.cores, runtime.roles = "failed", {}, (), {}
        runtime.enter("failed", str(exc))
        return
    runtime.status = "ready"
    runtime.enter("serving")
    if runtime.metrics is not None:
        runtime.metrics.ready.set(1)


def _publish(runtime: Runtime, fleet: Fleet, settings: Settings, started: list[tuple[tuple[str, ...], Engine, Plan]]
             ) -> None:
    """Serve the started engines: what runs, not what was planned (the options that started and the engines' own
    numbers). Reading a served model's tokenizer and chat template can still fail here, as a start does."""
    runtime.fleet = fleet.started([plan for _, _, plan in started])
    # the generation engines first (retrieval ones started first): /v1/models lists them first, and clients that
    # read data[0] (Continue's vllm provider) find the completion model there
    started.sort(key=lambda item: item[2].chosen.launch.pooling is not None)
    runtime.plan = started[0][2]
    runtime.engine = started[0][1].describe()
    for roles, engine, plan in started:
        entry = plan.chosen.model
        adapters = tuple(name for name, _ in plan.chosen.launch.lora_adapters)
        served = ServedModel(entry.id, entry, engine.max_model_len, adapters=adapters)
        # the template override goes to the engine chat requests reach (the only one, or the chat role's)
        chats = any(Chat.name in role_spec(role).endpoints for role in roles)
        template = settings.chat_template_text() if chats or len(started) == 1 else None
        runtime.serve(GenerationCore(engine, served, settings.hole_fill, template), roles)
        if runtime.metrics is not None:
            for role in roles:
                runtime.metrics.set_plan(plan, engine.describe()["name"], engine.max_model_len, role)
            runtime.metrics.serve_model(entry.id, engine.num_unfinished_requests)
            for adapter in adapters:  # their requests are counted under their own name
                runtime.metrics.serve_model(adapter)
        log.info("ready: serving %s (%s) on %s", entry.id, ", ".join(roles), plan.chosen.device_name)


def make_runtime(settings: Settings, metrics: Metrics | None) -> Runtime:
    return Runtime(limiter=Limiter(settings.max_concurrent_requests, settings.max_queued_requests),
                   keys=KeyCheck(settings.all_api_keys()), metrics=metrics,
                   supersession=Supersession() if settings.supersede else None)


# Exit status when the engine died or never loaded: the orchestrator restarts the process (2 is a plan that
# cannot fit, which a restart would not change).
EXIT_ENGINE_FAILED = 3
WATCH_INTERVAL_S = 1.0  # vLLM flags a dead engine core at once; a second's delay costs nothing


class _Server(uvicorn.Server):
    """Flags the runtime as stopping as soon as SIGTERM arrives, so /ready turns 503 while draining."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime):
        super().__init__(config)
        self.runtime = runtime
        self.exit_code = 0

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.runtime.status != "failed":
            self.runtime.status = "stopping"
        super().handle_exit(sig, frame)


async def watch(runtime: Runtime, settings: Settings, server: _Server) -> None:
    """When the engine dies (its process killed, out of memory) or never loads, /health and /ready turn 503
    with the reason; after CODESERVE_FAILURE_EXIT_S the process exits with status 3 to be restarted."""
    while runtime.check_engine() is None:
        await asyncio.sleep(WATCH_INTERVAL_S)
    log.error("the engine cannot serve: %s; exiting in %.0f s (CODESERVE_FAILURE_EXIT_S) to be restarted",
              runtime.detail, settings.failure_exit_s)
    await asyncio.sleep(settings.failure_exit_s)
    server.exit_code = EXIT_ENGINE_FAILED
    server.should_exit = True


def serve(settings: Settings) -> int:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        fleet = detect_and_plan(settings)
    except NoFit as exc:
        log.error("%s", exc)
        return 2
    metrics = Metrics(REGISTRY)
    if fleet.inventory.source == "nvml":
        metrics.watch_gpus(hardware.gpu_memory_poller())
    runtime = make_runtime(settings, metrics)
    runtime.plan, runtime.fleet = fleet.served[0].plan, fleet

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(load(runtime, fleet, settings, fetch_from_hub))
        watcher = asyncio.create_task(watch(runtime, settings, server))
        runtime.tasks.update((task, watcher))
        yield
        if runtime.status != "failed":
            runtime.status = "stopping"
        task.cancel()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # a load cut short stops the engines it started
        for core in runtime.cores:
            await core.engine.shutdown()
            log.info("engine stopped: %s", core.served.id)

    app = build_app(runtime, settings)
    app.router.lifespan_context = lifespan
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            timeout_graceful_shutdown=int(settings.shutdown_timeout_s), access_log=False)
    server = _Server(config, runtime)
    server.run()
    return server.exit_code
