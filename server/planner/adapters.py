"""LoRA adapters served over the planned model (CODESERVE_LORA_ADAPTERS): what the planner needs to know of each,
read from its adapter_config.json by model_source.py. Pure data."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Adapter:
    name: str  # the model name requests use
    path: str  # the directory PEFT's save_pretrained wrote
    rank: int  # r
    targets: tuple[str, ...]  # target_modules
    base: str  # base_model_name_or_path, as the adapter records it


def max_rank(adapters: tuple[Adapter, ...]) -> int:
    """vLLM's max_lora_rank: the largest rank, rounded up to one vLLM accepts (1, 8, 16, 32, 64, ... 512)."""
    largest = max((a.rank for a in adapters), default=0)
    if not largest:
        return 0
    return next((r for r in (1, 8, 16, 32, 64, 128, 256, 320, 512) if r >= largest), largest)
