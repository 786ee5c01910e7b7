"""GPU detection through NVML (a fake that answers like pynvml), simulated specs, the CPU fallback."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import pytest

from server.planner import hardware
from server.planner.hardware import GPU_TABLE, HardwareSpecError, datasheet, from_nvml, simulated
from tests.conftest import FIXED_CPU

GIB = 1024**3


class FakeNvmlError(Exception):
    pass


@dataclass
class _Memory:
    total: int
    free: int
    used: int


class FakeNvml:
    """Answers the pynvml calls hardware.py makes, for a described machine."""

    NVMLError = FakeNvmlError

    def __init__(self, devices: list[dict]):
        self.devices = devices
        self.initialised = False
        self.shutdown_called = False

    def nvmlInit(self) -> None:
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.shutdown_called = True

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return self.devices[handle]["name"].encode()

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return f"GPU-{handle:04d}-aaaa"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> _Memory:
        d = self.devices[handle]
        return _Memory(d["total"], d.get("free", d["total"]), 0)

    def nvmlDeviceGetCudaComputeCapability(self, handle: int) -> tuple[int, int]:
        return self.devices[handle]["cc"]



def _a100s(n: int) -> list[dict]:
    return [{"name": "NVIDIA A100-SXM4-80GB", "total": 80 * GIB, "free": 79 * GIB, "cc": (8, 0)} for _ in range(n)]


def test_nvml_reads_every_device() -> None:
    nvml = FakeNvml(_a100s(2))
    inv = from_nvml(nvml, None, FIXED_CPU)
    assert inv.source == "nvml"
    assert [g.name for g in inv.gpus] == ["NVIDIA A100-SXM4-80GB"] * 2
    assert inv.gpus[0].total_bytes == 80 * GIB and inv.gpus[0].free_bytes == 79 * GIB
    assert inv.gpus[0].compute_capability == (8, 0)
    assert nvml.shutdown_called


@pytest.mark.parametrize(("visible", "expected"), [
    ("2,0", [2, 0]),
    ("1", [1]),
    ("", []),
    ("0,7,1", [0]),  # CUDA stops at the first invalid ordinal
    ("GPU-0003", [3]),
], ids=["reorder", "one", "empty", "invalid-stops", "uuid"])
def test_cuda_visible_devices(visible: str, expected: list[int]) -> None:
    devices = [{"name": f"GPU{i}", "total": (i + 1) * GIB, "cc": (8, 9)} for i in range(4)]
    inv = from_nvml(FakeNvml(devices), visible, FIXED_CPU)
    assert [g.total_bytes // GIB - 1 for g in inv.gpus] == expected
    assert [g.index for g in inv.gpus] == list(range(len(expected)))  # renumbered as CUDA sees them


def test_zero_devices_is_a_cpu_inventory() -> None:
    assert from_nvml(FakeNvml([]), None, FIXED_CPU).source == "cpu"


def test_nvml_failure_falls_back_to_cpu() -> None:
    class Broken(FakeNvml):
        def nvmlInit(self) -> None:
            raise FakeNvmlError("NVML Shared Library Not Found")

    inv = hardware.detect(None, nvml=Broken([]))
    assert inv.gpus == () and inv.source == "cpu"
    assert "NVML Shared Library Not Found" in inv.notes[0]


def test_real_pynvml_without_a_driver_falls_back_to_cpu() -> None:
    # No driver here: nvidia-ml-py raises NVMLError_LibraryNotFound, which must not escape.
    pytest.importorskip("pynvml")
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has an NVIDIA driver: NVML finds GPUs (tests/planner test the fake NVML)")
    inv = hardware.detect(None)
    assert inv.gpus == () and inv.source == "cpu" and inv.notes, inv
    assert inv.cpu.cores >= 1 and inv.cpu.ram_total_bytes > 0


@pytest.mark.parametrize(("flags", "expected"), [
    ("flags\t\t: fpu avx avx2 fma", False),
    ("flags\t\t: fpu avx2 avx512f avx512bw avx512vl", True),
    ("Features\t: fp asimd sve", False),
    ("", False),
], ids=["avx2-only", "avx512", "arm", "empty"])
def test_cpu_avx512_flag(flags: str, expected: bool) -> None:
    from server.planner.hardware import cpu_has_avx512

    assert cpu_has_avx512(f"processor\t: 0\n{flags}\n") is expected


@pytest.mark.parametrize(("spec", "names"), [
    ("2xA100-80GB", ["A100-80GB"] * 2),
    ("1xL4", ["L4"]),
    ("8xH100", ["H100"] * 8),
    ("1xT4,1xL4", ["T4", "L4"]),
    ("T4", ["T4"]),
    ("2 x a10g", ["A10G"] * 2),
    ("none", []),
], ids=lambda v: str(v))
def test_spec(spec: str, names: list[str]) -> None:
    inv = simulated(spec, FIXED_CPU)
    assert [g.name for g in inv.gpus] == names
    for g in inv.gpus:
        assert g.total_bytes == GPU_TABLE[g.name].total_bytes


@pytest.mark.parametrize(("spec", "message"), [
    ("2xB9000", "unknown GPU 'B9000'"),
    ("x", "unknown GPU 'x'"),
    ("2xA100,,", "cannot parse"),
    ("0xT4", "between 1 and 64"),
], ids=["unknown", "junk", "empty-part", "zero"])
def test_bad_spec(spec: str, message: str) -> None:
    with pytest.raises(HardwareSpecError, match=message) as info:
        simulated(spec, FIXED_CPU)
    if "unknown" in message:
        assert "A100-80GB" in str(info.value) and "T4" in str(info.value)  # lists the known ones


def test_table_entries_cite_a_source() -> None:
    for gpu in GPU_TABLE.values():
        assert gpu.source and gpu.bandwidth_gb_s > 0 and gpu.total_bytes > 8 * GIB


@pytest.mark.parametrize(("flags", "expected"), [
    ("flags\t\t: fpu avx2 fma", False),
    ("flags\t\t: fpu avx2 avx512f avx512_bf16", True),
    ("flags\t\t: fpu amx_bf16 amx_tile", True),
    ("Features\t: fp asimd bf16 i8mm", True),  # arm64
    ("Features\t: fp asimd", False),
    ("", False),
], ids=["avx2", "avx512-bf16", "amx", "arm-bf16", "arm-plain", "empty"])
def test_cpu_bf16_detection(flags: str, expected: bool) -> None:
    from server.planner.hardware import cpu_has_bf16

    assert cpu_has_bf16(f"processor\t: 0\n{flags}\n") is expected


@pytest.mark.parametrize(("name", "gib", "entry"), [
    ("NVIDIA H100 80GB HBM3", 80, "H100"), ("NVIDIA H100 PCIe", 80, "H100-PCIe"), ("NVIDIA A100-SXM4-40GB", 40,
     "A100-40GB"), ("NVIDIA A100 80GB PCIe", 80, "A100-80GB"), ("Tesla T4", 15, "T4"), ("NVIDIA L4", 22, "L4"),
    ("NVIDIA L40S", 45, "L40S"), ("NVIDIA L40", 45, "L40"), ("NVIDIA A10G", 22, "A10G"), ("NVIDIA A10", 22, "A10"),
    ("NVIDIA GeForce RTX 4090", 24, "RTX-4090"), ("NVIDIA RTX 6000 Ada Generation", 48, "RTX-6000-Ada"),
    ("Tesla V100-SXM2-16GB", 16, "V100-16GB"), ("NVIDIA H200", 141, "H200"), ("Some Future GPU", 99, None),
])
def test_nvml_names_find_their_datasheet(name: str, gib: int, entry: str | None) -> None:
    sheet = datasheet(name, gib * GIB)
    assert (sheet.name if sheet else None) == entry


def test_nvml_gpus_carry_datasheet_speeds() -> None:
    nvml = FakeNvml([{"name": "NVIDIA L4", "total": 22 * GIB, "free": 22 * GIB, "cc": (8, 9)}])
    gpu = from_nvml(nvml, None, FIXED_CPU).gpus[0]
    assert (gpu.bandwidth_gb_s, gpu.tflops_16bit) == (300, 121)
