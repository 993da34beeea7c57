"""CPU thread defaults of the entry points (`python -m data_gen`, `train.py`, `eval.py`).

On a shared CPU, torch's OpenMP workers busy-wait for each other between operations; with another job
on the cores a worker that is swapped out stalls the rest while they spin, and the reference chain ran
10x slower per sample (BENCHMARKS.md, "Threads on a shared CPU"). So the entries start torch with
`OMP_WAIT_POLICY=PASSIVE` (waiting workers sleep) and one intra-op thread per CPU that this process
may actually use (its affinity mask and cgroup CPU quota, not the machine's core count). The user's
`OMP_NUM_THREADS` and `OMP_WAIT_POLICY` are respected. Inter-op threads are left as they are: eager
inference and training do not use them.

Call `configure()` before torch is imported: OpenMP reads its environment when torch loads it.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path


def cgroup_cpus(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs granted by the cgroup quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us`), or None if unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1"):
        return None
    return int(quota) / int(period)


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by the cgroup quota (rounded up)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpus()
    return max(1, min(n, math.ceil(quota))) if quota else n


def configure() -> int:
    """Set the thread defaults (see the module docstring) and return torch's intra-op thread count."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env and not env.isdigit() or env == "0":
        raise ValueError(f"OMP_NUM_THREADS={env!r}: expected a positive number of threads, e.g. "
                         f"OMP_NUM_THREADS={available_cpus()}, or unset it to use every available CPU")
    n = int(env) if env else available_cpus()
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # one prompt is tokenized at a time: a Rust thread pool would only compete with torch's threads
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch = sys.modules.get("torch")
    if torch is not None:  # loaded already (a test, a notebook): its OpenMP keeps its wait policy
        torch.set_num_threads(n)
    return n
