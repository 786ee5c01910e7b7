"""Loading a model into Transformers as the plan says: its dtype, the CPU, one GPU or its layers spread over the
plan's GPUs, and remote code checked against the Transformers it was written for, before anything is read."""

from __future__ import annotations

from typing import Any

from ..planner.launch import Launch
from .base import EngineStartError


def load(launch: Launch) -> tuple[Any, Any]:
    """(model, tokenizer) for `launch`, or EngineStartError saying what failed."""
    check_transformers_version(launch)
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        config = AutoConfig.from_pretrained(launch.model, trust_remote_code=launch.trust_remote_code)
        auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
        dtype = getattr(torch, launch.dtype)
        placement = device_placement(launch, [torch.cuda.get_device_properties(i).total_memory for i in range(
            torch.cuda.device_count())] if launch.device == "cuda" else [])
        model = auto.from_pretrained(launch.model, dtype=dtype, trust_remote_code=launch.trust_remote_code,
                                     **placement).eval()
        tokenizer = AutoTokenizer.from_pretrained(launch.model, trust_remote_code=launch.trust_remote_code)
        if launch.device == "cpu" and launch.cpu_cores:
            torch.set_num_threads(len(launch.cpu_cores))
    except Exception as exc:  # missing files, unknown architecture, out of memory
        text = str(exc)
        hint = (" (its own code, trust_remote_code, may be written for an older Transformers than "
                f"{_installed_transformers()})") if launch.trust_remote_code else ""
        raise EngineStartError(f"Transformers failed to load {launch.model}: {text}{hint}",
                               out_of_memory="out of memory" in text.lower()) from exc
    return model, tokenizer


def _installed_transformers() -> str:
    import transformers

    return str(transformers.__version__)


def check_transformers_version(launch: Launch) -> None:
    """Fail at once, naming both versions, where the checkpoint's own code needs another Transformers (loading it
    would fail deep inside that code, or later in generate())."""
    if launch.transformers_version is None:
        return
    from packaging.specifiers import SpecifierSet

    installed = _installed_transformers()
    if installed not in SpecifierSet(launch.transformers_version, prereleases=True):
        raise EngineStartError(
            f"{launch.model}'s own code (trust_remote_code) runs on transformers{launch.transformers_version}; this "
            f"environment has {installed}. Serve it from an environment with a matching Transformers, or choose "
            f"another model (CODESERVE_MODEL)")


def device_placement(launch: Launch, totals: list[int]) -> dict[str, Any]:
    """from_pretrained's placement: the CPU; one GPU; or the layers spread (device_map="auto") over the plan's GPUs,
    each filled up to the plan's share of it (`totals`: every visible GPU's memory, bytes)."""
    if launch.device != "cuda":
        return {}
    devices = list(launch.devices) if launch.devices else list(range(launch.pipeline_parallel_size))
    if len(devices) == 1:
        return {"device_map": {"": devices[0]}}
    share = launch.gpu_memory_fraction or 0.9
    return {"device_map": "auto", "max_memory": {d: int(totals[d] * share) for d in devices}}
