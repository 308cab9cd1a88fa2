"""What every benchmark measures with: percentiles, and a process's CPU and memory."""

from __future__ import annotations

import os
import pathlib
import statistics
from typing import Any


def percentile(samples: list[float], q: float) -> float:
    """The ``q``-th percentile by nearest rank."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(samples: list[float]) -> dict[str, float]:
    """p50, p99 and mean of milliseconds, and how many samples."""
    return {
        "p50_ms": round(percentile(samples, 50), 3),
        "p99_ms": round(percentile(samples, 99), 3),
        "mean_ms": round(statistics.fmean(samples), 3),
        "n": len(samples),
    }


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds_precise(pid: int) -> float:
    """CPU time of the process's live threads, to the nanosecond (``schedstat``).

    ``cpu_seconds`` counts in clock ticks (10 ms): too coarse to tell one call's cost.
    Threads that already ended are not counted: measure over spans in which the
    process keeps its threads.
    """
    total = 0
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def rss_mib(pid: int) -> float:
    """Resident memory of the process."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def load() -> float:
    """The machine's one-minute load average (other work competes for the CPUs)."""
    return os.getloadavg()[0]


def median_of(runs: list[Any]) -> Any:
    """Same-shaped results of several runs, each number replaced by its median.

    Dicts and lists are merged element by element; anything that is not a number
    (names, flags) is taken from the first run. The README quotes these medians, so
    a rerun lands within the noise of one run instead of on its luck.
    """
    first = runs[0]
    if isinstance(first, dict):
        return {key: median_of([run[key] for run in runs]) for key in first}
    if isinstance(first, list):
        return [median_of([run[i] for run in runs]) for i in range(len(first))]
    if isinstance(first, bool) or not isinstance(first, int | float):
        return first
    return statistics.median(runs)
