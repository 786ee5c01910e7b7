"""CPU thread binding planned from the inventory: every core on small machines, one kept free on larger ones,
the engine's own per-node binding across NUMA nodes, one logical CPU per physical core."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.planner.cpu_binding import cpu_binding
from server.planner.hardware import CpuInfo, cpu_topology, parse_cpu_list


def _cpu(core_cpus: tuple[tuple[int, ...], ...], numa_nodes: int = 1) -> CpuInfo:
    return CpuInfo(cores=sum(len(c) for c in core_cpus), ram_total_bytes=1, ram_available_bytes=1,
                   core_cpus=core_cpus, numa_nodes=numa_nodes)


@pytest.mark.parametrize(("core_cpus", "numa_nodes", "setting", "expected"), [
    (((0,), (1,)), 1, "auto", (0, 1)),                                  # 2 cores: both compute
    (((0, 2), (1, 3)), 1, "auto", (0, 1)),                              # SMT: one logical CPU per core
    (((0,), (1,), (2,), (3,)), 1, "auto", (0, 1, 2, 3)),                # 4 cores: still all
    (tuple((i,) for i in range(8)), 1, "auto", (0, 1, 2, 3, 4, 5, 6)),  # 8 cores: one kept free
    (((5,), (7,)), 1, "auto", (5, 7)),                                  # a container's affinity mask
    (tuple((i,) for i in range(8)), 2, "auto", None),                   # NUMA: vLLM binds per node
    ((), 1, "auto", None),                                              # topology unreadable
    (((0,), (1,)), 1, "engine", None),                                  # vLLM's own choice asked for
    (((0,), (1,)), 1, "1", (1,)),                                       # an explicit list
    (((0,), (1,)), 1, "0-2,6", (0, 1, 2, 6)),
], ids=["2-cores", "smt", "4-cores", "8-cores", "affinity", "numa", "unknown", "engine", "one", "list"])
def test_cpu_binding(core_cpus: tuple[tuple[int, ...], ...], numa_nodes: int, setting: str,
                     expected: tuple[int, ...] | None) -> None:
    assert cpu_binding(_cpu(core_cpus, numa_nodes), setting) == expected


def test_parse_cpu_list() -> None:
    assert parse_cpu_list("0-3,8,10-11") == [0, 1, 2, 3, 8, 10, 11]
    assert parse_cpu_list("") == []


def _sysfs(root: Path, cpus: dict[int, tuple[int, int]], nodes: dict[int, str]) -> tuple[Path, Path]:
    for cpu, (package, core) in cpus.items():
        topology = root / "cpu" / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text(f"{package}\n")
        (topology / "core_id").write_text(f"{core}\n")
    for node, listed in nodes.items():
        (root / "node" / f"node{node}").mkdir(parents=True)
        (root / "node" / f"node{node}" / "cpulist").write_text(listed + "\n")
    return root / "cpu", root / "node"


def test_topology_groups_smt_siblings_and_counts_nodes(tmp_path: Path) -> None:
    # 2 sockets x 2 cores x 2 threads; siblings are n and n+4, socket 1 holds cores of CPUs 2,3,6,7
    cpus = {0: (0, 0), 1: (0, 1), 2: (1, 0), 3: (1, 1), 4: (0, 0), 5: (0, 1), 6: (1, 0), 7: (1, 1)}
    sys_cpu, sys_node = _sysfs(tmp_path, cpus, {0: "0-1,4-5", 1: "2-3,6-7"})
    assert cpu_topology(set(range(8)), sys_cpu, sys_node) == (((0, 4), (1, 5), (2, 6), (3, 7)), 2)
    # a process allowed only socket 0 spans one node
    assert cpu_topology({0, 1, 4, 5}, sys_cpu, sys_node) == (((0, 4), (1, 5)), 1)


def test_topology_unreadable(tmp_path: Path) -> None:
    assert cpu_topology({0, 1}, tmp_path / "missing", tmp_path / "missing") == ((), 1)
