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
from .prepare import local_dir
from .quantize import runner as quantize_runner
from .quantize.recipe import QuantSpec, fingerprint
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
        if quantize_runner.find(settings.cache_dir, spec) is not None:
            found.add((entry.id, spec.group_size))
    return frozenset(found)


def detect_and_plan(settings: Settings) -> Fleet:
    """Every role CODESERVE_ROLE names, planned for this machine (one role: a fleet of one)."""
    source = model_source.resolve(settings, load_catalog(settings.catalog_path))
    inventory = hardware.detect(settings.gpus, cache_dir=settings.cache_dir)
    inventory = replace(inventory, llama_server=find_llama_server(settings.llama_server))
    pinned = source.pins.applied(settings)  # derived models replace the user's pins for planning only
    fleet = plan_fleet(inventory, source.catalog, pinned, local_models(settings, source.catalog), source.adapters,
                       quantized_checkpoints(settings, source.catalog))
    return replace(fleet, served=tuple(replace(s, plan=replace(s.plan, derived=source.facts)) for s in fleet.served))
