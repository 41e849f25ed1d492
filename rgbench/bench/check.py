"""The CI regression check: estimator variance and bias against a committed baseline.

A small fixed grid of *cells* (structure, size n, estimator, K) is recomputed on the CPU in
float64 and compared with a baseline file written earlier by the same code (``--update``).
Each cell draws R independent estimates g_1..g_R (d coordinates each) of the gradient of
E[L(X)] for one seeded instance and the quadratic task (``rgbench.bench.tasks``: L(X) =
||ind(X) - ind(X*)||^2, X* one seeded sample of the instance), and records

* the total variance  V = sum_r ||g_r - g_bar||^2 / (R - 1) = mean_r D_r * R / (R - 1),
  D_r = ||g_r - g_bar||^2, with its CLT standard error se(V) = sd_r(D_r) / sqrt(R) * R / (R - 1);
* per coordinate i the mean g_bar_i and its standard error SE_i = s_i / sqrt(R), s_i the
  sample standard deviation, for a z-test against the exact gradient grad_i (enumeration).

Tests (the family-wise false-alarm rate alpha, default 1e-3, is split by Bonferroni over all
m tests of one comparison: m = #variance tests + #bias coordinate tests):

* variance rose: one-sided z-test on log(V_cur / V_base) with the delta-method standard error
  sqrt(se_cur^2 / V_cur^2 + se_base^2 / V_base^2); FAIL when z > Phi^-1(1 - alpha / m).
  Baseline and current runs are independent (different seeds) or identical (the same seed:
  z = 0), so the independent-samples standard error is exact or conservative.
* bias (estimators with ``unbiased = True`` only; sst is biased, so only its variance is
  checked): z_i = (g_bar_i - grad_i) / SE_i for every coordinate; FAIL when
  |z_i| > Phi^-1(1 - alpha / (2 m)). A coordinate with SE_i = 0 is skipped when its bias
  is exactly 0 (a position the structure never moves) and fails otherwise (z = inf).
* a baseline cell that is missing from a full run (a subset run, ``--dists/--sizes/
  --estimators``, compares only its own cells), raises (error recorded, cell named), or is
  now skipped although the baseline did not record it skipped: FAIL. The run decides what is
  measurable: a cell it measured whose baseline records skipped or error FAILs (no numbers),
  so editing a status cannot drop a test. Cells new to the baseline (outside its grid) get
  the bias test and FAIL when biased, else verdict NEW.
* the baseline itself (load): an unknown status, a non-numeric, negative or non-finite
  variance, a wrong type, no cells, or a cell of its own recorded grid missing is a
  ValueError naming the cell and field; a full run also needs every cell of its grid.
* variants: every structure at n=3 with t-reinforce and t-loo in float32, plain and with
  every logit shifted by +-105 (the law and the gradient are shift-invariant, so the float64
  unshifted exact gradient is their reference). The exact gradient of each instance is
  checked against central finite differences of the exact expectation (forward values
  only), so a wrong backward pass cannot bias the reference and the estimators alike.

Seeds (SHA-256 via :func:`rgbench.bench.seeds.derive_seed`, never Python's ``hash``): the
instance (logits and task target) and the relax critic's warm-up derive from the baseline's
``instance_seed``, so every comparison faces the same instances and the same trained critic;
the estimates derive from ``seed`` and the cell name, so the baseline's seed reproduces it
exactly and another seed is a fresh, independent sample of the same quantities.

Normal approximations assume R large enough for means and log-variances to be near-normal.
R = 10000 because some cells are heavy-tailed: se(V) / V is 0.6-2 % for most cells but about
7 % for relax on binary trees at n = 3, where a doubled variance then still gives z near 7
against a threshold near 4.6 (about 99 % power); elsewhere z is 10-50. Cost: per instance one
enumeration for the exact gradient; per cell the critic warm-up (relax) and R estimates:
about 30 CPU-seconds on 2 cores for the default 120 cells.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from importlib import resources
from datetime import datetime, timezone
from pathlib import Path
from statistics import NormalDist
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

import rgbench
from rgbench import distributions, estimators
from rgbench.bench import tasks
from rgbench.estimators.base import Estimator
from rgbench.bench.seeds import derive_seed, generator
from rgbench.bench.store import Interrupted, check_stop, write_text
from rgbench.bench.streaming import ReplicateSummary, chunk_sizes, draw_chunks

FORMAT = "rgbench-variance-check/1"
STATUSES = ("ok", "skipped", "error")
DEFAULT_ESTIMATORS = ("e-reinforce", "t-reinforce", "x-reinforce", "e-loo", "t-loo", "relax", "sst")
DEFAULT_SIZES = (3, 4)
DEFAULT_K = 4
DEFAULT_REPLICATES = 10000
DEFAULT_SEED = 0
DEFAULT_TASK = "quadratic"
FALSE_ALARM_RATE = 1e-3
#: critic steps when an estimator has ``train_critic`` but no ``warm_up`` / ``warmup_steps``
DEFAULT_WARMUP_STEPS = 200

VARIANCE_TEST = (
    "one-sided z-test on log(V_cur / V_base), delta-method SE sqrt(se_cur^2/V_cur^2 + se_base^2/V_base^2), "
    "V = sum_r ||g_r - mean g||^2 / (R-1), se(V) = sd_r(||g_r - mean g||^2) / sqrt(R) * R/(R-1); "
    "FAIL if z > Phi^-1(1 - alpha/m)"
)
BIAS_TEST = (
    "per coordinate z = (mean g_i - exact grad_i) / (s_i / sqrt(R)) for unbiased estimators; "
    "FAIL if |z| > Phi^-1(1 - alpha/(2m)); SE 0 with bias exactly 0 is skipped, SE 0 with bias != 0 fails"
)
FAMILY = "Bonferroni: m = number of variance tests + number of bias coordinate tests in one comparison"


# ---------------------------------------------------------------------------- the grid
@dataclass(frozen=True)
class CheckCell:
    """One cell of the grid: ``estimator`` with ``K`` samples on ``dist`` at size ``n``."""

    dist: str
    n: int
    estimator: str
    K: int
    options: tuple[tuple[str, object], ...] = ()
    dtype: str = "float64"
    #: constant added to every logit (the law and the gradient do not change)
    shift: float = 0.0

    @property
    def name(self) -> str:
        name = f"{self.dist}/n={self.n}/{self.estimator}/K={self.K}"
        if self.dtype != "float64":
            name += f"/{self.dtype}"
        return name + (f"/shift={self.shift:+g}" if self.shift else "")


@dataclass(frozen=True)
class Variant:
    """Extra cells on the same instances in another dtype and/or with every logit shifted
    by ``shift``, compared with the float64 unshifted exact gradient (shift-invariant law)."""

    dtype: str
    shift: float
    sizes: tuple[int, ...]
    estimators: tuple[str, ...]

    def as_dict(self) -> dict:
        return {"dtype": self.dtype, "shift": self.shift, "sizes": list(self.sizes), "estimators": list(self.estimators)}


#: float32 at n=3, plain and with logits shifted by +-105, where float32 exp() over/underflows
#: unless the code shifts first (the issue-12 regression: wrong law beyond about +-90)
DEFAULT_VARIANTS = (
    Variant("float32", 0.0, (3,), ("t-reinforce", "t-loo")),
    Variant("float32", 105.0, (3,), ("t-reinforce", "t-loo")),
    Variant("float32", -105.0, (3,), ("t-reinforce", "t-loo")),
)
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class CheckGrid:
    """Every ``dists`` x ``sizes`` x ``estimators`` at one K, R replicates each.

    ``dists`` defaults to every registered structure. ``estimator_options`` maps an
    estimator name to constructor options (none by default: the check tests the defaults).
    """

    dists: tuple[str, ...] = ()
    sizes: tuple[int, ...] = DEFAULT_SIZES
    estimators: tuple[str, ...] = DEFAULT_ESTIMATORS
    K: int = DEFAULT_K
    replicates: int = DEFAULT_REPLICATES
    task: str = DEFAULT_TASK
    estimator_options: dict = field(default_factory=dict, hash=False)
    variants: tuple[Variant, ...] = DEFAULT_VARIANTS

    def __post_init__(self):
        object.__setattr__(self, "dists", tuple(self.dists) or tuple(distributions.names()))
        object.__setattr__(self, "variants", tuple(
            v if isinstance(v, Variant) else Variant(v["dtype"], float(v["shift"]), tuple(v["sizes"]), tuple(v["estimators"]))
            for v in self.variants))
        for variant in self.variants:
            if variant.dtype not in DTYPES:
                raise ValueError(f"CheckGrid: variant dtype must be one of {', '.join(DTYPES)}, got {variant.dtype!r}")
        object.__setattr__(self, "sizes", tuple(self.sizes))
        object.__setattr__(self, "estimators", tuple(self.estimators))
        for name in self.dists:
            distributions.get(name)  # ValueError listing the valid names
        if not self.sizes or any(isinstance(n, bool) or not isinstance(n, int) or n < 2 for n in self.sizes):
            raise ValueError(f"CheckGrid: sizes must be ints >= 2, got {self.sizes!r}")
        if not self.estimators:
            raise ValueError("CheckGrid: estimators must name at least one estimator")
        if isinstance(self.K, bool) or not isinstance(self.K, int) or self.K < 1:
            raise ValueError(f"CheckGrid: K must be a positive int, got {self.K!r}")
        if isinstance(self.replicates, bool) or not isinstance(self.replicates, int) or self.replicates < 2:
            raise ValueError(f"CheckGrid: replicates must be an int >= 2, got {self.replicates!r}")
        tasks.get(self.task)

    def cells(self) -> list[CheckCell]:
        """Cells in instance order (all cells of one instance are adjacent); a variant keeps
        only the sizes and estimators this grid also has."""
        def options(name):
            return tuple(sorted(self.estimator_options.get(name, {}).items()))

        cells = []
        for dist in self.dists:
            for n in self.sizes:
                cells += [CheckCell(dist, n, name, self.K, options(name)) for name in self.estimators]
                for v in self.variants:
                    if n in v.sizes:
                        cells += [CheckCell(dist, n, name, self.K, options(name), v.dtype, v.shift)
                                  for name in v.estimators if name in self.estimators]
        return cells

    def as_dict(self) -> dict:
        return {
            "dists": list(self.dists),
            "sizes": list(self.sizes),
            "estimators": list(self.estimators),
            "K": self.K,
            "replicates": self.replicates,
            "task": self.task,
            "estimator_options": self.estimator_options,
            "variants": [variant.as_dict() for variant in self.variants],
            "device": "cpu",
            "dtype": "float64",
        }


# ---------------------------------------------------------------------------- one cell
@dataclass
class CellResult:
    """What a cell records. ``status``: ``ok``, ``skipped`` (unsupported, with ``reason``) or
    ``error`` (the computation raised or returned non-finite values; ``reason`` says how)."""

    status: str
    reason: str = ""
    unbiased: bool = True
    replicates: int = 0
    variance: float = math.nan
    variance_se: float = math.nan
    #: bias z per coordinate (not saved; None for coordinates with SE 0 and bias exactly 0)
    bias_z: list | None = None
    max_abs_bias_z: float = math.nan
    bias_tests: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict:
        out = {key: value for key, value in asdict(self).items() if key != "bias_z"}
        return {key: _json_float(value) for key, value in out.items()}

    @classmethod
    def from_json(cls, data: dict, where: str = "cell") -> "CellResult":
        """A saved cell; ValueError naming ``where`` and the field for an invalid value."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: must be an object, got {type(data).__name__}")
        known = {key for key in cls.__dataclass_fields__ if key != "bias_z"}
        result = cls(**{key: _from_json_float(value) for key, value in data.items() if key in known})
        if result.status not in STATUSES:
            raise ValueError(f"{where}: status must be one of {', '.join(STATUSES)}, got {result.status!r}")
        for key, kind in (("reason", str), ("unbiased", bool)):
            if not isinstance(getattr(result, key), kind):
                raise ValueError(f"{where}: {key} must be a {kind.__name__}, got {getattr(result, key)!r}")
        measured = result.status == "ok"
        for key in ("replicates", "bias_tests"):
            value = getattr(result, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < (2 if key == "replicates" and measured else 0):
                raise ValueError(f"{where}: {key} must be an int >= {2 if key == 'replicates' and measured else 0}, "
                                 f"got {value!r}")
        for key in ("variance", "variance_se", "max_abs_bias_z", "seconds"):
            value = getattr(result, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{where}: {key} must be a number, got {value!r}")
            # A measured cell's variance is what the test compares with: finite and >= 0.
            must_be_finite = measured and key in ("variance", "variance_se")
            if (must_be_finite and not math.isfinite(value)) or value < 0:
                raise ValueError(f"{where}: {key} must be a {'finite ' if must_be_finite else ''}number >= 0, got {value!r}")
        return result


def _json_float(value):
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _from_json_float(value):
    return float(value) if value in ("nan", "inf", "-inf") else value


def describe_error(error: BaseException) -> str:
    """One line: the exception's type, where it was raised and its message."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
    return f"{type(error).__name__}{where}: {error}"


def default_estimator_factory(cell: CheckCell) -> Estimator:
    return estimators.get(cell.estimator, num_samples=cell.K, **dict(cell.options))


def replicate_statistics(draws: torch.Tensor, exact: torch.Tensor) -> dict:
    """V, se(V) and the per-coordinate bias z of R replicates ``draws`` [R, ...] against
    the exact gradient (module docstring), folded in by chunks as :func:`_measure` draws them."""
    summary = ReplicateSummary(deviation_moments=True)
    start = 0
    for size in chunk_sizes(draws.shape[0], draws[0].numel()):
        summary.add(draws[start:start + size])
        start += size
    return summary_statistics(summary, exact)


def summary_statistics(summary: ReplicateSummary, exact: torch.Tensor) -> dict:
    """:func:`replicate_statistics` from a chunk-combined summary (with deviation moments)."""
    r = summary.count
    grad = exact.reshape(-1).to("cpu", torch.float64)
    mean = summary.replicate_mean
    sum_d, sum_dd = summary.deviation_sums()  # D_r = ||g_r - mean||^2
    variance = sum_d / (r - 1)
    variance_se = math.sqrt(max(sum_dd - sum_d**2 / r, 0.0) / (r - 1)) / math.sqrt(r) * r / (r - 1)
    se = summary.variance.sqrt() / math.sqrt(r)
    delta = mean - grad
    z = torch.where(se > 0, delta / torch.where(se > 0, se, torch.ones_like(se)), delta.sign() * math.inf)
    tested = (se > 0) | (delta != 0)
    bias_z = [float(value) if keep else None for value, keep in zip(z.tolist(), tested.tolist())]
    tested_z = [abs(value) for value in bias_z if value is not None]
    return {
        "variance": variance,
        "variance_se": variance_se,
        "bias_z": bias_z,
        "max_abs_bias_z": max(tested_z) if tested_z else 0.0,
        "bias_tests": len(tested_z),
    }


def _warm_up(estimator, dist, objective, gen) -> None:
    """Train a critic before measuring, as the variance harness does."""
    if callable(getattr(estimator, "warm_up", None)):
        estimator.warm_up(dist, objective, generator=gen)
    elif callable(getattr(estimator, "train_critic", None)):
        steps = getattr(estimator, "warmup_steps", DEFAULT_WARMUP_STEPS)
        estimator.train_critic(dist, objective, steps=steps, generator=gen)


def _measure(
    cell: CheckCell, grid: CheckGrid, dist, objective, exact, instance_seed: int, seeds: Sequence[int], factory
) -> list[CellResult]:
    """One result per seed; the estimator is built and warmed up once (from the instance
    seed), then R estimates are drawn from each seed's own stream."""
    start = time.perf_counter()
    unbiased = True
    try:
        estimator = factory(cell)
        unbiased = bool(getattr(estimator, "unbiased", unbiased))
        reason = estimator.supports(dist, objective)
        if reason is not None:
            return [CellResult("skipped", reason, unbiased) for _ in seeds]
        warm_seed = derive_seed(instance_seed, "check", cell.name, "warmup")
        # Components that draw from the global generator are seeded per cell too, without
        # disturbing the caller's global stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(warm_seed)
            _warm_up(estimator, dist, objective, generator(warm_seed))
            warm_seconds = time.perf_counter() - start
            results = []
            for seed in seeds:
                begin = time.perf_counter()
                sample_seed = derive_seed(seed, "check", cell.name, "samples")
                torch.manual_seed(sample_seed)
                summary = ReplicateSummary(deviation_moments=True)
                draw = lambda size: estimator.estimate(dist, objective, num_replicates=size,  # noqa: E731
                                                       generator=sample_gen)
                sample_gen = generator(sample_seed)
                for draws in draw_chunks(draw, grid.replicates, dist.logits.numel(), between=check_stop):
                    expected = (draws.shape[0] if isinstance(draws, torch.Tensor) else -1, *dist.logits.shape)
                    if not isinstance(draws, torch.Tensor) or tuple(draws.shape) != expected:
                        got = tuple(draws.shape) if isinstance(draws, torch.Tensor) else type(draws).__name__
                        raise ValueError(f"estimate returned shape {got}, expected (chunk, *{tuple(dist.logits.shape)})")
                    if not bool(torch.isfinite(draws).all()):
                        raise FloatingPointError("estimate returned NaN or inf")
                    summary.add(draws.detach())
                if summary.count != grid.replicates:
                    raise ValueError(f"estimate returned {summary.count} replicates, expected {grid.replicates}")
                stats = summary_statistics(summary, exact)
                seconds = time.perf_counter() - begin + warm_seconds
                results.append(CellResult("ok", "", unbiased, grid.replicates, seconds=seconds, **stats))
            return results
    except Interrupted:
        raise
    except NotImplementedError as error:
        return [CellResult("skipped", str(error), unbiased) for _ in seeds]
    except Exception as error:  # recorded and named, never lost
        return [CellResult("error", describe_error(error), unbiased) for _ in seeds]


# ---------------------------------------------------------------------------- a run
@dataclass
class CheckRun:
    """The cells of one run (by name, in grid order) and how they were made.

    ``settings``: the grid (``CheckGrid.as_dict``) plus ``seed`` and ``instance_seed``.
    """

    settings: dict
    cells: dict[str, CellResult]
    metadata: dict = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return int(self.settings["seed"])

    @property
    def instance_seed(self) -> int:
        return int(self.settings["instance_seed"])

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "about": (
                "Baseline of `rgbench check`: total variance V and its standard error per cell "
                "(structure/n/estimator/K). Rewritten only by `rgbench check --update`."
            ),
            "made_by": self.metadata,
            "settings": self.settings,
            "statistics": {
                "false_alarm_rate": FALSE_ALARM_RATE,
                "family": FAMILY,
                "variance_test": VARIANCE_TEST,
                "bias_test": BIAS_TEST,
            },
            "cells": {name: result.to_json() for name, result in self.cells.items()},
        }

    def save(self, path: Path) -> None:
        """Write atomically (``store.write_text``); an OSError is an ``OutputError``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "CheckRun":
        """A saved baseline; ``ValueError`` naming the file when it is not one."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"baseline {path} is not valid JSON: {error}") from error
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"baseline {path} has format {found!r}, expected {FORMAT!r}")
        try:
            settings = dict(data["settings"])
            int(settings["seed"]), int(settings["instance_seed"])
            raw = data["cells"]
            if not isinstance(raw, dict):
                raise TypeError(f"cells must be an object, got {type(raw).__name__}")
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"baseline {path} lacks a field or has a malformed one: {error!r}") from error
        if not raw:
            raise ValueError(f"baseline {path} has no cells; regenerate it with `rgbench check --update`")
        cells = {}
        for name, value in raw.items():
            try:
                cells[name] = CellResult.from_json(value, f"baseline {path}: cell {name}")
            except TypeError as error:  # an unknown field name
                raise ValueError(f"baseline {path}: cell {name}: {error}") from None
        try:
            own = CheckGrid(**{"variants": (), **{key: settings[key] for key in
                               ("dists", "sizes", "estimators", "K", "replicates", "task", "estimator_options", "variants")
                               if key in settings}})
        except (TypeError, ValueError, KeyError) as error:
            raise ValueError(f"baseline {path}: settings do not describe a grid: {error}") from None
        lacking = [cell.name for cell in own.cells() if cell.name not in cells]
        if lacking:
            raise ValueError(f"baseline {path} lacks {len(lacking)} cell(s) of its own grid (first: {lacking[0]}); "
                             "regenerate it with `rgbench check --update`")
        return cls(settings, cells, data.get("made_by", {}))


