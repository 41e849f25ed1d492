"""Wall-clock timing with device synchronisation, and order-statistic summaries.

Asynchronous devices return before the work is done, so the device is synchronised before
each clock read. A summary reports the median, the quartiles (spread) and a
distribution-free confidence interval for the median from order statistics: with m sorted
times, [x_(j), x_(m+1-j)] covers the median with probability 1 - 2 P(Bin(m, 1/2) <= j - 1),
j the largest rank keeping that at or above the level (the full range when no j does).
"""

from __future__ import annotations

import math
import time
from typing import Callable, NamedTuple

import numpy as np
import torch


class TimingSummary(NamedTuple):
    median: float
    q25: float
    q75: float
    lo: float
    hi: float


def synchronize(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], repeats: int, device: torch.device | str, warmup: int = 1) -> list[float]:
    """Seconds taken by each of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    if repeats < 1:
        raise ValueError(f"time_calls: repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def median_interval_ranks(m: int, level: float = 0.95) -> tuple[int, int]:
    """1-based ranks (j, m + 1 - j) of the order-statistic interval for the median."""
    alpha = 1.0 - level
    tail, best = 0.0, 1
    for j in range(1, m // 2 + 1):
        tail += math.comb(m, j - 1) / 2**m  # P(Bin(m, 1/2) <= j - 1)
        if 2 * tail > alpha:
            break
        best = j
    return best, m + 1 - best


def summarize(times: list[float], level: float = 0.95) -> TimingSummary:
    values = np.sort(np.asarray(times, dtype=float))
    j, k = median_interval_ranks(len(values), level)
    q25, median, q75 = np.percentile(values, [25, 50, 75])
    return TimingSummary(float(median), float(q25), float(q75), float(values[j - 1]), float(values[k - 1]))


def peak_memory_tracker(device: torch.device | str):
    """(start, read) callables: read() gives, in MiB, the CUDA peak allocation since start()
    above what was allocated at start(), NaN on other devices (CPU peak memory is not
    tracked per call).

    The allocation at start() is subtracted because it holds whatever earlier work left
    alive (a cuBLAS workspace after the first matrix product, cached tensors), which is
    not the cost of the measured calls.
    """
    device = torch.device(device)
    allocated_at_start = [0]

    def start() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            allocated_at_start[0] = torch.cuda.memory_allocated(device)

    def read() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            return (torch.cuda.max_memory_allocated(device) - allocated_at_start[0]) / 2**20
        return float("nan")

    return start, read
