"""Several roles on one inventory (CODESERVE_ROLE=completion,chat): a fill-in-the-middle model for completion,
chosen for latency, and an instruct model for chat, the largest that fits in what is left. Pure, like choose().

What each role qualifies with, its objective, share cap, start order and model pin are its row in server/roles.py;
this module plans a pair of roles: the one that starts first ("small", with a share cap) and the one that takes
the rest ("large"). Separate GPUs when there are at least two: the split that gives the large role the largest
model wins (then the small one's). Otherwise both share the same GPUs: the small role takes the smallest share its
option needs (at most its cap of the budget), the large one gets the rest; each engine gets its own memory share
and their sum stays within CODESERVE_GPU_MEMORY_UTILIZATION (vLLM's gpu_memory_utilization is a per-instance share
of the GPU, so two engines on one GPU each take theirs). On the CPU one engine serves both roles: two copies of
the same small model would only halve the cores each gets. Retrieval roles (embedding, rerank) are planned first,
each its own engine beside these (_with_retrieval, at the end).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from ..roles import DEFAULT_ROLE, ROLE_NAMES, Role, RoleSpec, generation_roles, retrieval_roles, role_spec
from ..settings import Settings
from . import candidates as rules
from .adapters import Adapter
from .catalog import Catalog
from .choose import choose
from .hardware import GpuInfo, Inventory
from .memory import GIB
from .plan import NoFit, Option, Plan

Layout = Literal["single", "separate", "shared", "one-engine"]


@dataclass(frozen=True)
class Served:
    """One role: its plan, the GPUs (device indices) its engine uses and the share of each it may take."""

    role: Role
    plan: Plan
    gpus: tuple[int, ...]  # () on the CPU
    engine: int  # index of the engine that serves it (roles on one engine share the index)

    @property
    def option(self) -> Option:
        return self.plan.chosen

    def to_dict(self) -> dict[str, Any]:
        chosen = self.option
        return {
            "role": self.role,
            "model": chosen.model.id,
            "precision": chosen.precision,
            "tensor_parallel_size": chosen.tensor_parallel_size,
            "pipeline_parallel_size": chosen.pipeline_parallel_size,
            "replicas": chosen.replicas,
            "gpus": list(self.gpus),
            "engine": self.engine,
            "memory": {"per_gpu_bytes": chosen.memory.to_dict(),
                       "gpu_memory_fraction": chosen.launch.gpu_memory_fraction},
            "start": chosen.start.to_dict() if chosen.start else None,
            "latency": chosen.latency.to_dict() if chosen.latency else None,
            "plan": self.plan.to_dict(),
        }


@dataclass(frozen=True)
class Fleet:
    served: tuple[Served, ...]
    inventory: Inventory
    layout: Layout

    @classmethod
    def single(cls, plan: Plan, role: Role = DEFAULT_ROLE) -> Fleet:
        """One role, one engine: the GPUs are whatever the process sees."""
        return cls((Served(role, plan, (), 0),), plan.inventory, "single")

    @property
    def roles(self) -> tuple[Role, ...]:
        return tuple(s.role for s in self.served)

    def engines(self) -> list[list[Served]]:
        """The roles grouped by the engine that serves them, in start order (roles.py's start_order: the smaller
        share starts first, so the larger one sees what is really free)."""
        groups: dict[int, list[Served]] = {}
        for served in self.served:
            groups.setdefault(served.engine, []).append(served)
        return [groups[key] for key in sorted(groups)]

    def started(self, plans: list[Plan]) -> Fleet:
        """The fleet as it turned out: each engine's plan after any fallback, in engines() order."""
        turned = {group[0].engine: plan for group, plan in zip(self.engines(), plans, strict=True)}
        return replace(self, served=tuple(replace(s, plan=turned[s.engine]) for s in self.served))

    def to_dict(self) -> dict[str, Any]:
        return {
            "roles": list(self.roles),
            "layout": self.layout,
            "served": [s.to_dict() for s in self.served],
            "inventory": {"source": self.inventory.source,
                          "gpus": [{"index": g.index, "name": g.name, "total_bytes": g.total_bytes} for g in
                                   self.inventory.gpus],
                          "cpu": asdict(self.inventory.cpu)},
        }


@dataclass(frozen=True)
class _Planned:
    """A role of the pair and the settings it is planned with."""

    spec: RoleSpec
    settings: Settings
    adapters: tuple[Adapter, ...]


