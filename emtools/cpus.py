"""How many threads a tool may run: the CPUs this process is allowed on (taskset, cgroups' cpusets
and `torchrun` bindings narrow it), not the machine's count."""

from __future__ import annotations

import os


def usable_cpus(cap: int = 8) -> int:
    """CPUs this process may use, between 1 and ``cap``."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(cap, available))
