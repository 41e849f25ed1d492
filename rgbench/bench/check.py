"""The CI regression check: estimator variance and bias against a committed baseline.

The check has no pipeline of its own: it is a comparison over the same cells ``rgbench
variance`` computes. A :class:`CheckGrid` names a small fixed set of cells (structure, size
n, estimator, K) as :class:`~rgbench.bench.grid.VarianceGrid` s (CPU, float64, plus the
float32 / shifted variants on the same instances); :func:`run_check` runs them through the
one cell runner (:mod:`rgbench.bench.cells`) and reads each variance row as a
:class:`CellResult`, compared with a baseline file written earlier by the same code
(``--update``). Each cell draws R independent estimates g_1..g_R (d coordinates each) of
the gradient of E[L(X)] for one seeded instance and the quadratic task
(``rgbench.bench.tasks``: L(X) = ||ind(X) - ind(X*)||^2, X* one seeded sample of the
instance); from its variance row the check uses

* the total variance ``total_var`` V = sum_r ||g_r - g_bar||^2 / (R - 1) = mean_r D_r * R / (R - 1),
  D_r = ||g_r - g_bar||^2, with its CLT standard error ``total_var_se``
  se(V) = sd_r(D_r) / sqrt(R) * R / (R - 1);
* the bias z-tests against the exact gradient grad_i (enumeration): per coordinate i that
  varies, z_i = (g_bar_i - grad_i) / SE_i, SE_i = s_i / sqrt(R) with s_i the sample standard
  deviation; the row keeps ``bias_z`` = max_i |z_i| and ``num_tests`` (how many coordinates
  vary), plus ``num_fixed_biased``: coordinates where every replicate agrees yet differs
  from the exact gradient beyond rounding (z = inf).

Tests (the family-wise false-alarm rate alpha, default 1e-3, is split by Bonferroni over all
m tests of one comparison: m = #variance tests + #bias coordinate tests):

* variance rose: one-sided z-test on log(V_cur / V_base) with the delta-method standard error
  sqrt(se_cur^2 / V_cur^2 + se_base^2 / V_base^2); FAIL when z > Phi^-1(1 - alpha / m).
  Baseline and current runs are independent (different seeds) or identical (the same seed:
  z = 0), so the independent-samples standard error is exact or conservative.
* bias (estimators with ``unbiased = True`` only; sst is biased, so only its variance is
  checked): a cell counts ``num_tests + num_fixed_biased`` coordinate tests and FAILs when
  its max |z_i| > Phi^-1(1 - alpha / (2 m)), i.e. when some coordinate's test fails (the
  same decision as testing every coordinate, read from the row's maximum), or when a
  coordinate without spread is off the exact gradient (z = inf). A coordinate with SE_i = 0
  and no bias (a position the structure never moves) is not a test.
* a baseline cell that is missing from a full run (a subset run, ``--dists/--sizes/
  --estimators``, compares only its own cells), raises (error recorded, cell named; an
  estimate with NaN/inf or of the wrong shape too), or is now skipped although the baseline
  did not record it skipped: FAIL. The run decides what is measurable: a cell it measured
  whose baseline records skipped or error FAILs (no numbers), so editing a status cannot
  drop a test. Cells new to the baseline (outside its grid) get the bias test and FAIL when
  biased, else verdict NEW.
* the baseline itself (load): an unknown status, a non-numeric, negative or non-finite
  variance, a wrong type, no cells, or a cell of its own recorded grid missing is a
  ValueError naming the cell and field; a full run also needs every cell of its grid. A
  baseline of the former format (``rgbench-variance-check/1``) must be regenerated.
* variants: every structure at n=3 with t-reinforce and t-loo in float32, plain and with
  every logit shifted by +-105 (``VarianceGrid.dtype`` / ``logit_shift``; the law and the
  gradient are shift-invariant, so the cell runner's reference is the float64 unshifted
  exact gradient). The exact gradient of each instance is checked against central finite
  differences of the exact expectation (forward values only,
  :func:`rgbench.bench.cells.finite_difference_check`), so a wrong backward pass cannot
  bias the reference and the estimators alike.

Seeds (SHA-256 via :func:`rgbench.bench.seeds.derive_seed`, never Python's ``hash``): the
grids' ``instance_seed`` is the baseline's, so the instances (logits and task target), the
references and the relax critic's warm-up are the same in every comparison; the estimates
derive from ``seed`` and the cell (its ``cell_seed``), so the baseline's seed reproduces it
exactly and another seed is a fresh, independent sample of the same quantities.

Normal approximations assume R large enough for means and log-variances to be near-normal.
R = 10000 because some cells are heavy-tailed: se(V) / V is 0.6-2 % for most cells but about
7 % for relax on binary trees at n = 3, where a doubled variance then still gives z near 7
against a threshold near 4.6 (about 99 % power); elsewhere z is 10-50. Cost: per instance one
enumeration for the exact gradient; per cell the critic warm-up (relax), R estimates, the
variance row's bootstrap and its timed single estimates.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from statistics import NormalDist
from typing import Callable, Sequence

from rgbench import distributions
from rgbench.bench.cells import CellSpec, default_estimator_factory, finite_difference_check
from rgbench.bench.executor import Executor
from rgbench.bench.grid import CHECK_ESTIMATORS, DTYPES, VarianceGrid
from rgbench.bench.results import make_metadata
from rgbench.bench.store import write_text
from rgbench.bench.variance import variance_rows

FORMAT = "rgbench-variance-check/2"
#: formats whose cells the current code no longer reproduces: regenerate with --update
OLD_FORMATS = ("rgbench-variance-check/1",)
STATUSES = ("ok", "skipped", "error")
#: the check's estimators (``grid.CHECK_ESTIMATORS``: the variance default plus x-reinforce)
DEFAULT_ESTIMATORS = CHECK_ESTIMATORS
DEFAULT_SIZES = (3, 4)
DEFAULT_K = 4
DEFAULT_REPLICATES = 10000
DEFAULT_SEED = 0
DEFAULT_TASK = "quadratic"
FALSE_ALARM_RATE = 1e-3

VARIANCE_TEST = (
    "one-sided z-test on log(V_cur / V_base), delta-method SE sqrt(se_cur^2/V_cur^2 + se_base^2/V_base^2), "
    "V = sum_r ||g_r - mean g||^2 / (R-1), se(V) = sd_r(||g_r - mean g||^2) / sqrt(R) * R/(R-1); "
    "FAIL if z > Phi^-1(1 - alpha/m)"
)
BIAS_TEST = (
    "per coordinate z = (mean g_i - exact grad_i) / (s_i / sqrt(R)) for unbiased estimators; "
    "FAIL if max |z| > Phi^-1(1 - alpha/(2m)); SE 0 with bias exactly 0 is no test, "
    "SE 0 with bias beyond rounding fails (z = inf)"
)
FAMILY = "Bonferroni: m = number of variance tests + number of bias coordinate tests in one comparison"


# ---------------------------------------------------------------------------- the grid
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


@dataclass(frozen=True)
class CheckGrid:
    """Which variance cells the check compares: every ``dists`` x ``sizes`` x ``estimators``
    at one K, R replicates each, plus the ``variants`` (those of their sizes and estimators
    this grid also has). :meth:`variance_grids` gives them as :class:`VarianceGrid` s.

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
        if isinstance(self.K, bool) or not isinstance(self.K, int) or self.K < 1:
            raise ValueError(f"CheckGrid: K must be a positive int, got {self.K!r}")
        self.variance_grids()  # every name and number validated by VarianceGrid

    def variance_grids(self, seeds: Sequence[int] = (DEFAULT_SEED,), instance_seed: int | None = None) -> list[VarianceGrid]:
        """The main float64 grid, then one per variant, all on the instances of
        ``instance_seed`` (default: the first seed)."""
        seeds = tuple(seeds)
        common = dict(dists=self.dists, samples=(self.K,), devices=("cpu",), seeds=seeds, task=self.task,
                      replicates=self.replicates, estimator_options=self.estimator_options,
                      instance_seed=seeds[0] if instance_seed is None else instance_seed)
        grids = [VarianceGrid(sizes=self.sizes, estimators=self.estimators, dtype="float64", **common)]
        for v in self.variants:
            sizes = tuple(n for n in self.sizes if n in v.sizes)
            names = tuple(name for name in self.estimators if name in v.estimators)
            if sizes and names:
                grids.append(VarianceGrid(sizes=sizes, estimators=names, dtype=v.dtype, logit_shift=v.shift, **common))
        return grids

    def cells(self) -> list[CellSpec]:
        """The cells (``.name``: ``dist/n=N/estimator/K=K[/dtype][/shift=S]``) in run order."""
        return [CellSpec.of(grid, cell) for grid in self.variance_grids() for cell in grid.cells()]

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
#: variance row status -> check status
_STATUS = {"ok": "ok", "biased": "ok", "skipped": "skipped", "failed": "error"}


