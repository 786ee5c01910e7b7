"""`codeserve plan`'s report: a plan or a fleet as the text an operator reads and as the JSON `--json` prints (the
engine's arguments as it would take them)."""

from __future__ import annotations

import shlex
from typing import Any

from .engine import vllm_args
from .engine.llamacpp_process import server_args
from .planner.catalog import Retrieval
from .planner.fleet import Fleet
from .planner.memory import GIB, active_params
from .planner.plan import Option, Plan
from .planner.startup import describe_minutes
from .settings import Settings


def _gib(value: int) -> str:
    return f"{value / GIB:6.1f}"


def quality_report(result: Plan, settings: Settings) -> dict[str, Any] | None:
    """For a plan that quantizes: the gate's scores of the checkpoint if it exists, else what will happen."""
    if not result.chosen.needs_quantization:
        return None
    from .serve import quantized_quality  # the web stack is imported only here

    quality = quantized_quality(result.chosen, settings)
    gate = {"gate": settings.quant_quality_gate, "max_loss": settings.quant_max_quality_loss}
    if quality is None:
        return {**gate, "measured": False}
    return {**gate, "measured": True, **quality.to_dict(), "summary": quality.describe()}


def _start(option: Option, steps: bool = True) -> str:
    """The option's estimated time to serve, in words (and its steps)."""
    if option.start is None:
        return "time to serve not estimated"
    how = f" ({', '.join(option.start.steps)})" if steps else ""
    return f"~{describe_minutes(option.start.total_s)} to serve{how}"


def print_plan(result: Plan, show_all: bool, quality: dict[str, Any] | None = None) -> None:
    chosen = result.chosen
    inv = result.inventory
    gpus = ", ".join(f"{g.index}:{g.name}" for g in inv.gpus) or f"none (CPU, {inv.cpu.cores} cores)"
    print(f"hardware  {gpus}   [{inv.source}]")
    for note in inv.notes:
        print(f"          {note}")
    for fact in result.derived:
        print(f"derived   {fact}")
    quant = " (quantize: no published checkpoint)" if chosen.needs_quantization else ""
    pp = ""
    if chosen.pipeline_parallel_size > 1:
        pp = (f"  layers over {chosen.pipeline_parallel_size} GPUs (device_map)" if chosen.launch.engine ==
              "transformers" else f"  pp={chosen.pipeline_parallel_size} (one stage per node)")
    precision = chosen.launch.weights_type or chosen.precision  # a GGUF file's own type (llama.cpp)
    print(f"chosen    {chosen.model.id}  {precision}{quant}  tp={chosen.tensor_parallel_size}{pp}  "
          f"replicas={chosen.replicas}  on {chosen.device_name}")
    retrieval = chosen.model.retrieval
    active = active_params(chosen.model.architecture) if chosen.model.architecture.moe else None
    size = f"{chosen.model.params / 1e9:.2f}B params" + (f" ({active / 1e9:.2f}B active)" if active else "")
    if retrieval is not None:
        print(f"          {size}, license {chosen.model.license}, {result.max_model_len} tokens an input "
              f"(CODESERVE_MAX_INPUT_TOKENS)")
        print(f"retrieval {_retrieval(retrieval)}")
    else:
        print(f"          {size}, {chosen.model.score}, license {chosen.model.license}, context "
              f"{result.max_model_len} x {result.max_concurrent_sequences} sequences")
        print(f"tools     {chosen.model.tool_calling}")
    if quality is not None:
        if quality["measured"]:
            verdict = "over the limit" if quality["loss"] > quality["max_loss"] else "within the limit"
            print(f"quality   {quality['summary']}; {verdict} ({quality['max_loss']:.0%}, gate: {quality['gate']})")
        else:
            print(f"quality   4-bit scored against the source after quantizing (gate: {quality['gate']}, "
                  f"max loss {quality['max_loss']:.0%})")
    m = chosen.memory
    print("memory    per device (GiB):  weights  kv_cache  activation  overhead   total  budget  headroom")
    print(f"                          {_gib(m.weights)}  {_gib(m.kv_cache)}      {_gib(m.activation)}    "
          f"{_gib(m.overhead)}  {_gib(m.total)}  {_gib(m.budget)}    {_gib(m.headroom)}")
    print(f"          KV capacity {chosen.kv_cache_capacity_tokens} tokens ({chosen.kv_bytes_per_token} B/token)")
    if m.lora:
        launch = chosen.launch
        print(f"          LoRA {', '.join(name for name, _ in launch.lora_adapters)}: {launch.max_loras} slots of rank "
              f"{launch.max_lora_rank}, {m.lora / GIB:.2f} GiB (in the total)")
    if chosen.latency is not None and retrieval is None:  # a decode estimate means nothing to a forward pass
        est = chosen.latency
        print(f"latency   ~{est.decode_ms_per_token:.1f} ms/token decode, ~{est.ttft_ms:.0f} ms to first token for a "
              f"{est.prompt_tokens}-token prompt (estimate: {est.basis})")
    print(f"start     {_start(chosen)}")
    for note in result.notes:
        print(f"note      {note}")
    print(f"engine    {_vllm(result)['command']}")
    print(f"fallbacks ({len(result.fallbacks)})")
    for option in result.fallbacks:
        speed = f"  ~{option.latency.decode_ms_per_token:.1f} ms/token" if option.latency else ""
        pp = f" pp={option.pipeline_parallel_size}" if option.pipeline_parallel_size > 1 else ""
        print(f"          {option.model.id:34s} {option.precision:5s} tp={option.tensor_parallel_size}{pp} "
              f"{option.memory.total / GIB:6.1f} GiB{speed}  {_start(option, steps=False)}")
    if result.passed_over:
        print(f"passed over for time ({len(result.passed_over)})")
    for passed in result.passed_over:
        option = passed.option
        where = f"tp={option.tensor_parallel_size}"
        print(f"          {option.model.id:34s} {option.precision:5s} {where} {_start(option)}")
        print(f"          {'':34s} unlock: {passed.unlock}")
    rejected = result.rejected if show_all else [r for r in result.rejected if r.precision is not None]
    limit = None if show_all else 15
    print(f"rejected  ({len(result.rejected)}; --all lists model-level exclusions too)")
    for r in rejected[:limit]:
        where = f"{r.precision or '*'} tp={r.tensor_parallel_size or '*'}"
        print(f"          {r.model:34s} {where:12s} {r.reason}")