def _planned(settings: Settings, spec: RoleSpec, adapters: tuple[Adapter, ...]) -> _Planned:
    """The role's own objective and model pin (its row in roles.py), and the LoRA adapters if its engine takes them."""
    objective = settings.objective if spec.follows_objective and settings.objective != "auto" else spec.fleet_objective
    update = {"role": spec.name, "objective": objective, "model": getattr(settings, spec.model_setting)}
    return _Planned(spec, settings.model_copy(update=update), adapters if spec.lora_adapters else ())


def _pair(settings: Settings, adapters: tuple[Adapter, ...]) -> tuple[_Planned, _Planned]:
    """The two roles in start order."""
    specs = sorted((role_spec(role) for role in settings.roles), key=lambda spec: spec.start_order)
    if len(specs) != 2:
        raise NoFit(f"CODESERVE_ROLE={settings.role} names {len(specs)} roles; the fleet planner plans one role or "
                    f"two at once (of {', '.join(ROLE_NAMES)})", [])
    small, large = (_planned(settings, spec, adapters) for spec in specs)
    return small, large


def _in_table_order(*served: Served) -> tuple[Served, ...]:
    return tuple(sorted(served, key=lambda s: ROLE_NAMES.index(s.role)))


def _pinned(plan: Plan, gpus: tuple[int, ...]) -> Plan:
    """The plan with every option's engine pinned to `gpus` (it shares the machine with another engine)."""
    def pin(option: Option) -> Option:
        return replace(option, launch=replace(option.launch, devices=gpus))

    return replace(plan, chosen=pin(plan.chosen), fallbacks=[pin(o) for o in plan.fallbacks])


def _served(planned: _Planned, plan: Plan, gpus: tuple[int, ...], engine: int) -> Served:
    return Served(planned.spec.name, _pinned(plan, gpus), gpus, engine)


def _subset(inventory: Inventory, gpus: list[GpuInfo]) -> Inventory:
    return replace(inventory, gpus=tuple(gpus))


def _used(plan: Plan, inventory: Inventory) -> tuple[int, ...]:
    """Device indices the chosen option's copies occupy: whole TP groups of its GPU type, in order."""
    chosen = plan.chosen
    same = [g.index for g in inventory.gpus if g.name == chosen.device_name]
    return tuple(same[:chosen.tensor_parallel_size * (chosen.replicas if chosen.pipeline_parallel_size == 1 else 1)])


def _one_engine(plan: Plan) -> Plan:
    """In a fleet each role runs one engine in this server: no replicas (GPUs it does not use stay idle, and the
    split search counts them against the layout)."""
    return replace(plan, chosen=replace(plan.chosen, replicas=1),
                   fallbacks=[replace(o, replicas=1) for o in plan.fallbacks])


def plan_fleet(inventory: Inventory, catalog: Catalog, settings: Settings,
               local_models: frozenset[str] = frozenset(), adapters: tuple[Adapter, ...] = (),
               quantized: frozenset[tuple[str, int]] = frozenset()) -> Fleet:
    """Plan every role CODESERVE_ROLE names; one role is choose() alone; retrieval roles (embedding, rerank) first,
    beside the others (_with_retrieval). LoRA adapters go on the engine of the role
    whose row takes them (completion), or the single role's. Served roles are listed in table order. `quantized`: the
    cache's finished 4-bit checkpoints, (catalog id, group size)."""
    roles = settings.roles
    if retrieval_roles(roles):
        return _with_retrieval(inventory, catalog, settings, local_models, adapters, quantized)
    if len(roles) == 1:
        plan = choose(inventory, catalog, settings, local_models, adapters, quantized)
        return Fleet((Served(roles[0], plan, _used(plan, inventory), 0),), inventory, "single")
    small, large = _pair(settings, adapters)
    if not inventory.gpus:  # the role that starts first plans the one engine, which takes the adapters
        plan = choose(inventory, catalog, small.settings, local_models, adapters, quantized)
        return Fleet(_in_table_order(*(Served(p.spec.name, plan, (), 0) for p in (small, large))), inventory,
                     "one-engine")
    if len(inventory.gpus) >= 2:
        fleet = _separate(inventory, catalog, small, large, local_models, quantized)
        if fleet is not None:
            return fleet
    return _shared(inventory, catalog, small, large, local_models, quantized)


