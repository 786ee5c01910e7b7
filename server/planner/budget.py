"""CODESERVE_MAX_START_MINUTES: each option's time to serve, the options this machine cannot start (host RAM or disk
for quantizing), and the larger options passed over because they would start too slowly. Pure, like choose()."""

from __future__ import annotations

import math
from dataclasses import replace

from . import startup
from .hardware import Inventory
from .plan import Option, PassedOver, Rejection
from .startup import Cache, Host, describe_minutes

MAX_PASSED_OVER = 3


def host_for(option: Option, inventory: Inventory) -> Host:
    """Where the option's quantization would run: its GPUs (the slowest of that name), else the CPU."""
    tflops = [g.tflops_16bit for g in inventory.gpus if g.name == option.device_name and g.tflops_16bit]
    return Host(device=option.device, ram_total_bytes=inventory.cpu.ram_total_bytes,
                disk_free_bytes=inventory.disk_free_bytes, tflops_16bit=min(tflops) if tflops else None)


def with_starts(options: list[Option], inventory: Inventory, cache: Cache, download_mb_per_s: float,
                rejected: list[Rejection], auto_quantize: bool = True) -> list[Option]:
    """Each option with its start estimate; those this machine cannot start are rejected with the reason (host RAM or
    disk for calibrating, or calibration switched off)."""
    kept = []
    cache = replace(cache, hub=inventory.hub_cached_bytes)
    for option in options:
        host = host_for(option, inventory)
        start = startup.estimate(option.model, option.precision, option.awq_group_size, option.needs_quantization,
                                 cache, host, download_mb_per_s * 1e6)
        problem = startup.host_problem(start, host)
        if not problem and start.quantize_s and not auto_quantize:
            problem = (f"no 4-bit checkpoint is published or cached and CODESERVE_AUTO_QUANTIZE=false: run `codeserve "
                       f"quantize {option.model.id} --group-size {option.awq_group_size} --tp "
                       f"{option.tensor_parallel_size}` first, or allow auto-quantization")
        if problem:
            rejected.append(Rejection(option.model.id, option.precision, option.tensor_parallel_size, problem))
        else:
            kept.append(replace(option, start=start))
    return kept


def _seconds(option: Option) -> float:
    return option.start.total_s if option.start else 0.0


def unlock(option: Option) -> str:
    """How to make a passed-over option start within the budget next time."""
    start = option.start
    assert start is not None
    entry = option.model
    faster = f"then restart: it starts in ~{describe_minutes(start.load_s)}"
    if start.quantize_s:
        made = (f"run `codeserve quantize {entry.id} --group-size {option.awq_group_size} --tp "
                f"{option.tensor_parallel_size}` to cache the 4-bit checkpoint, "
                f"{faster}")
    elif start.download_bytes and option.launch.model == entry.repo:
        made = (f"put its weights in CODESERVE_CACHE_DIR/models/{entry.id} (`hf download {entry.repo} --local-dir "
                f"...`), {faster}")
    else:
        made = f"a faster link (CODESERVE_DOWNLOAD_MB_PER_S) shortens its {start.download_bytes / 1e9:.0f} GB download"
    return f"{made}; or raise CODESERVE_MAX_START_MINUTES to {math.ceil(start.minutes)}"


def within(ranked: list[Option], max_minutes: float,
           rejected: list[Rejection]) -> tuple[list[Option], tuple[PassedOver, ...], str]:
    """The ranked options that start within `max_minutes` (when none does: the quickest, and a note saying so), the
    better-ranked ones passed over for time with how to unlock each, and a note."""
    budget_s = max_minutes * 60
    fast = [o for o in ranked if _seconds(o) <= budget_s]
    for option in ranked:
        if _seconds(option) > budget_s and option.start is not None:
            rejected.append(Rejection(option.model.id, option.precision, option.tensor_parallel_size,
                                      f"estimated time to serve {describe_minutes(option.start.total_s)} > "
                                      f"CODESERVE_MAX_START_MINUTES={max_minutes:g} ({', '.join(option.start.steps)})"))
    if not fast:
        quickest = min(ranked, key=_seconds)
        return [quickest], (), (f"no option starts within CODESERVE_MAX_START_MINUTES={max_minutes:g}: serving the "
                                f"quickest to start, {quickest.model.id} {quickest.precision} (estimated "
                                f"{describe_minutes(_seconds(quickest))})")
    first = ranked.index(fast[0])
    passed: list[PassedOver] = []
    seen: set[tuple[str, str]] = set()
    for option in ranked[:first]:
        if (option.model.id, option.precision) not in seen and len(passed) < MAX_PASSED_OVER:
            seen.add((option.model.id, option.precision))
            passed.append(PassedOver(option, unlock(option)))
    note = ""
    if passed:
        top = passed[0].option
        note = (f"passed over {top.model.id} {top.precision} tp={top.tensor_parallel_size} for time: estimated "
                f"{describe_minutes(_seconds(top))} to serve > CODESERVE_MAX_START_MINUTES={max_minutes:g}; "
                f"to unlock it: {passed[0].unlock}")
    return fast, tuple(passed), note
