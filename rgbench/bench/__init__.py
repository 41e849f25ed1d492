"""The harness: runs a grid of (structure, size, estimator, K, device, seed) cells and
measures each estimator's bias, variance and cost (``run_variance``) or the raw speed of
the building blocks and estimators (``run_speed``); results are tidy frames with metadata
(``Results``), saved as CSV + JSON.
"""

from rgbench.bench.grid import DEFAULT_ESTIMATORS, DEFAULT_SIZES, SpeedGrid, VarianceGrid, check_device
from rgbench.bench.results import Results, saved_kinds
from rgbench.bench.speed import run_speed
from rgbench.bench.variance import run_variance

__all__ = [
    "DEFAULT_ESTIMATORS",
    "DEFAULT_SIZES",
    "Results",
    "SpeedGrid",
    "VarianceGrid",
    "check_device",
    "run_speed",
    "run_variance",
    "saved_kinds",
]
