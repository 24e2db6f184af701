"""CPU seconds spent by each part of the benchmark's stack, so a phase's cost can be split by process.

Throughput on a 2-core machine is bounded by CPU; CPU milliseconds per saga and per chain, by process,
say where the saga machinery's cost lands and are steadier than wall-clock rates on a noisy machine.
"""

from __future__ import annotations

from collections import defaultdict

import psutil

# Process names of the servers, local or embedded.
_SERVERS = {"postgres": "postgres", "redis-server": "redis"}


def _seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def snapshot(worker_pid: int) -> dict[str, float]:
    """Cumulative CPU seconds of the worker (with its pool), this process, PostgreSQL and Redis."""
    totals: dict[str, float] = defaultdict(float)
    worker = psutil.Process(worker_pid)
    for process in (worker, *worker.children(recursive=True)):
        try:
            totals["worker"] += _seconds(process)
        except psutil.NoSuchProcess:
            pass
    totals["bench"] = _seconds(psutil.Process())
    for process in psutil.process_iter(["name"]):
        group = next((g for prefix, g in _SERVERS.items() if (process.info["name"] or "").startswith(prefix)), None)
        if group is None:
            continue
        try:
            totals[group] += _seconds(process)
        except psutil.NoSuchProcess:
            pass
    return dict(totals)


def per_unit_ms(before: dict[str, float], after: dict[str, float], units: int) -> dict[str, float]:
    """Milliseconds of CPU per unit of work between two snapshots, by part and in total."""
    parts = {key: (after.get(key, 0.0) - before.get(key, 0.0)) * 1000 / units for key in after}
    parts["total"] = sum(parts.values())
    return {key: round(value, 2) for key, value in parts.items()}
