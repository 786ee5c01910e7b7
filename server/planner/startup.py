"""Time to serve: what an option must do before its first request (download, quantize, load), how long that takes,
and what quantizing needs from the host. Pure arithmetic on the catalog entry, the option's shape and what the
caller found in the cache dir and the Hugging Face cache; nothing here reads files, the network or the environment.

The rates are stated with their sources; each is a point measurement, so the estimate is an order of magnitude that
tells a 5-minute start from a 5-hour one, not a stopwatch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .catalog import ModelEntry
from .memory import WeightPrecision, param_counts, weight_bytes

# Downloads: CODESERVE_DOWNLOAD_MB_PER_S (the link is the operator's to know). Its default, 100 MB/s (a 1 Gbit/s
# link, nearly saturated), sits between a measured Hub download through vLLM (vllm#12917: 29.8-30.8 MB/s per file)
# and what hf_transfer's README says Python's own client cannot exceed on very fast networks (~500 MB/s).

# Loading from the local disk into the engine: vllm#2233, a 67B bf16 model (~134 GB) "takes 3 mins to load" once
# the reporter replaced a faulty drive: 134e9 B / 180 s ~ 0.74 GB/s, end to end through vLLM's loader.
LOAD_BYTES_PER_S = 0.74e9

# AWQ calibration on a GPU: llm-compressor's docs ("Runtime requirements for LLM Compressor", PR #2029):
# AWQ weights-only of Meta-Llama-3-8B-Instruct (8.03B parameters) on one A100 takes ~30 minutes.
# 1800 s / 8.03 B ~ 224 s per billion parameters. Their example recipe calibrates 256 x 512-token samples, more
# than codeserve's 32 x 256, so this is on the slow side; it is not scaled down, for want of a measurement.
# GPUs slower than the A100 (16-bit TFLOPS) are scaled by the ratio; faster ones are not credited (not measured).
GPU_QUANTIZE_S_PER_BPARAM = 1800 / 8.03
GPU_QUANTIZE_REFERENCE_TFLOPS = 312.0  # A100 dense bf16 (hardware.py's datasheet figure)
# AWQ calibration on the CPU (DESIGN.md, measured on this project's 2-core machines): SmolLM2-135M (0.1345 B) with
# the default 32 x 256-token calibration took 13 minutes (8 x 128 tokens: 150 s). Not scaled by core count.
CPU_QUANTIZE_S_PER_BPARAM = 13 * 60 / 0.1345
# Host memory while calibrating (server/quantize/worker.py): the whole 16-bit model sits in host RAM on a GPU
# machine (llm-compressor onloads one layer at a time to the GPU; its docs list "CPU requirements: mem(8B params)
# ~= 16Gb" for Llama-3-8B), in fp32 on the CPU (bf16 is emulated there).
QUANTIZE_HOST_BYTES_PER_PARAM = {"cuda": 2, "cpu": 4}


@dataclass(frozen=True)
class Cache:
    """What the caller found in the cache dir (server/planning.py looks; the planner only reads this)."""

    models: frozenset[str] = frozenset()  # catalog ids whose 16-bit weights are a local directory
    quantized: frozenset[tuple[str, int]] = frozenset()  # (catalog id, AWQ group size) of finished 4-bit checkpoints
    hub: tuple[tuple[str, int], ...] = ()  # (Hub repo id, bytes already in the Hugging Face cache)

    def hub_bytes(self, repo: str | None) -> int:
        return next((size for name, size in self.hub if name == repo), 0)


@dataclass(frozen=True)
class Host:
    """What quantizing on this machine may use."""

    device: str  # "cuda" or "cpu": where calibration runs
    ram_total_bytes: int
    disk_free_bytes: int | None  # of the cache dir's filesystem; None: not known (not checked)
    tflops_16bit: float | None = None  # the GPU's, to scale calibration time on GPUs slower than the reference


@dataclass(frozen=True)
class StartEstimate:
    """How an option gets to serving: each step's bytes and seconds (0 when the cache already has it)."""

    download_bytes: int
    download_s: float
    quantize_s: float
    load_bytes: int
    load_s: float
    quantize_host_bytes: int  # host RAM calibration needs (0: no calibration)
    disk_bytes: int  # what the cache dir must take: downloads plus the 4-bit checkpoint made
    steps: tuple[str, ...]  # what happens, in order, in words

    @property
    def total_s(self) -> float:
        return self.download_s + self.quantize_s + self.load_s

    @property
    def minutes(self) -> float:
        return self.total_s / 60

    def to_dict(self) -> dict[str, Any]:
        data = {key: round(value, 1) if isinstance(value, float) else value for key, value in asdict(self).items()}
        return {**data, "steps": list(self.steps), "total_s": round(self.total_s, 1), "minutes": round(self.minutes, 1)}


