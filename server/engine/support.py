"""Whether the installed vLLM runs an architecture, decided the way vLLM decides (vllm/model_executor/models/
registry.py): its own implementations first, then its Transformers backend for a decoder-only Transformers class
whose attention it can replace (`is_backend_compatible()` or `_can_set_attn_implementation()`).

The planner's measured list (planner/derive.py VLLM_REFUSES) covers planning where vLLM is not installed; this
covers the architectures nobody measured, so a model outside that list is not sent to a vLLM that cannot load it.
"""

from __future__ import annotations

import functools


@functools.cache
def _registry() -> tuple[str, frozenset[str]] | None:
    """(vLLM's version, the architectures it implements), or None without vLLM."""
    try:
        import vllm
        from vllm.model_executor.models.registry import ModelRegistry
    except ImportError:
        return None
    return str(vllm.__version__), frozenset(ModelRegistry.get_supported_archs())


def vllm_refusal(architecture: str, encoder_decoder: bool, remote_code: bool) -> str | None:
    """Why the installed vLLM cannot serve `architecture`, or None where it can or this cannot tell (no vLLM here,
    or remote code, which vLLM tries through its Transformers backend only by running it)."""
    found = _registry()
    if found is None or architecture in found[1] or remote_code:
        return None
    version = found[0]
    if encoder_decoder:
        return f"{architecture} is not in vLLM {version}'s model registry, and its Transformers backend runs " \
               f"decoder-only models"
    import transformers

    cls = getattr(transformers, architecture, None)
    if cls is None:
        return f"{architecture} is neither in vLLM {version}'s model registry nor a Transformers class"
    if not (cls.is_backend_compatible() or cls._can_set_attn_implementation()):
        return f"{architecture} is not in vLLM {version}'s model registry, and its Transformers class cannot take " \
               f"vLLM's attention (vLLM's Transformers backend)"
    return None