def _vllm(result: Plan, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The plan's Launch as its engine would take it (before the weights are resolved to a local directory)."""
    launch = result.chosen.launch
    if launch.engine == "transformers":
        args = {"model": launch.model, "dtype": launch.dtype, "device": launch.device,
                "max_num_seqs": launch.max_num_seqs, "max_model_len": launch.max_model_len}
        where = launch.device + (f" x {launch.pipeline_parallel_size}" if launch.pipeline_parallel_size > 1 else "")
        return {"name": "transformers", "args": args, "env": {},
                "command": f"(in process) Transformers generate() on {launch.model}, {launch.dtype} on {where}, "
                           f"dynamic batches of up to {launch.max_num_seqs} sequences"}
    if launch.engine == "llamacpp":
        flags = server_args(launch, "PORT")  # codeserve picks a free local port at start
        pin = ["taskset", "-c", ",".join(map(str, launch.cpu_cores))] if launch.cpu_cores else []
        return {"name": "llama.cpp", "args": flags, "env": {},
                "command": " ".join(shlex.quote(flag) for flag in [*pin, "llama-server", *flags])}
    args = vllm_args.engine_args(launch, overrides)
    env = vllm_args.engine_env(launch)
    command = vllm_args.serve_command(args, env)
    if launch.lora_adapters:  # `vllm serve` names them up front; codeserve passes each with its requests
        command += " --lora-modules " + " ".join(f"{name}={path}" for name, path in launch.lora_adapters)
    return {"name": "vllm", "args": args, "env": env, "command": command}


def plan_json(result: Plan, settings: Settings) -> dict[str, Any]:
    return {**result.to_dict(), "engine": _vllm(result, settings.engine_args),
            "quantization_quality": quality_report(result, settings)}


def _retrieval(retrieval: Retrieval) -> str:
    if retrieval.dimensions is None:
        return f"cross-encoder: one relevance score a query-document pair ({retrieval.pooling} token's classifier)"
    widths = (f", Matryoshka widths from {min(retrieval.matryoshka_dimensions)}" if retrieval.matryoshka_dimensions
              else "")
    prefix = f"; queries prefixed {retrieval.query_prefix!r} (the card's format)" if retrieval.query_prefix else ""
    return (f"{retrieval.dimensions}-dimensional vectors{widths}, {retrieval.pooling} pooling"
            f"{', normalised' if retrieval.normalized else ''}{prefix}")


def print_fleet(fleet: Fleet, show_all: bool, settings: Settings) -> None:
    layouts = {"separate": "each role on its own GPUs", "shared": "both roles share the GPUs, each engine its own "
               "memory share", "one-engine": "one engine serves both roles (CPU)"}
    beside = [s.role for s in fleet.served if s.option.launch.pooling is not None]
    where = ("the last GPU" if fleet.inventory.gpus else "the CPU") if beside else ""
    extra = f"; {', '.join(beside)} beside them, each its own engine on {where}" if beside and len(beside) < len(
        fleet.served) else ""
    print(f"roles     {', '.join(fleet.roles)}: {layouts.get(fleet.layout, fleet.layout)}{extra}")
    for served in fleet.served:
        gpus = ",".join(str(i) for i in served.gpus) or "CPU"
        share = served.option.launch.gpu_memory_fraction
        print(f"\n=== {served.role} (engine {served.engine}, GPUs {gpus}"
              f"{f', memory share {share:.2f}' if share is not None else ''}) ===")
        print_plan(served.plan, show_all, quality_report(served.plan, settings))