def make_metadata(grid: CheckGrid, seed: int, instance_seed: int, command: str | None) -> dict:
    return {
        "command": command if command is not None else " ".join(sys.argv),
        "rgbench_version": rgbench.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "instance_seed": instance_seed,
        "replicates": grid.replicates,
        "K": grid.K,
        "false_alarm_rate": FALSE_ALARM_RATE,
    }


def run_check(
    grid: CheckGrid,
    seeds: int | Sequence[int] = DEFAULT_SEED,
    *,
    instance_seed: int | None = None,
    estimator_factory: Callable[[CheckCell], Estimator] = default_estimator_factory,
    progress: bool = False,
    command: str | None = None,
) -> CheckRun | list[CheckRun]:
    """Compute every cell of ``grid``.

    Args:
        seeds: the seed of the estimates; a list gives one run per seed, sharing the
            instances, exact gradients and warmed-up estimators (for false-alarm studies).
        instance_seed: the seed of the instances and critic warm-ups (default: the first
            seed). Comparisons must use the baseline's.
        estimator_factory: builds the estimator of a cell (tests substitute a regressed one).
    Returns one :class:`CheckRun` for an int ``seeds``, else a list of them.
    """
    seed_list = [seeds] if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise ValueError("run_check: seeds must name at least one seed")
    instance_seed = seed_list[0] if instance_seed is None else instance_seed
    per_seed: list[dict[str, CellResult]] = [{} for _ in seed_list]
    current, dist, objective, exact, instance_error = None, None, None, None, None
    cells = grid.cells()
    for cell in tqdm(cells, desc="check", unit="cell", disable=not progress, leave=False):
        if (cell.dist, cell.n) != current:
            current = (cell.dist, cell.n)
            dist, objective, exact, instance_error = _instance(grid, cell, instance_seed)
        if instance_error is not None:
            results = [CellResult("error", instance_error) for _ in seed_list]
        else:
            # Same instance in the cell's dtype, every logit shifted: the law is unchanged, so the
            # float64 unshifted exact gradient stays the reference.
            shifted = dist if (cell.dtype, cell.shift) == ("float64", 0.0) else dist.with_logits(
                (dist.logits + cell.shift).to(DTYPES[cell.dtype]))
            results = _measure(cell, grid, shifted, objective, exact, instance_seed, seed_list, estimator_factory)
        for store, result in zip(per_seed, results):
            store[cell.name] = result
    runs = [
        CheckRun({"seed": seed, "instance_seed": instance_seed, **grid.as_dict()}, store,
                 make_metadata(grid, seed, instance_seed, command))
        for seed, store in zip(seed_list, per_seed)
    ]
    return runs[0] if isinstance(seeds, int) else runs