@dataclass
class CellResult:
    """What a cell records, read from its variance row. ``status``: ``ok``, ``skipped``
    (unsupported, with ``reason``) or ``error`` (the computation raised or returned
    non-finite values; ``reason`` says how)."""

    status: str
    reason: str = ""
    unbiased: bool = True
    replicates: int = 0
    variance: float = math.nan
    variance_se: float = math.nan
    #: max |bias z| over the tested coordinates (inf with a coordinate fixed off the exact gradient)
    max_abs_bias_z: float = math.nan
    bias_tests: int = 0
    seconds: float = 0.0

    @classmethod
    def from_row(cls, row: dict) -> "CellResult":
        """The check's view of a variance row (``total_var``, ``total_var_se``, ``bias_z``,
        ``num_tests``, ``num_fixed_biased``)."""
        status = _STATUS[row["status"]]
        result = cls(status, str(row.get("reason") or ""), bool(row["unbiased"]),
                     seconds=float(row.get("cell_s", 0.0) or 0.0))
        if status == "ok":
            fixed = int(row["num_fixed_biased"])
            result.replicates = int(row["replicates"])
            result.variance = float(row["total_var"])
            result.variance_se = float(row["total_var_se"])
            result.max_abs_bias_z = math.inf if fixed else float(row["bias_z"])
            result.bias_tests = int(row["num_tests"]) + fixed
        return result

    def to_json(self) -> dict:
        return {key: _json_float(value) for key, value in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict, where: str = "cell") -> "CellResult":
        """A saved cell; ValueError naming ``where`` and the field for an invalid value."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: must be an object, got {type(data).__name__}")
        result = cls(**{key: _from_json_float(value) for key, value in data.items()})
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


# ---------------------------------------------------------------------------- a run
@dataclass
class CheckRun:
    """The cells of one run (by name, in grid order) and how they were made.

    ``settings``: the grid (``CheckGrid.as_dict``) plus ``seed`` and ``instance_seed``.
    """

    settings: dict
    cells: dict[str, CellResult]
    metadata: dict = field(default_factory=dict)
    #: the variance rows the cells were read from (a fresh run only; not saved)
    rows: list = field(default_factory=list, repr=False)

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
        if isinstance(data, dict) and data.get("format") in OLD_FORMATS:
            raise ValueError(f"baseline {path} has the former format {data['format']!r}, whose cells this version "
                             "no longer computes; regenerate it with `rgbench check --update`")
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
            except TypeError as error:  # an unknown or missing field name
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



def run_check(
    grid: CheckGrid,
    seeds: int | Sequence[int] = DEFAULT_SEED,
    *,
    instance_seed: int | None = None,
    estimator_factory: Callable[[CellSpec], object] = default_estimator_factory,
    progress: bool = False,
    command: str | None = None,
    executor: Executor | None = None,
) -> CheckRun | list[CheckRun]:
    """Compute every cell of ``grid``: its variance grids through the cell runner
    (``variance.variance_rows``, the exact gradient verified by finite differences), each
    row read as a :class:`CellResult`.

    Args:
        seeds: the seed of the estimates; a list gives one run per seed, on the same
            instances, exact gradients and critic warm-ups (for false-alarm studies).
        instance_seed: the seed of the instances and critic warm-ups (default: the first
            seed). Comparisons must use the baseline's.
        estimator_factory: builds the estimator of a cell from its
            :class:`~rgbench.bench.cells.CellSpec` (tests substitute a regressed one).
    Returns one :class:`CheckRun` for an int ``seeds``, else a list of them; each keeps
    the variance rows it was read from (``rows``, not saved).
    """
    seed_list = [seeds] if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise ValueError("run_check: seeds must name at least one seed")
    instance_seed = seed_list[0] if instance_seed is None else instance_seed
    per_seed: dict[int, list[tuple[str, dict]]] = {seed: [] for seed in seed_list}
    for variance_grid in grid.variance_grids(seed_list, instance_seed):
        rows = variance_rows(variance_grid, progress=progress, executor=executor, factory=estimator_factory,
                             verify_reference=True, desc="check")
        for cell, row in zip(variance_grid.cells(), rows):
            per_seed[cell.seed].append((CellSpec.of(variance_grid, cell).name, row))
    runs = []
    for seed in seed_list:
        cells = {}
        for name, row in per_seed[seed]:
            cells[name] = CellResult.from_row(row)
        metadata = make_metadata("variance", grid.as_dict(), "cpu", seed, command)
        metadata.update(kind="check", instance_seed=instance_seed, replicates=grid.replicates, K=grid.K,
                        false_alarm_rate=FALSE_ALARM_RATE)
        runs.append(CheckRun({"seed": seed, "instance_seed": instance_seed, **grid.as_dict()}, cells, metadata,
                             rows=[row for _, row in per_seed[seed]]))
    return runs[0] if isinstance(seeds, int) else runs


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
                if result.bias_tests and not result.max_abs_bias_z <= bias_threshold:
                    problems.append(f"biased: max |z|={result.max_abs_bias_z:.2f} over {result.bias_tests} "
                                    "coordinates")
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
    "Variant",
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
    "finite_difference_check",
    "format_table",
    "run_check",
    "self_check",
    "variance_z",
]
