"""What the machine has: GPUs through NVML, or a simulated inventory from a spec, or the CPU.

The planner's only view of the machine (NVML, /proc/cpuinfo, sysfs): everything downstream receives an
`Inventory`. The engines touch GPUs only to load and run what the plan says.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

MIB = 1024**2


@dataclass(frozen=True)
class GpuModel:
    name: str
    total_bytes: int  # usable memory as NVML reports it (a little under the datasheet capacity)
    compute_capability: tuple[int, int]
    bandwidth_gb_s: int
    tflops_16bit: float  # dense (not 2:4 sparse) fp16/bf16 tensor-core throughput
    source: str


def _gpu(name: str, total_mib: int, cc: tuple[int, int], bw: int, tflops: float, source: str) -> GpuModel:
    return GpuModel(name, total_mib * MIB, cc, bw, tflops, source)


# Capacity, bandwidth and dense 16-bit tensor throughput from NVIDIA's datasheets (planner/latency.py estimates
# speed from the last two); compute capability from developer.nvidia.com/cuda-gpus;
# total_mib is what nvidia-smi reports for the part (ECC and firmware reserve keep it below the label).
GPU_TABLE: dict[str, GpuModel] = {
    g.name: g
    for g in (
        _gpu("T4", 15360, (7, 5), 320, 65,
             "NVIDIA T4 datasheet: 16 GB GDDR6, 320 GB/s, 65 TFLOPS fp16"),
        _gpu("V100-16GB", 16160, (7, 0), 900, 125,
             "NVIDIA V100 datasheet: 16 GB HBM2, 900 GB/s (SXM2), 125 TFLOPS tensor"),
        _gpu("V100-32GB", 32510, (7, 0), 900, 125,
             "NVIDIA V100 datasheet: 32 GB HBM2, 900 GB/s (SXM2), 125 TFLOPS tensor"),
        _gpu("A10G", 23028, (8, 6), 600, 70,
             "AWS G5 / NVIDIA A10G: 24 GB GDDR6, 600 GB/s; no datasheet: ~70 TFLOPS fp16 dense as quoted for G5"),
        _gpu("A10", 23028, (8, 6), 600, 125,
             "NVIDIA A10 datasheet: 24 GB GDDR6, 600 GB/s, 125 TFLOPS bf16 dense"),
        _gpu("L4", 23034, (8, 9), 300, 121,
             "NVIDIA L4 datasheet: 24 GB GDDR6, 300 GB/s, 121 TFLOPS bf16 dense (242 sparse)"),
        _gpu("L40", 46068, (8, 9), 864, 181,
             "NVIDIA L40 datasheet: 48 GB GDDR6, 864 GB/s, 181 TFLOPS bf16 dense (362 sparse)"),
        _gpu("L40S", 46068, (8, 9), 864, 362,
             "NVIDIA L40S datasheet: 48 GB GDDR6, 864 GB/s, 362 TFLOPS bf16 dense (733 sparse)"),
        _gpu("A100-40GB", 40960, (8, 0), 1555, 312,
             "NVIDIA A100 datasheet: 40 GB HBM2, 1555 GB/s (SXM4), 312 TFLOPS bf16 dense"),
        _gpu("A100-80GB", 81920, (8, 0), 2039, 312,
             "NVIDIA A100 datasheet: 80 GB HBM2e, 2039 GB/s (SXM4), 312 TFLOPS bf16 dense"),
        _gpu("H100", 81559, (9, 0), 3350, 989,
             "NVIDIA H100 datasheet: 80 GB HBM3, 3.35 TB/s (SXM5), 989 TFLOPS bf16 dense"),
        _gpu("H100-PCIe", 81559, (9, 0), 2000, 756,
             "NVIDIA H100 datasheet: 80 GB HBM2e, 2 TB/s (PCIe), 756 TFLOPS bf16 dense"),
        _gpu("H200", 143771, (9, 0), 4800, 989,
             "NVIDIA H200 datasheet: 141 GB HBM3e, 4.8 TB/s, 989 TFLOPS bf16 dense"),
        _gpu("B200", 183359, (10, 0), 8000, 2250,
             "NVIDIA DGX B200 datasheet: 180 GB HBM3e per GPU, 8 TB/s, 2.25 PFLOPS bf16 dense"),
        _gpu("RTX-3090", 24576, (8, 6), 936, 71,
             "GeForce RTX 3090 specs: 24 GB GDDR6X, 936 GB/s, 71 TFLOPS fp16 (fp32 accumulate)"),
        _gpu("RTX-4090", 24564, (8, 9), 1008, 165,
             "GeForce RTX 4090 specs: 24 GB GDDR6X, 1008 GB/s, 165 TFLOPS fp16 (fp32 accumulate)"),
        _gpu("RTX-A6000", 49140, (8, 6), 768, 155,
             "NVIDIA RTX A6000 datasheet: 48 GB GDDR6, 768 GB/s, 155 TFLOPS tensor dense"),
        _gpu("RTX-6000-Ada", 49140, (8, 9), 960, 364,
             "NVIDIA RTX 6000 Ada datasheet: 48 GB GDDR6, 960 GB/s, 364 TFLOPS tensor dense"),
    )
}
_ALIASES = {"A100": "A100-80GB", "H100-SXM": "H100", "RTX3090": "RTX-3090", "RTX4090": "RTX-4090",
            "3090": "RTX-3090", "4090": "RTX-4090", "A6000": "RTX-A6000", "V100": "V100-32GB"}


# NVML's product names (nvidia-smi --query-gpu=name) -> the table's entry, most specific first. Memory size
# separates A100 40/80 GB and V100 16/32 GB where the name does not say it.
_NVML_NAMES: tuple[tuple[str, str], ...] = (
    (r"H100.*PCIe", "H100-PCIe"), (r"H100|GH200", "H100"), (r"H200", "H200"), (r"B200", "B200"),
    (r"A100", "A100"), (r"L40S", "L40S"), (r"L40\b", "L40"), (r"\bL4\b", "L4"), (r"A10G", "A10G"),
    (r"\bA10\b", "A10"), (r"\bT4\b", "T4"), (r"V100", "V100"), (r"RTX 6000 Ada", "RTX-6000-Ada"),
    (r"RTX A6000", "RTX-A6000"), (r"4090", "RTX-4090"), (r"3090", "RTX-3090"),
)


def datasheet(nvml_name: str, total_bytes: int) -> GpuModel | None:
    """The GPU table's entry for a name as NVML reports it ("NVIDIA A100-SXM4-40GB"), or None."""
    for pattern, key in _NVML_NAMES:
        if re.search(pattern, nvml_name, re.IGNORECASE):
            if key in ("A100", "V100"):
                sizes = [m for m in GPU_TABLE.values() if m.name.startswith(key)]
                return min(sizes, key=lambda m: abs(m.total_bytes - total_bytes))
            return GPU_TABLE[key]
    return None