def _instance(grid: CheckGrid, cell: CheckCell, instance_seed: int):
    """(dist, objective, exact gradient, None) or (..., error message) for a failed setup."""
    try:
        gen = generator(derive_seed(instance_seed, "check", cell.dist, cell.n, grid.task, "instance"))
        dist = tasks.make_instance(cell.dist, cell.n, generator=gen, dtype=torch.float64, device="cpu")
        objective = tasks.get(grid.task).build(dist, gen)
        _, exact = estimators.exact_gradient(dist, objective)
        finite_difference_check(dist, objective, exact)
        return dist, objective, exact, None
    except Exception as error:
        return None, None, None, f"the instance or its exact gradient failed: {describe_error(error)}"


def finite_difference_check(dist, objective, exact: torch.Tensor, step: float = 1e-5, tol: float = 1e-6) -> None:
    """ValueError unless the exact gradient (autograd through the trace log-probability)
    matches central differences (E(theta + h e_i) - E(theta - h e_i)) / 2h of the exact
    expectation, which needs only forward values: a wrong backward pass (the issue-12 CLE
    clamp) would otherwise bias the reference and every estimator alike. In float64 with
    h = 1e-5 the difference's error is O(h^2 E''') + O(eps / h), about 1e-10 here; ``tol``
    is relative to max(1, max |grad|)."""
    logits = dist.logits.detach()
    fd = torch.zeros_like(logits).reshape(-1)
    usable = dist.support_mask.reshape(-1)
    # Symmetric logits (undirected graphs) read only the upper triangle, but must stay
    # symmetric: move the mirrored entry too.
    mirror = logits.dim() == 2 and logits.shape[0] == logits.shape[1] and bool((logits == logits.T).all())
    for i in usable.nonzero().squeeze(-1).tolist():
        values = []
        for sign in (1.0, -1.0):
            moved = logits.clone().reshape(-1)
            moved[i] += sign * step
            if mirror:
                row, col = divmod(i, logits.shape[1])
                moved[col * logits.shape[1] + row] = moved[i]
            moved_dist = dist.with_logits(moved.reshape(logits.shape))
            with torch.no_grad():
                values.append(float(estimators.exact_expectation(moved_dist, objective)))
        fd[i] = (values[0] - values[1]) / (2 * step)
    error = (fd.reshape(logits.shape) - exact.detach()).abs()
    if not float(error.max()) <= tol * max(1.0, float(exact.abs().max())):
        worst = int(error.reshape(-1).argmax())
        raise ValueError(f"the exact gradient disagrees with central finite differences of E[L] at flat coordinate "
                         f"{worst}: {float(exact.reshape(-1)[worst]):.6g} vs {float(fd[worst]):.6g}")


