"""How a retrieval role's model is planned, beside what choose() does for every role (planner/fleet.py places the
engines): its inputs' length, the weights it runs, and the Launch of a pooling engine. Pure."""

from __future__ import annotations

from dataclasses import replace

from ..roles import Pooling
from ..settings import Settings
from . import candidates as rules
from .catalog import ModelEntry
from .launch import Launch
from .memory import WeightPrecision


def input_tokens(entry: ModelEntry, settings: Settings, default: int) -> int:
    """The engine's context: a retrieval model's inputs are chunks, CODESERVE_MAX_INPUT_TOKENS or less where the model
    takes less (CODESERVE_MAX_MODEL_LEN is the generation roles'); any other model's `default`."""
    if entry.retrieval is None:
        return default
    model_max = min(entry.context_length, entry.architecture.max_position_embeddings)
    return min(settings.max_input_tokens, entry.retrieval.max_input_tokens, model_max)


def precision_problem(entry: ModelEntry, precision: WeightPrecision) -> str | None:
    if entry.retrieval is None or precision in rules.TRANSFORMERS_PRECISIONS:
        return None
    # nobody publishes quantized checkpoints of them, and calibrating one would need a retrieval quality gate
    return f"retrieval models run 16-bit weights, not {precision}"


def pooling_launch(launch: Launch, entry: ModelEntry, pooling: Pooling | None) -> Launch:
    """A retrieval role's engine: vLLM's pooling runner (one forward pass per input, nothing generated, so no prefix
    cache to keep and no speculation). On the CPU the Transformers engine serves it (choose.py _launch): an
    encoder's forward pass is the same work there, without a second vLLM engine process of ~2 GiB and minutes of
    start-up beside the generation engine (measured: tests/e2e/test_retrieval.py, README "Retrieval")."""
    if pooling is None or entry.retrieval is None:
        return launch
    return replace(launch, pooling=pooling, pooling_type=entry.retrieval.pooling, prefix_caching=False,
                   pooling_normalize=entry.retrieval.normalized, speculation=None,
                   hf_overrides=tuple(sorted(entry.retrieval.vllm_overrides.items())))