def _splits(gpus: tuple[GpuInfo, ...]) -> list[tuple[list[GpuInfo], list[GpuInfo]]]:
    """(the small role's GPUs, the large role's): the small one takes 1, 2 or 4 GPUs from either end of the list."""
    splits = []
    for count in (1, 2, 4):
        if count < len(gpus):
            splits.append((list(gpus[:count]), list(gpus[count:])))
            splits.append((list(gpus[-count:]), list(gpus[:-count])))
    return splits


def _separate(inventory: Inventory, catalog: Catalog, small: _Planned, large: _Planned,
              local_models: frozenset[str], quantized: frozenset[tuple[str, int]] = frozenset()) -> Fleet | None:
    best: tuple[tuple[float, ...], Fleet] | None = None
    for mine, theirs in _splits(inventory.gpus):
        try:
            fast = _one_engine(choose(_subset(inventory, mine), catalog, small.settings, local_models, small.adapters,
                                        quantized))
            big = _one_engine(choose(_subset(inventory, theirs), catalog, large.settings, local_models,
                                     large.adapters, quantized))
        except NoFit:
            continue
        served = (_served(small, fast, _used(fast, _subset(inventory, mine)), 0),
                  _served(large, big, _used(big, _subset(inventory, theirs)), 1))
        idle = len(inventory.gpus) - sum(len(s.gpus) for s in served)
        # the large role's model and precision first, then the small one's, then the fewest idle GPUs
        score = (rules.effective_params(big.chosen.model), -rules.PRECISION_ORDER.index(big.chosen.precision),
                 rules.effective_params(fast.chosen.model), -rules.PRECISION_ORDER.index(fast.chosen.precision),
                 -idle)
        fleet = Fleet(_in_table_order(*served), inventory, "separate")
        if best is None or score > best[0]:
            best = (score, fleet)
    return best[1] if best else None


def share_of(option: Option, gpu: GpuInfo) -> float:
    """The smallest memory share (two decimals, rounded up) that holds what the option needs on this GPU."""
    return math.ceil(option.memory.total / gpu.total_bytes * 100) / 100


def _shrunk(plan: Plan, gpu: GpuInfo) -> Plan:
    """The small role's plan with its engine's share cut to what the option needs, so the rest is the large one's."""
    option = plan.chosen
    fraction = share_of(option, gpu)
    budget = int(gpu.total_bytes * fraction)
    memory = replace(option.memory, budget=budget)
    capacity = (budget - memory.weights - memory.activation - memory.overhead) // option.kv_bytes_per_token
    shrunk = replace(option, memory=memory, kv_cache_capacity_tokens=capacity,
                     launch=replace(option.launch, gpu_memory_fraction=fraction))
    return replace(plan, chosen=shrunk, fallbacks=[])  # a fallback would need another share: re-plan instead


def _shared(inventory: Inventory, catalog: Catalog, small: _Planned, large: _Planned,
            local_models: frozenset[str], quantized: frozenset[tuple[str, int]] = frozenset()) -> Fleet:
    utilization = small.settings.gpu_memory_utilization
    capped = small.settings.model_copy(update={"gpu_memory_utilization": utilization * small.spec.max_share})
    fast = choose(inventory, catalog, capped, local_models, small.adapters, quantized)
    gpus = _used(fast, inventory)[:fast.chosen.tensor_parallel_size]  # one copy: the rest of the GPUs are large's
    first = next(g for g in inventory.gpus if g.index == gpus[0])
    fast = _shrunk(replace(fast, chosen=replace(fast.chosen, replicas=1)), first)
    fraction = fast.chosen.launch.gpu_memory_fraction or 0.0
    taken = {index: int(first.total_bytes * fraction) for index in gpus}
    left = _subset(inventory, [replace(g, free_bytes=g.free_bytes - taken.get(g.index, 0)) for g in inventory.gpus])
    rest = round(utilization - fraction, 2)
    if rest <= 0:
        raise NoFit(f"{small.spec.name}'s {fast.chosen.model.id} takes the whole budget; nothing is left for "
                    f"{large.spec.name}", [])
    big = _one_engine(choose(left, catalog, large.settings.model_copy(update={"gpu_memory_utilization": rest}),
                             local_models, large.adapters, quantized))
    return Fleet(_in_table_order(_served(small, fast, gpus, 0), _served(large, big, _used(big, left), 1)), inventory,
                 "shared")


