"""Named Cartesian products of benchmark settings, validated once up front.

A variance grid is dist x size x estimator x K x device x seed for one task; a speed grid
is dist x size x device for one batch size. Names are canonicalised through the
registries (aliases accepted), so an unknown name fails here with the list of valid ones,
before any work starts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from itertools import product
from typing import Iterator, NamedTuple

import torch

from rgbench import distributions, estimators
from rgbench.bench import tasks

#: what a newcomer's ``rgbench variance --dist NAME`` compares
DEFAULT_ESTIMATORS = ("e-reinforce", "t-reinforce", "e-loo", "t-loo", "relax", "sst")
#: what ``rgbench check`` measures by default (every family, x-reinforce included, so its
#: regressions are caught too; the variance command leaves it out as a newcomer's default)
CHECK_ESTIMATORS = ("e-reinforce", "t-reinforce", "x-reinforce", "e-loo", "t-loo", "relax", "sst")
#: sizes small enough for every structure to be enumerated quickly (exact bias)
DEFAULT_SIZES = (3, 4, 5)
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def check_device(device: str) -> str:
    """``device`` as a string, after checking torch can use it; ValueError otherwise."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device: {device!r} is not a torch device ({error})") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device: {device!r} requested but CUDA is not available "
            f"(torch {torch.__version__}, built with CUDA {torch.version.cuda or 'none'}); use --device cpu"
        )
    if parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"device: only cpu and cuda are supported, got {device!r}")
    return str(parsed)


def _positive_ints(name: str, values, minimum: int) -> tuple[int, ...]:
    values = tuple(values)
    if not values:
        raise ValueError(f"{name}: needs at least one value")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name}: every value must be an int >= {minimum}, got {value!r}")
    return values


