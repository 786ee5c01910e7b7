"""CODESERVE_OBJECTIVE=latency: keep the options whose estimated decode time meets the target. Pure."""

from __future__ import annotations

from .plan import Option, Rejection


def meets_target(options: list[Option], target_ms: float, rejected: list[Rejection]) -> tuple[list[Option], str]:
    """The options whose estimated decode time meets `target_ms` (those without an estimate, on the CPU or the
    Transformers engine, pass), the others recorded as rejected. When none does, the fastest, and a note saying so."""
    meeting = [o for o in options if o.latency is None or o.latency.decode_ms_per_token <= target_ms]
    for option in options:
        if option not in meeting and option.latency is not None:
            rejected.append(Rejection(option.model.id, option.precision, option.tensor_parallel_size,
                                      f"estimated {option.latency.decode_ms_per_token:.1f} ms/token > "
                                      f"CODESERVE_TARGET_TOKEN_LATENCY_MS={target_ms:g}"))
    if meeting:
        return meeting, ""
    fastest = min(options, key=lambda o: o.latency.decode_ms_per_token if o.latency else 0.0)
    assert fastest.latency is not None
    return [fastest], (f"no option meets CODESERVE_TARGET_TOKEN_LATENCY_MS={target_ms:g}: serving the fastest, "
                       f"{fastest.model.id} {fastest.precision} at an estimated "
                       f"{fastest.latency.decode_ms_per_token:.1f} ms/token")
