"""What the planner decides: the chosen option, its fallbacks, every rejected candidate and why.

Engine-neutral data; server/planner/choose.py makes it, the engine adapters read each option's Launch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from .catalog import ModelEntry
from .hardware import Inventory
from .latency import LatencyEstimate
from .launch import Launch
from .memory import WeightPrecision
from .startup import StartEstimate


class NoFit(Exception):
    """No candidate fits; the message names what was needed, what is available and what to change."""

    def __init__(self, message: str, rejected: list[Rejection]):
        super().__init__(message)
        self.rejected = rejected


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes on one device (one GPU of the tensor-parallel group, or the CPU's RAM)."""

    weights: int
    kv_cache: int  # what the target context x concurrency needs
    activation: int
    overhead: int
    budget: int
    lora: int = 0  # slots for LoRA adapters (CODESERVE_LORA_ADAPTERS)

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activation + self.overhead + self.lora

    @property
    def headroom(self) -> int:
        return self.budget - self.total

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total, "headroom": self.headroom}


@dataclass(frozen=True)
class Rejection:
    model: str
    precision: str | None
    tensor_parallel_size: int | None
    reason: str


@dataclass(frozen=True)
class Option:
    """A candidate that fits."""

    model: ModelEntry
    precision: WeightPrecision
    tensor_parallel_size: int
    device: Literal["cuda", "cpu"]
    device_name: str
    memory: MemoryBreakdown
    kv_bytes_per_token: int
    kv_cache_capacity_tokens: int
    awq_group_size: int | None
    replicas: int
    launch: Launch
    latency: LatencyEstimate | None = None  # None: no datasheet figures (the CPU, a GPU the table lacks)
    start: StartEstimate | None = None  # time to serve: download, quantization, load

    @property
    def pipeline_parallel_size(self) -> int:
        return self.launch.pipeline_parallel_size

    @property
    def nodes(self) -> int:
        """Nodes one copy spans: one per pipeline stage (tensor parallel stays inside a node). The Transformers
        engine's stages are layers spread over the GPUs of one node (device_map)."""
        return 1 if self.launch.engine == "transformers" else self.launch.pipeline_parallel_size

    @property
    def max_model_len(self) -> int:
        return self.launch.max_model_len

    @property
    def needs_quantization(self) -> bool:
        """True when the precision needs a 4-bit checkpoint nobody publishes: quantize it ourselves."""
        published = self.model.prequantized
        return self.precision == "awq" and not (published.awq and self.awq_group_size == published.awq_group_size)

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.model.id,
            "precision": self.precision,
            "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            "device": self.device_name,
            "replicas": self.replicas,
            "max_model_len": self.max_model_len,
            "per_gpu_total_bytes": self.memory.total,
            "latency": self.latency.to_dict() if self.latency else None,
            "start": self.start.to_dict() if self.start else None,
        }


@dataclass(frozen=True)
class PassedOver:
    """A larger option that fits but would not start within CODESERVE_MAX_START_MINUTES, and how to unlock it."""

    option: Option
    unlock: str

    def to_dict(self) -> dict[str, Any]:
        return {**self.option.summary(), "unlock": self.unlock}


@dataclass(frozen=True)
class StartFailure:
    """An option the engine could not start (out of memory), so the next one was tried."""

    option: Option
    error: str


@dataclass(frozen=True)
class Plan:
    chosen: Option
    max_concurrent_sequences: int
    inventory: Inventory
    fallbacks: list[Option] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    failed_to_start: tuple[StartFailure, ...] = ()
    notes: tuple[str, ...] = ()  # what the user should know about the choice (a latency target missed)
    derived: tuple[str, ...] = ()  # for a model outside the catalog: what was read from its files, and where
    passed_over: tuple[PassedOver, ...] = ()  # larger options that start too slowly, best first

    @property
    def max_model_len(self) -> int:
        return self.chosen.max_model_len

    @property
    def options(self) -> list[Option]:
        """The choice, then its fallbacks, in the order an engine should try them."""
        return [self.chosen, *self.fallbacks]

    def started(self, option: Option, failures: Iterable[StartFailure] = ()) -> Plan:
        """This plan as it turned out: `option` is running, after `failures` could not start."""
        later = self.options[self.options.index(option) + 1:]
        return replace(self, chosen=option, fallbacks=later, failed_to_start=tuple(failures))

    def to_dict(self) -> dict[str, Any]:
        chosen = self.chosen
        return {
            "model": {
                "id": chosen.model.id,
                "repo": chosen.model.repo,
                "family": chosen.model.family,
                "role": chosen.model.role,
                "params": chosen.model.params,
                "humaneval": chosen.model.humaneval,
                "license": chosen.model.license,
                "fim": chosen.model.fim,
                "tool_calling": chosen.model.tool_calling,
            },
            "precision": chosen.precision,
            "tensor_parallel_size": chosen.tensor_parallel_size,
            "pipeline_parallel_size": chosen.pipeline_parallel_size,
            "nodes": chosen.nodes,
            "replicas": chosen.replicas,
            "device": chosen.device,
            "device_name": chosen.device_name,
            "max_model_len": self.max_model_len,
            "max_concurrent_sequences": self.max_concurrent_sequences,
            "kv_bytes_per_token": chosen.kv_bytes_per_token,
            "kv_cache_capacity_tokens": chosen.kv_cache_capacity_tokens,
            "awq_group_size": chosen.awq_group_size,
            "needs_quantization": chosen.needs_quantization,
            "memory": {"per_gpu_bytes": chosen.memory.to_dict()},
            "latency": chosen.latency.to_dict() if chosen.latency else None,
            "start": chosen.start.to_dict() if chosen.start else None,
            "launch": chosen.launch.to_dict(),
            "inventory": {
                "source": self.inventory.source,
                "gpus": [{"index": g.index, "name": g.name, "total_bytes": g.total_bytes,
                          "compute_capability": f"{g.compute_capability[0]}.{g.compute_capability[1]}"}
                         for g in self.inventory.gpus],
                "cpu": asdict(self.inventory.cpu),
            },
            "fallbacks": [option.summary() for option in self.fallbacks],
            "passed_over_for_time": [passed.to_dict() for passed in self.passed_over],
            "failed_to_start": [{**f.option.summary(), "error": f.error} for f in self.failed_to_start],
            "rejected": [asdict(r) for r in self.rejected],
            "notes": list(self.notes),
            "derived": list(self.derived),
        }
