"""The harness's timing helpers (harness.timing)."""

import math

import pytest
import torch

from rgbench.bench import timing


def test_peak_memory_is_nan_on_the_cpu():
    start, read = timing.peak_memory_tracker("cpu")
    start()
    assert math.isnan(read())


@pytest.mark.cuda
def test_peak_memory_counts_only_what_the_measured_calls_allocate():
    held = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")  # 64 MiB alive before start()
    start, read = timing.peak_memory_tracker("cuda")
    start()
    block = torch.empty(2**20, dtype=torch.uint8, device="cuda")  # 1 MiB during the measurement
    del block
    peak = read()
    assert 1 <= peak < 8, peak
    del held