class HardwareSpecError(ValueError):
    """A simulated-GPU spec that cannot be parsed or names an unknown GPU."""


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    compute_capability: tuple[int, int]
    bandwidth_gb_s: int | None = None  # datasheet figures (None: a GPU the table does not know)
    tflops_16bit: float | None = None


@dataclass(frozen=True)
class CpuInfo:
    cores: int
    ram_total_bytes: int
    ram_available_bytes: int
    bf16: bool = False  # native bf16 matmul (x86 AVX512_BF16 / AMX, Arm BF16); else bf16 is emulated, slowly
    avx512: bool = False  # vLLM's CPU 4-bit kernels (cpu_gemm_wna16) exist only in its AVX-512 build
    # The logical CPUs this process may run on, grouped by physical core (SMT siblings together), and the
    # NUMA nodes they span; empty when the topology could not be read.
    core_cpus: tuple[tuple[int, ...], ...] = ()
    numa_nodes: int = 1


# /proc/cpuinfo flags that give native bf16 matrix math (Linux kernel's x86 and arm64 feature names).
BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def _cpu_flags(cpuinfo_text: str) -> set[str]:
    flags: set[str] = set()
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags |= set(value.split())
    return flags


def cpu_has_bf16(cpuinfo_text: str) -> bool:
    return bool(BF16_FLAGS & _cpu_flags(cpuinfo_text))


def cpu_has_avx512(cpuinfo_text: str) -> bool:
    return "avx512f" in _cpu_flags(cpuinfo_text)