def _check_number(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: must be an int >= {minimum}, got {value!r}")


class Cell(NamedTuple):
    seed: int
    device: str
    dist: str
    n: int
    estimator: str
    K: int


@dataclass
class VarianceGrid:
    """The settings of a variance run (see ``rgbench.bench.variance``).

    ``sizes=None`` uses :data:`DEFAULT_SIZES`. ``estimator_options`` maps an estimator name
    to extra constructor options (e.g. ``{"relax": {"warmup_steps": 100}}``).
    ``logit_shift`` is added to every logit (the law and the gradient are shift-invariant:
    a test of numerical range). ``instance_seed``, when set, seeds the instances, references
    and critic warm-ups in place of each cell's seed, so every seed faces the same instances
    (``rgbench check``); ``None`` (the default) derives them from the cell's seed.
    """

    dists: tuple[str, ...]
    sizes: tuple[int, ...] | None = None
    estimators: tuple[str, ...] = DEFAULT_ESTIMATORS
    samples: tuple[int, ...] = (4,)
    devices: tuple[str, ...] = ("cpu",)
    seeds: tuple[int, ...] = (0,)
    task: str = "quadratic"
    replicates: int = 1000
    level: float = 0.95
    dtype: str = "float64"
    logit_scale: float = 1.0
    logit_shift: float = 0.0
    instance_seed: int | None = None
    timing_repeats: int = 11
    bootstrap_resamples: int = 1000
    reference_samples: int = 1000
    reference_replicates: int = 64
    estimator_options: dict = field(default_factory=dict)

    def __post_init__(self):
        self.dists = tuple(distributions.DISTRIBUTIONS.canonical(name) for name in _nonempty("dists", self.dists))
        self.sizes = DEFAULT_SIZES if self.sizes is None else _positive_ints("sizes", self.sizes, 2)
        self.estimators = tuple(estimators.ESTIMATORS.canonical(name) for name in _nonempty("estimators", self.estimators))
        self.samples = _positive_ints("samples", self.samples, 1)
        self.devices = tuple(check_device(device) for device in _nonempty("devices", self.devices))
        self.seeds = _positive_ints("seeds", self.seeds, 0)
        self.task = tasks.TASKS.canonical(self.task)
        _check_number("replicates", self.replicates, 2)
        _check_number("timing_repeats", self.timing_repeats, 1)
        _check_number("bootstrap_resamples", self.bootstrap_resamples, 10)
        _check_number("reference_samples", self.reference_samples, 2)
        _check_number("reference_replicates", self.reference_replicates, 2)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not (isinstance(self.logit_scale, (int, float)) and math.isfinite(self.logit_scale) and self.logit_scale > 0):
            raise ValueError(f"logit_scale: must be a finite positive number, got {self.logit_scale!r}")
        if isinstance(self.logit_shift, bool) or not (isinstance(self.logit_shift, (int, float))
                                                      and math.isfinite(self.logit_shift)):
            raise ValueError(f"logit_shift: must be a finite number, got {self.logit_shift!r}")
        self.logit_shift = float(self.logit_shift)
        if self.instance_seed is not None:
            _check_number("instance_seed", self.instance_seed, 0)
        if not (isinstance(self.level, float) and 0.5 <= self.level < 1):
            raise ValueError(f"level: the confidence level must be a float in [0.5, 1), got {self.level!r}")
        options = {}
        for name, values in self.estimator_options.items():
            canonical = estimators.ESTIMATORS.canonical(name)
            # Build once so an unknown option fails now, not as a skipped cell later.
            estimators.get(canonical, num_samples=max(2, max(self.samples)), **values)
            options[canonical] = dict(values)
        self.estimator_options = options

    def cells(self) -> Iterator[Cell]:
        """The cells in run order: one instance (seed, device, dist, n) at a time."""
        for seed, device, dist, n in product(self.seeds, self.devices, self.dists, self.sizes):
            for estimator, k in product(self.estimators, self.samples):
                yield Cell(seed, device, dist, n, estimator, k)

    def __len__(self) -> int:
        return len(self.seeds) * len(self.devices) * len(self.dists) * len(self.sizes) * len(self.estimators) * len(self.samples)

    def fallback_notes(self) -> list[str]:
        """One line per (dist, n) too large to enumerate: its bias uses a Monte Carlo reference."""
        notes = []
        for dist in self.dists:
            limit = distributions.get(dist).max_enumeration_size
            large = [n for n in self.sizes if n > limit]
            if large:
                notes.append(
                    f"{dist}: n={','.join(map(str, large))} exceeds the exact-enumeration limit n<={limit}; "
                    f"bias there is measured against a t-loo reference (K={self.reference_samples}, "
                    f"{self.reference_replicates} replicates) with its standard error"
                )
        return notes

    def as_dict(self) -> dict:
        return {key: (list(value) if isinstance(value, tuple) else value) for key, value in asdict(self).items()}


@dataclass
class SpeedGrid:
    """The settings of a speed run (see ``rgbench.bench.speed``)."""

    dists: tuple[str, ...]
    sizes: tuple[int, ...] = (10, 50)
    batch: int = 128
    estimators: tuple[str, ...] = ("t-reinforce", "t-loo", "sst")
    samples: int = 4
    devices: tuple[str, ...] = ("cpu",)
    seed: int = 0
    task: str = "quadratic"
    dtype: str = "float32"
    logit_scale: float = 1.0
    repeats: int = 11
    estimator_options: dict = field(default_factory=dict)

    def __post_init__(self):
        self.dists = tuple(distributions.DISTRIBUTIONS.canonical(name) for name in _nonempty("dists", self.dists))
        self.sizes = _positive_ints("sizes", self.sizes, 2)
        self.estimators = tuple(estimators.ESTIMATORS.canonical(name) for name in self.estimators)
        self.devices = tuple(check_device(device) for device in _nonempty("devices", self.devices))
        self.task = tasks.TASKS.canonical(self.task)
        _check_number("batch", self.batch, 1)
        _check_number("samples", self.samples, 1)
        _check_number("seed", self.seed, 0)
        _check_number("repeats", self.repeats, 1)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not (isinstance(self.logit_scale, (int, float)) and math.isfinite(self.logit_scale) and self.logit_scale > 0):
            raise ValueError(f"logit_scale: must be a finite positive number, got {self.logit_scale!r}")
        options = {}
        for name, values in self.estimator_options.items():
            canonical = estimators.ESTIMATORS.canonical(name)
            estimators.get(canonical, num_samples=max(2, self.samples), **values)
            options[canonical] = dict(values)
        self.estimator_options = options

    def as_dict(self) -> dict:
        return {key: (list(value) if isinstance(value, tuple) else value) for key, value in asdict(self).items()}


def _nonempty(name: str, values) -> tuple:
    if isinstance(values, str):
        values = (values,)
    values = tuple(values)
    if not values:
        raise ValueError(f"{name}: needs at least one name")
    return values
