"""Shared fixtures for the pytest-benchmark suites (run with --benchmark-only)."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def pytest_configure(config):
    # The targets are stated for 2 threads (issue 6); pin it so numbers are comparable.
    torch.set_num_threads(2)