# --- retrieval roles beside the generation roles ------------------------------------------------------------------
# Embedding models and rerankers are small (0.1-8B) and take one forward pass per input: each gets one engine of its
# own, in a small share (roles.py max_share) of ONE GPU, the last of the inventory (a lone GPU: the one everybody
# shares), with the share cut to what its option needs; the generation roles are then planned on what is left, that
# GPU's budget lowered by the shares taken, so the engines on it stay within CODESERVE_GPU_MEMORY_UTILIZATION together.
# On the CPU each retrieval role runs its own engine (the Transformers engine, planner/choose.py) beside the one
# generation engine. Retrieval engines start first: the generation engines then see what is really free.


# The most a retrieval engine takes of a GPU, whatever its share cap allows: a 4B embedding model in 16-bit with its
# batch (~10 GiB). On a GPU shared with chat, an 8B one (~17 GiB) would cost chat a model size (measured on the
# 1xA100-80GB inventory: chat 14B -> 7B) for a few points of retrieval quality.
RETRIEVAL_MAX_BYTES = 12 * GIB


def _retrieval_settings(planned: _Planned) -> Settings:
    """A retrieval engine's cache holds one batch of inputs, not sequences that grow: one sequence of its context."""
    return planned.settings.model_copy(update={"max_concurrent_sequences": 1, "speculative": "off"})


def _with_retrieval(inventory: Inventory, catalog: Catalog, settings: Settings, local_models: frozenset[str],
                    adapters: tuple[Adapter, ...], quantized: frozenset[tuple[str, int]]) -> Fleet:
    specs = sorted((role_spec(role) for role in retrieval_roles(settings.roles)), key=lambda spec: spec.start_order)
    served: list[Served] = []
    left = inventory
    for engine, spec in enumerate(specs):
        planned = _planned(settings, spec, ())
        own = _retrieval_settings(planned)
        if not inventory.gpus:
            plan = choose(inventory, catalog, own, local_models, (), quantized)
            served.append(Served(spec.name, plan, (), engine))
            continue
        plan, left = _beside(left, catalog, spec, own, local_models, quantized)
        served.append(Served(spec.name, plan, plan.chosen.launch.devices or (), engine))
    rest = generation_roles(settings.roles)
    if rest:
        generation = plan_fleet(left, catalog, settings.model_copy(update={"role": ",".join(rest)}), local_models,
                                adapters, quantized)
        for item in generation.served:
            plan = item.plan
            if inventory.gpus and generation.layout == "single":  # it shares the machine now: pin its GPUs
                plan = _pinned(_one_engine(plan), item.gpus)
            served.append(replace(item, plan=plan, engine=item.engine + len(specs)))
        layout = generation.layout
    else:
        layout = "single" if len(specs) == 1 else ("one-engine" if not inventory.gpus else "shared")
    return Fleet(_in_table_order(*served), inventory, layout)


def _beside(inventory: Inventory, catalog: Catalog, spec: RoleSpec, settings: Settings, local_models: frozenset[str],
            quantized: frozenset[tuple[str, int]]) -> tuple[Plan, Inventory]:
    """A retrieval role's plan in its share of the last GPU, and the inventory the others plan on after it."""
    gpu = inventory.gpus[-1]
    utilization = settings.gpu_memory_utilization
    share = min(utilization * spec.max_share, RETRIEVAL_MAX_BYTES / gpu.total_bytes)
    capped = settings.model_copy(update={"gpu_memory_utilization": max(0.01, share)})
    try:
        plan = choose(_subset(inventory, [gpu]), catalog, capped, local_models, (), quantized)
    except NoFit as exc:
        raise NoFit(f"role {spec.name}: nothing fits in its share ({spec.max_share:.0%} of the budget) of GPU "
                    f"{gpu.index} ({gpu.name}): {exc}", exc.rejected) from exc
    plan = _shrunk(_one_engine(plan), gpu)
    fraction = plan.chosen.launch.gpu_memory_fraction or 0.0
    plan = _pinned(plan, (gpu.index,))
    # what the later engines may take of this GPU, as its free memory: the budget (or less, if less is free) less
    # this share; choose() budgets min(utilization x total, free), so their shares and this one sum within it
    free = min(gpu.free_bytes, int(gpu.total_bytes * utilization)) - int(gpu.total_bytes * fraction)
    lowered = replace(gpu, free_bytes=max(0, free))
    return plan, _subset(inventory, [*inventory.gpus[:-1], lowered])
