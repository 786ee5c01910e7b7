"""The impure edge of planning, shared by the entry points: settings -> catalog + model source + hardware ->
plan_fleet() (one role: choose() alone)."""

from __future__ import annotations

from dataclasses import replace

from . import model_source
from .planner import hardware
from .planner.catalog import Catalog, load_catalog
from .planner.fleet import Fleet, plan_fleet
from .settings import Settings


def local_models(settings: Settings, catalog: Catalog) -> frozenset[str]:
    """Catalog ids already present as Hugging Face directories under the cache dir."""
    root = settings.cache_dir / "models"
    return frozenset(e.id for e in catalog.models if (root / e.id / "config.json").is_file())


def detect_and_plan(settings: Settings) -> Fleet:
    """Every role CODESERVE_ROLE names, planned for this machine (one role: a fleet of one)."""
    source = model_source.resolve(settings, load_catalog(settings.catalog_path))
    inventory = hardware.detect(settings.gpus)
    pinned = source.pins.applied(settings)  # derived models replace the user's pins for planning only
    fleet = plan_fleet(inventory, source.catalog, pinned, local_models(settings, source.catalog), source.adapters)
    return replace(fleet, served=tuple(replace(s, plan=replace(s.plan, derived=source.facts)) for s in fleet.served))