@dataclass(frozen=True)
class Inventory:
    gpus: tuple[GpuInfo, ...]
    cpu: CpuInfo
    source: str  # "nvml", "simulated" or "cpu"
    notes: tuple[str, ...] = field(default=())
    # Free bytes on the filesystem of the cache dir (downloads and 4-bit checkpoints land there); None: not measured.
    disk_free_bytes: int | None = None
    # Bytes of each Hub repo already in the Hugging Face cache (repo id, bytes); a download counts only the rest.
    hub_cached_bytes: tuple[tuple[str, int], ...] = ()
    # The llama-server binary found on this machine (CODESERVE_LLAMA_SERVER, beside Python, PATH); None: none found.
    llama_server: str | None = None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return None


def cpu_topology(usable: set[int], sys_cpu: Path = Path("/sys/devices/system/cpu"),
                 sys_node: Path = Path("/sys/devices/system/node")) -> tuple[tuple[tuple[int, ...], ...], int]:
    """The usable logical CPUs grouped by physical core (package, core id), in CPU order, and how many NUMA
    nodes hold them. Linux's sysfs; ((), 1) where it cannot be read."""
    cores: dict[tuple[str, str], list[int]] = {}
    for cpu in sorted(usable):
        topology = sys_cpu / f"cpu{cpu}" / "topology"
        package, core = _read(topology / "physical_package_id"), _read(topology / "core_id")
        if package is None or core is None:
            return (), 1
        cores.setdefault((package, core), []).append(cpu)
    nodes = 0
    for node in sys_node.glob("node[0-9]*"):
        listed = _read(node / "cpulist")
        if listed and usable & set(parse_cpu_list(listed)):
            nodes += 1
    return tuple(tuple(cpus) for cpus in cores.values()), max(nodes, 1)


def parse_cpu_list(text: str) -> list[int]:
    """Linux's CPU list syntax ("0-3,8,10-11") as ids."""
    ids: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        ids += range(int(low), int(high or low) + 1)
    return ids


def cpu_info() -> CpuInfo:
    memory = psutil.virtual_memory()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            text = f.read()
    except OSError:
        text = ""
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    core_cpus, numa_nodes = cpu_topology(usable)
    return CpuInfo(cores=len(usable), ram_total_bytes=memory.total, ram_available_bytes=memory.available,
                   bf16=cpu_has_bf16(text), avx512=cpu_has_avx512(text), core_cpus=core_cpus, numa_nodes=numa_nodes)


def _lookup(name: str) -> GpuModel:
    key = name.strip()
    normalized = {k.upper(): k for k in GPU_TABLE}
    canonical = normalized.get(key.upper()) or _ALIASES.get(key.upper()) or _ALIASES.get(key)
    if canonical is None:
        known = ", ".join(sorted(GPU_TABLE))
        raise HardwareSpecError(f"unknown GPU {name!r} in CODESERVE_GPUS / --gpus; known GPUs: {known}")
    return GPU_TABLE[canonical]


