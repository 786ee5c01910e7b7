"""Which CPUs the engine's compute threads run on, planned from the CPU inventory.

vLLM's CPU worker, left to itself ("auto"), binds one OpenMP thread per physical core of a NUMA node and
keeps one core out for its scheduler process. On a small machine that kept core is a large share of the
compute: on 2 cores it halves it. Measured on a 2-core AVX2 machine with the bundled model (typing session,
loadtests/typing_session.py, issue 11): binding both cores cut cold TTFT 13.8 -> 9.2 s and warm TTFT p50
1,195 -> 882 ms, and 8 concurrent streams decoded 10.0 -> 15.3 tok/s although the HTTP process and the
scheduler then share the cores with the compute threads. (Other work on the machine hurts more then: with a
test run beside it, one stream fell to 3.6 tok/s.)
So: on up to SMALL_MACHINE_CORES physical cores every core computes; above that one core stays free (a
small share there, and it keeps the scheduler and HTTP responsive). Across NUMA nodes vLLM's own binding
(per node) is kept. One logical CPU per physical core: SMT siblings share the core's matrix units.
"""

from __future__ import annotations

from .hardware import CpuInfo, parse_cpu_list

SMALL_MACHINE_CORES = 4


def cpu_binding(cpu: CpuInfo, setting: str) -> tuple[int, ...] | None:
    """CPU ids for the engine's compute threads, or None to leave the choice to the engine.
    `setting` is CODESERVE_CPU_CORES: 'auto', 'engine', or an explicit list ('0-3,6')."""
    if setting == "engine":
        return None
    if setting != "auto":
        return tuple(parse_cpu_list(setting))
    if cpu.numa_nodes > 1 or not cpu.core_cpus:
        return None
    first_of_each_core = [cpus[0] for cpus in cpu.core_cpus]
    if len(first_of_each_core) > SMALL_MACHINE_CORES:
        first_of_each_core = first_of_each_core[:-1]
    return tuple(first_of_each_core)