def describe_minutes(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{max(seconds / 60, 0.1):.0f} min" if \
        seconds >= 60 else f"{seconds:.0f} s"


def _sixteen_bit_bytes(entry: ModelEntry) -> int:
    """The published 16-bit checkpoint's size: what a download or a calibration reads."""
    return param_counts(entry.architecture).total * 2


def _quantize_s(entry: ModelEntry, host: Host) -> float:
    billions = entry.params / 1e9
    if host.device == "cpu":
        return billions * CPU_QUANTIZE_S_PER_BPARAM
    slower = max(1.0, GPU_QUANTIZE_REFERENCE_TFLOPS / host.tflops_16bit) if host.tflops_16bit else 1.0
    return billions * GPU_QUANTIZE_S_PER_BPARAM * slower


def estimate(entry: ModelEntry, precision: WeightPrecision, group_size: int | None, needs_quantization: bool,
             cache: Cache, host: Host, download_bytes_per_s: float) -> StartEstimate:
    """The start of one option. Published checkpoints (4-bit or FP8) download at their own size; 16-bit and online
    FP8 read the 16-bit checkpoint; a 4-bit checkpoint nobody publishes is made from the 16-bit one, unless the
    cache already holds it for this group size."""
    arch = entry.architecture
    sixteen = _sixteen_bit_bytes(entry)
    local = entry.id in cache.models or entry.bundled is not None
    steps: list[str] = []
    quantize_s, host_bytes, made_bytes = 0.0, 0, 0
    if needs_quantization and group_size is not None and (entry.id, group_size) in cache.quantized:
        download, load = 0, weight_bytes(arch, "awq", 1, group_size)
        steps.append(f"the cached 4-bit checkpoint (g{group_size})")
    elif needs_quantization:
        download = 0 if local else max(0, sixteen - cache.hub_bytes(entry.repo))
        load = made_bytes = weight_bytes(arch, "awq", 1, group_size or 128)
        quantize_s = _quantize_s(entry, host)
        host_bytes = param_counts(arch).total * QUANTIZE_HOST_BYTES_PER_PARAM[host.device]
        steps.append(f"AWQ calibration g{group_size} on the {'GPU' if host.device == 'cuda' else 'CPU'} "
                     f"(~{describe_minutes(quantize_s)})")
    elif precision == "mxfp4":  # the authors' own MXFP4 checkpoint: the download is the checkpoint as stored
        download = 0 if local else weight_bytes(arch, "mxfp4", 1, mxfp4_kernel=None)
        load = weight_bytes(arch, "mxfp4", 1, mxfp4_kernel=None)
        steps.append("the published MXFP4 checkpoint")
    elif precision == "awq" or (precision == "fp8" and entry.prequantized.fp8):
        load = weight_bytes(arch, precision, 1, group_size or 128)
        checkpoint = entry.prequantized.awq if precision == "awq" else entry.prequantized.fp8
        own = checkpoint == entry.repo  # a model directory that is itself quantized (derive.py)
        download = 0 if own and local else max(0, load - cache.hub_bytes(checkpoint))
        steps.append("the model's own quantized weights" if own else f"the published {precision} checkpoint")
    else:  # 16-bit, fp32 upcast on the CPU, or FP8 made by the engine as it loads (no calibration)
        download = 0 if local else max(0, sixteen - cache.hub_bytes(entry.repo))
        load = sixteen
        if precision == "fp8":
            steps.append("FP8 made by the engine while loading (no calibration)")
    if download:
        steps.insert(0, f"download {download / 1e9:.1f} GB")
    steps.append(f"load {load / 1e9:.1f} GB")
    return StartEstimate(download_bytes=download, download_s=download / download_bytes_per_s, quantize_s=quantize_s,
                         load_bytes=load, load_s=load / LOAD_BYTES_PER_S, quantize_host_bytes=host_bytes,
                         disk_bytes=download + made_bytes, steps=tuple(steps))


def host_problem(start: StartEstimate, host: Host) -> str | None:
    """Why this machine cannot do the option's start (host RAM for calibration, disk for the cache), or None."""
    gib = 1024**3
    if start.quantize_host_bytes > host.ram_total_bytes:
        return (f"quantizing needs {start.quantize_host_bytes / gib:.0f} GiB of host RAM for the 16-bit weights; this "
                f"machine has {host.ram_total_bytes / gib:.0f} GiB: quantize on a larger machine (`codeserve "
                f"quantize`) and copy the checkpoint into CODESERVE_CACHE_DIR/quantized, or pin another "
                f"CODESERVE_PRECISION")
    if host.disk_free_bytes is not None and start.disk_bytes > host.disk_free_bytes:
        return (f"needs {start.disk_bytes / gib:.0f} GiB of disk in the cache dir ({', '.join(start.steps)}); "
                f"{host.disk_free_bytes / gib:.0f} GiB are free: free space or point CODESERVE_CACHE_DIR at a "
                f"larger volume")
    return None
