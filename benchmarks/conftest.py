"""Shared fixtures for the pytest-benchmark suites (run with --benchmark-only)."""

import os
import torch


def pytest_configure(config):
    # The CPU targets are stated for 2 threads (issue 6); pin it so numbers are comparable.
    # RGBENCH_BENCH_THREADS sets another count (e.g. all cores of a GPU machine's CPU).
    torch.set_num_threads(int(os.environ.get("RGBENCH_BENCH_THREADS", "2")))