def disk_free(path: Path) -> int | None:
    """Free bytes on the filesystem that holds `path` (its nearest existing parent), or None where unreadable."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def simulated(spec: str, cpu: CpuInfo | None = None, disk_free_bytes: int | None = None) -> Inventory:
    """An inventory from a spec such as '2xA100-80GB', '1xT4,1xL4' or 'none'."""
    cpu = cpu or cpu_info()
    if spec.strip().lower() in ("", "none", "cpu", "0"):
        return Inventory(gpus=(), cpu=cpu, source="simulated", disk_free_bytes=disk_free_bytes)
    gpus: list[GpuInfo] = []
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(?:(\d+)\s*[xX]\s*)?([A-Za-z0-9][A-Za-z0-9-]*)\s*", part)
        if not match:
            raise HardwareSpecError(f"cannot parse {part!r} in GPU spec {spec!r}; expected e.g. '2xA100-80GB,1xT4'")
        count = int(match.group(1) or 1)
        if not 1 <= count <= 64:
            raise HardwareSpecError(f"GPU count {count} in {part!r} must be between 1 and 64")
        model = _lookup(match.group(2))
        for _ in range(count):
            gpus.append(GpuInfo(len(gpus), model.name, model.total_bytes, model.total_bytes,
                                model.compute_capability, model.bandwidth_gb_s, model.tflops_16bit))
    return Inventory(gpus=tuple(gpus), cpu=cpu, source="simulated", disk_free_bytes=disk_free_bytes)


def _visible(nvml: Any, count: int, visible: str | None) -> list[int]:
    """Physical indices CUDA_VISIBLE_DEVICES exposes, in its order (indices or GPU-UUIDs)."""
    if visible is None:
        return list(range(count))
    chosen: list[int] = []
    uuids: dict[str, int] = {}
    for item in (part.strip() for part in visible.split(",")):
        if not item:
            continue
        if item.isdigit():
            if int(item) >= count:
                break  # CUDA stops at the first invalid ordinal
            chosen.append(int(item))
            continue
        if not uuids:
            uuids = {_text(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i))): i for i in range(count)}
        match = [i for uuid, i in uuids.items() if uuid.startswith(item)]
        if len(match) != 1:
            break
        chosen.append(match[0])
    return chosen


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def from_nvml(nvml: Any, visible: str | None, cpu: CpuInfo) -> Inventory:
    """Read GPUs through an NVML binding (pynvml from nvidia-ml-py, or a fake with the same calls)."""
    nvml.nvmlInit()
    try:
        count = nvml.nvmlDeviceGetCount()
        physical = _visible(nvml, count, visible)
        gpus = []
        for logical, phys in enumerate(physical):
            handle = nvml.nvmlDeviceGetHandleByIndex(phys)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
            name = _text(nvml.nvmlDeviceGetName(handle))
            sheet = datasheet(name, int(memory.total))
            gpus.append(GpuInfo(logical, name, int(memory.total), int(memory.free), (int(major), int(minor)),
                                sheet.bandwidth_gb_s if sheet else None, sheet.tflops_16bit if sheet else None))
    finally:
        nvml.nvmlShutdown()
    return Inventory(gpus=tuple(gpus), cpu=cpu, source="nvml" if gpus else "cpu")


@dataclass(frozen=True)
class GpuMemory:
    index: int
    name: str
    used_bytes: int
    free_bytes: int
    total_bytes: int


def gpu_memory(nvml: Any, visible: str | None) -> list[GpuMemory]:
    """Current memory of each visible GPU (polled at every /metrics scrape); [] without NVML."""
    try:
        nvml.nvmlInit()
    except nvml.NVMLError:
        return []
    try:
        physical = _visible(nvml, nvml.nvmlDeviceGetCount(), visible)
        result = []
        for logical, phys in enumerate(physical):
            handle = nvml.nvmlDeviceGetHandleByIndex(phys)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            result.append(GpuMemory(logical, _text(nvml.nvmlDeviceGetName(handle)), int(memory.used),
                                    int(memory.free), int(memory.total)))
        return result
    finally:
        nvml.nvmlShutdown()


def gpu_memory_poller() -> Any:
    """A no-argument function returning gpu_memory() for this machine, or None without nvidia-ml-py."""
    try:
        import pynvml
    except ImportError:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return lambda: gpu_memory(pynvml, visible)


def detect(spec: str | None = None, nvml: Any = None, cache_dir: Path | None = None) -> Inventory:
    """The inventory: simulated from `spec` if given, else NVML, else the CPU alone; a real one with the free disk of
    `cache_dir`'s filesystem where given (a simulated machine's disk is not this one's: left unknown, not checked)."""
    cpu = cpu_info()
    if spec is not None:
        return simulated(spec, cpu)
    disk = disk_free(cache_dir) if cache_dir is not None else None
    if nvml is None:
        try:
            import pynvml  # nvidia-ml-py
        except ImportError:
            return Inventory(gpus=(), cpu=cpu, source="cpu", notes=("nvidia-ml-py is not installed",),
                             disk_free_bytes=disk)
        nvml = pynvml
    try:
        return replace(from_nvml(nvml, os.environ.get("CUDA_VISIBLE_DEVICES"), cpu), disk_free_bytes=disk)
    except nvml.NVMLError as exc:
        return Inventory(gpus=(), cpu=cpu, source="cpu", notes=(f"NVML unavailable: {exc}",), disk_free_bytes=disk)
