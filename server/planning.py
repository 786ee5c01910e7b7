"""The impure edge of planning, shared by the entry points: settings -> catalog + hardware -> plan()."""

from __future__ import annotations

from .planner import hardware
from .planner.catalog import Catalog, load_catalog
from .planner.plan import Plan, plan
from .settings import Settings


def local_models(settings: Settings, catalog: Catalog) -> frozenset[str]:
    """Catalog ids already present as Hugging Face directories under the cache dir."""
    root = settings.cache_dir / "models"
    return frozenset(e.id for e in catalog.models if (root / e.id / "config.json").is_file())


def make_plan(settings: Settings) -> Plan:
    catalog = load_catalog(settings.catalog_path)
    inventory = hardware.detect(settings.gpus)
    return plan(inventory, catalog, settings, local_models(settings, catalog))