# ---------------------------------------------------------------------------- comparison
@dataclass
class Row:
    """One line of the comparison table."""

    name: str
    verdict: str  # PASS, FAIL, SKIP or NEW
    base_variance: float = math.nan
    variance: float = math.nan
    ratio: float = math.nan
    variance_z: float = math.nan
    max_abs_bias_z: float = math.nan
    note: str = ""


@dataclass
class Comparison:
    rows: list[Row]
    alpha: float
    num_tests: int
    variance_threshold: float
    bias_threshold: float

    @property
    def failed(self) -> list[Row]:
        return [row for row in self.rows if row.verdict == "FAIL"]

    @property
    def passed(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        """One line: the outcome and the failing cells."""
        counts = {verdict: sum(row.verdict == verdict for row in self.rows) for verdict in ("PASS", "SKIP", "NEW")}
        tail = f"{counts['PASS']} passed, {counts['SKIP']} skipped, {counts['NEW']} new; " \
               f"{self.num_tests} tests at family-wise false-alarm rate {self.alpha:g}"
        if self.passed:
            return f"check passed: {tail}"
        names = ", ".join(f"{row.name} ({row.note})" for row in self.failed)
        return f"check FAILED: {len(self.failed)} cell(s): {names}; {tail}"


def variance_z(current: CellResult, base: CellResult) -> float:
    """z of log(V_cur / V_base) (module docstring); +inf when V rose from exactly 0."""
    vc, vb = current.variance, base.variance
    if vb == 0 or vc == 0:
        return 0.0 if vc == vb else (math.inf if vc > vb else -math.inf)
    log_ratio = math.log(vc / vb)
    se = math.sqrt((current.variance_se / vc) ** 2 + (base.variance_se / vb) ** 2)
    if se == 0:
        return 0.0 if log_ratio == 0 else math.copysign(math.inf, log_ratio)
    return log_ratio / se


def _bias_failures(result: CellResult, threshold: float) -> int:
    return sum(1 for z in result.bias_z or () if z is not None and not abs(z) <= threshold)


def compare(baseline: CheckRun, current: CheckRun, alpha: float = FALSE_ALARM_RATE, *, subset: bool = False) -> Comparison:
    """Verdicts for every cell of the run (run order), then, unless ``subset``, every
    baseline cell the run lacks (FAIL: missing from this run).

    The run decides what must be measured: a cell it measured needs the baseline's numbers
    (a baseline cell recorded skipped or error FAILs, so editing a status cannot drop a test).
    Cells new to the baseline get the bias test against the exact gradient (unbiased
    estimators) and FAIL when biased; otherwise NEW.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"compare: alpha must lie in (0, 1), got {alpha!r}")
    names = list(current.cells)
    if not subset:
        names += [name for name in baseline.cells if name not in current.cells]

    def tests_bias(name: str) -> bool:
        result = current.cells.get(name)
        base = baseline.cells.get(name)
        return result is not None and result.status == "ok" and (result.unbiased or (base is not None and base.unbiased))

    variance_tests = sum(1 for name in names if name in baseline.cells and name in current.cells
                         and baseline.cells[name].status == "ok" and current.cells[name].status == "ok")
    bias_tests = sum(current.cells[name].bias_tests for name in names if tests_bias(name))
    num_tests = variance_tests + bias_tests
    normal = NormalDist()
    per_test = alpha / max(num_tests, 1)
    variance_threshold = normal.inv_cdf(1 - per_test)
    bias_threshold = normal.inv_cdf(1 - per_test / 2)

    rows = []
    for name in names:
        base = baseline.cells.get(name)
        result = current.cells.get(name)
        row = Row(name, "PASS")
        if base is not None and base.status == "ok":
            row.base_variance = base.variance
        if result is None:
            row.verdict, row.note = "FAIL", "missing from this run"
            rows.append(row)
            continue
        if result.status == "ok":
            row.variance = result.variance
            row.max_abs_bias_z = result.max_abs_bias_z if tests_bias(name) else math.nan
        if result.status == "error":
            row.verdict, row.note = "FAIL", f"raised: {result.reason}"
        elif result.status == "skipped":
            if base is not None and base.status != "skipped":
                was = "" if base.status == "ok" else f" (baseline {base.status})"
                row.verdict, row.note = "FAIL", f"now skipped{was}: {result.reason}"
            else:
                row.verdict, row.note = ("SKIP" if base is not None else "NEW"), result.reason
        else:
            problems = []
            if base is not None and base.status == "ok":
                row.ratio = result.variance / base.variance if base.variance > 0 else math.nan
                row.variance_z = variance_z(result, base)
                if not row.variance_z <= variance_threshold:
                    problems.append(f"variance rose x{row.ratio:.3g}, z={row.variance_z:.2f}")
            elif base is not None:
                problems.append(f"measured, but the baseline records it {base.status} ({base.reason or 'no reason'}) "
                                "and has no variance to compare; regenerate it with --update")
            if tests_bias(name):
                failures = _bias_failures(result, bias_threshold)
                if failures:
                    problems.append(f"biased: {failures} of {result.bias_tests} coordinates, "
                                    f"max |z|={result.max_abs_bias_z:.2f}")
            if base is None:
                row.note = "; ".join(["not in the baseline (bias tested only)"] + problems)
                row.verdict = "FAIL" if problems else "NEW"
            elif problems:
                row.verdict, row.note = "FAIL", "; ".join(problems)
        rows.append(row)
    return Comparison(rows, alpha, num_tests, variance_threshold, bias_threshold)


def lacking_cells(baseline: CheckRun, grid: CheckGrid, *, subset: bool = False) -> list[str]:
    """Cells of ``grid`` the baseline must hold but does not: every cell of a full run;
    in a ``subset`` run, those inside the baseline's own grid (cells outside it are new)."""
    required = {cell.name for cell in grid.cells()}
    if subset:
        own = CheckGrid(**{"variants": (), **{key: baseline.settings[key] for key in
                           ("dists", "sizes", "estimators", "K", "replicates", "task", "estimator_options", "variants")
                           if key in baseline.settings}})  # older baselines had no variants
        required &= {cell.name for cell in own.cells()}
    return [cell.name for cell in grid.cells() if cell.name in required and cell.name not in baseline.cells]


def self_check(run: CheckRun, alpha: float = FALSE_ALARM_RATE) -> Comparison:
    """The verdicts a freshly computed baseline earns on its own: bias tests and errors
    (its variance compared with itself gives z = 0)."""
    return compare(run, run, alpha)


def comparable(baseline: CheckRun, grid: CheckGrid) -> str | None:
    """None when ``grid`` measures the same quantities as ``baseline``, else why not.

    The task, dtype, device and estimator options change every cell's true variance, so a
    change needs ``--update``; structures, sizes, estimators and K may differ (cells then
    go missing or appear new), and so may R (the standard errors account for it).
    """
    settings = baseline.settings
    mine = grid.as_dict()
    for key in ("task", "dtype", "device", "estimator_options"):
        if settings.get(key) != mine[key]:
            return (f"the baseline was made with {key}={settings.get(key)!r}, this run uses {mine[key]!r}; "
                    "regenerate it with --update")
    return None


def default_baseline_path() -> Path:
    """``rgbench/baselines/variance-check.json``, package data found through
    ``importlib.resources``: the same file for a source checkout, an editable and a
    normal install (pyproject ``[tool.setuptools.package-data]``)."""
    return Path(str(resources.files("rgbench") / "baselines" / "variance-check.json"))


# ---------------------------------------------------------------------------- the table
def _number(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4g}"


def format_table(comparison: Comparison) -> str:
    """Fixed-width text: every cell with baseline V, current V, ratio, variance z, max
    |bias z|, verdict and note; then the thresholds."""
    header = ("cell", "base V", "current V", "ratio", "var z", "max|bias z|", "verdict", "note")
    lines = [
        (row.name, _number(row.base_variance), _number(row.variance), _number(row.ratio),
         _number(row.variance_z), _number(row.max_abs_bias_z), row.verdict, row.note)
        for row in comparison.rows
    ]
    widths = [max(len(text[i]) for text in [header, *lines]) for i in range(len(header) - 1)]
    left = {0, 6}

    def render(text: tuple) -> str:
        cells = [value.ljust(width) if i in left else value.rjust(width)
                 for i, (value, width) in enumerate(zip(text, widths))]
        return "  ".join(cells + [text[-1]]).rstrip()

    rule = "  ".join("-" * width for width in widths) + "  ----"
    footer = (
        f"thresholds: variance z > {comparison.variance_threshold:.2f} (one-sided), |bias z| > "
        f"{comparison.bias_threshold:.2f}; Bonferroni over {comparison.num_tests} tests, "
        f"family-wise false-alarm rate {comparison.alpha:g}"
    )
    return "\n".join([render(header), rule, *(render(text) for text in lines), footer])


__all__ = [
    "BIAS_TEST",
    "CellResult",
    "CheckCell",
    "CheckGrid",
    "CheckRun",
    "Comparison",
    "DEFAULT_ESTIMATORS",
    "FALSE_ALARM_RATE",
    "VARIANCE_TEST",
    "comparable",
    "compare",
    "lacking_cells",
    "default_baseline_path",
    "default_estimator_factory",
    "format_table",
    "replicate_statistics",
    "run_check",
    "self_check",
    "variance_z",
]
