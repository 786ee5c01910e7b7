"""The impure edge of planning, shared by the entry points: settings -> catalog + model source + hardware ->
plan_fleet() (one role: choose() alone)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from . import model_source
from .engine.llamacpp_process import find_llama_server
from .planner import hardware
from .planner.catalog import Catalog, load_catalog
from .planner.fleet import Fleet, plan_fleet
from .planner.plan import Option
from .prepare import local_dir
from .quantize import runner as quantize_runner
from .quantize.recipe import Calibration, QuantSpec, fingerprint
from .settings import Settings


def local_models(settings: Settings, catalog: Catalog) -> frozenset[str]:
    """Catalog ids already present as Hugging Face directories under the cache dir, and models read from a local
    directory (CODESERVE_MODEL=/path: nothing to download)."""
    root = settings.cache_dir / "models"
    return frozenset(e.id for e in catalog.models
                     if (root / e.id / "config.json").is_file() or (Path(e.repo) / "config.json").is_file())


def quantized_checkpoints(settings: Settings, catalog: Catalog) -> frozenset[tuple[str, int]]:
    """(catalog id, group size) of the finished 4-bit checkpoints under the cache dir that the server would reuse:
    made from the source weights still there, by the current recipe (serve.py looks them up the same way)."""
    found = set()
    for marker in quantize_runner.quantized_root(settings.cache_dir).glob(f"*/{quantize_runner.COMPLETE_MARKER}"):
        try:
            made = json.loads(marker.read_text(encoding="utf-8"))
            entry = catalog.get(made["model_id"])
            if entry is None:
                continue
            local = local_dir(settings.cache_dir, entry)
            source = local if (local / "config.json").is_file() else Path(made["source_dir"])
            spec = QuantSpec(entry.id, fingerprint(source), group_size=int(made["group_size"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable, or its source weights are gone: the server could not reuse it either
        if find_checkpoint(settings.cache_dir, spec) is not None:
            found.add((entry.id, spec.group_size))
    return frozenset(found)


def find_checkpoint(cache_dir: Path, spec: QuantSpec) -> Path | None:
    """The finished checkpoint the server loads for `spec`: made by its recipe, else one that differs from it only in
    the calibration set's size (`codeserve quantize --samples/--seq-len`, the chart Job's `samples`/`seqLen`): same
    source weights, method, bits, group size and recipe version, which the key covers."""
    exact = quantize_runner.find(cache_dir, spec)
    if exact is not None:
        return exact
    pattern = f"{spec.model_id}-{spec.method}-w{spec.bits}g{spec.group_size}-*/{quantize_runner.COMPLETE_MARKER}"
    for marker in sorted(quantize_runner.quantized_root(cache_dir).glob(pattern)):
        try:
            made = json.loads(marker.read_text(encoding="utf-8"))
            other = replace(spec, calibration=Calibration(**made["calibration"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if other.key == made.get("key") and quantize_runner.find(cache_dir, other) == marker.parent:
            return marker.parent
    return None


def hub_cached_bytes() -> tuple[tuple[str, int], ...]:
    """(repo id, bytes on disk) of every model repo in the Hugging Face cache (HF_HOME / HF_HUB_CACHE), as
    huggingface_hub's own scan reads its layout (utils/_cache_manager.py, `scan_cache_dir`: complete blobs only, a
    partial download's `.incomplete` file is not counted)."""
    from huggingface_hub import scan_cache_dir

    try:
        scanned = scan_cache_dir()
    except Exception:  # no cache yet (CacheNotFound), unreadable: nothing to subtract
        return ()
    return tuple(sorted((repo.repo_id, repo.size_on_disk) for repo in scanned.repos if repo.repo_type == "model"))


def detect_and_plan(settings: Settings) -> Fleet:
    """Every role CODESERVE_ROLE names, planned for this machine (one role: a fleet of one)."""
    source = model_source.resolve(settings, load_catalog(settings.catalog_path))
    inventory = hardware.detect(settings.gpus, cache_dir=settings.cache_dir)
    if inventory.source != "simulated":  # a simulated machine's caches are not this one's (as its disk)
        inventory = replace(inventory, hub_cached_bytes=hub_cached_bytes())
    inventory = replace(inventory, llama_server=find_llama_server(settings.llama_server))
    pinned = source.pins.applied(settings)  # derived models replace the user's pins for planning only
    fleet = plan_fleet(inventory, source.catalog, pinned, local_models(settings, source.catalog), source.adapters,
                       quantized_checkpoints(settings, source.catalog))
    return replace(fleet, served=tuple(replace(s, plan=replace(s.plan, derived=source.facts)) for s in fleet.served))


def passed_over_to_quantize(fleet: Fleet) -> Option | None:
    """The best option any role's plan passed over for time because it would calibrate at start: what `codeserve
    quantize --passed-over` (the chart's quantization Job) makes, so that the next start plans it."""
    for served in fleet.served:
        for passed in served.plan.passed_over:
            if passed.option.start is not None and passed.option.start.quantize_s > 0:
                return passed.option
    return None
