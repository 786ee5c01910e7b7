"""The model as it runs, and what serves one request: the engine's generation and the LoRA adapter named."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..fim.templates import FimTemplate, template_for
from ..planner.catalog import ModelEntry

if TYPE_CHECKING:
    from .core import GenerationCore


@dataclass(frozen=True)
class ServedModel:
    """The model as it runs: its id, catalog entry and the context the engine reports (read once)."""

    id: str
    entry: ModelEntry
    max_model_len: int
    created: int = field(default_factory=lambda: int(time.time()))
    adapters: tuple[str, ...] = ()  # LoRA adapters served over this model, by name

    @property
    def fim(self) -> FimTemplate | None:
        return template_for(self.entry.fim)

    @property
    def fills_holes_without_fim(self) -> bool:
        """No FIM tokens, but an instruct model: holes are filled by continuing the prefix or by chat."""
        return self.fim is None and self.entry.role == "instruct"

    def accepts(self, name: str | None) -> bool:
        return name in (None, "", self.id, self.entry.repo, *self.adapters)


@dataclass(frozen=True)
class Target:
    """What serves a request, resolved once from its `model`: the engine's generation and the LoRA adapter."""

    core: GenerationCore
    adapter: str | None = None  # the LoRA adapter the request named, or None for the base model

    @property
    def model(self) -> str:
        """The name responses and metrics carry."""
        return self.adapter or self.core.served.id
