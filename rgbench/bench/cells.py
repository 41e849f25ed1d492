"""The one cell runner: a cell spec in, a row (dict) out. ``rgbench variance``, ``rgbench
check`` and ``rgbench speed`` (its error descriptions) all go through it.

A cell is one :class:`~rgbench.bench.grid.Cell` (seed, device, dist, n, estimator, K) of a
:class:`~rgbench.bench.grid.VarianceGrid`, which adds the task, the dtype, the logit scale
and shift, R and the interval settings. :class:`CellRunner` computes cells one at a time and
keeps the last instance, so consecutive cells of one instance share it (the grid yields
them adjacently; any order gives the same rows, since every cell seeds itself).

The instance (seed, device, dist, n): logits and the task's objective drawn from a seed
derived from (seed, dist, n, task), or from ``grid.instance_seed`` in place of the cell's
seed when that is set (the check: every seed faces the same instances). The logits are
drawn in float64; with ``dtype`` float32 or a ``logit_shift`` the measured distribution
has the logits ``(theta + shift)`` in that dtype (same law: it is shift-invariant), and an
exact reference is the float64 gradient of the unshifted instance (more accurate than one
computed in float32 or from shifted logits). Default float64 unshifted runs are unchanged.
Beyond the enumeration limit the reference is the t-loo Monte Carlo estimate on the
measured distribution. With ``verify_reference`` the exact gradient is also checked
against central finite differences of the exact expectation
(:func:`finite_difference_check`); a disagreement fails every cell of the instance.

A cell's row (:func:`measure_cell`): skipped with the reason when the estimator cannot
serve the combination; else ``warm_up`` (a critic's training), R replicates in chunks
summarised against the reference (``statistics.summary_statistics``; an estimate of the
wrong shape or with NaN/inf fails the cell), then timed single estimates. With
``grid.instance_seed`` set, the warm-up (its generator and the global seed that
initialises a critic) derives from the instance seed, so every seed faces the same trained
critic; otherwise from the cell's seed, drawing from the same stream as the replicates.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Callable

import pandas as pd
import torch

from rgbench import estimators
from rgbench.bench import tasks
from rgbench.bench import timing
from rgbench.bench.grid import DTYPES, Cell, VarianceGrid
from rgbench.bench.reference import Reference, compute_reference, is_enumerable
from rgbench.bench.seeds import derive_seed, generator
from rgbench.bench.statistics import FLAG_FALSE_ALARM_RATE, SE_MAX_COORDS, summary_statistics
from rgbench.bench.store import Interrupted, check_stop
from rgbench.bench.streaming import ReplicateSummary, draw_chunks


@dataclass(frozen=True)
class CellSpec:
    """Everything that identifies one cell's numbers: the grid's cell plus the settings of the
    grid it is measured under (dtype, logit shift, task). ``name`` is the check's cell name."""

    seed: int
    device: str
    dist: str
    n: int
    estimator: str
    K: int
    task: str
    dtype: str
    shift: float
    options: tuple = ()

    @classmethod
    def of(cls, grid: VarianceGrid, cell: Cell) -> "CellSpec":
        return cls(*cell, grid.task, grid.dtype, float(grid.logit_shift),
                   tuple(sorted(grid.estimator_options.get(cell.estimator, {}).items())))

    @property
    def name(self) -> str:
        name = f"{self.dist}/n={self.n}/{self.estimator}/K={self.K}"
        if self.dtype != "float64":
            name += f"/{self.dtype}"
        return name + (f"/shift={self.shift:+g}" if self.shift else "")


def default_estimator_factory(spec: CellSpec):
    """The registered estimator of ``spec`` with its K and the grid's options."""
    return estimators.get(spec.estimator, num_samples=spec.K, **dict(spec.options))


def describe_error(error: BaseException) -> str:
    """One line: the exception's type, where it was raised and its message."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
    return f"{type(error).__name__}{where}: {error}"


# ---------------------------------------------------------------------------- the instance
@dataclass
class Instance:
    """One (seed, device, dist, n): the measured distribution, its objective, the reference,
    or why its cells are skipped (``task_reason``) or failed (``error``)."""

    dist: object = None
    objective: object = None
    reference: Reference | None = None
    task_reason: str | None = None
    error: str | None = None


def _instance_seed(grid: VarianceGrid, seed: int) -> int:
    return seed if grid.instance_seed is None else grid.instance_seed


def _draw_instance(grid: VarianceGrid, seed: int, device: str, dist_name: str, n: int):
    """(float64 unshifted dist, objective, task reason) for one instance."""
    instance_gen = generator(derive_seed(_instance_seed(grid, seed), dist_name, n, grid.task, "instance"), device)
    dist = tasks.make_instance(
        dist_name, n, scale=grid.logit_scale, generator=instance_gen, dtype=torch.float64, device=device
    )
    task = tasks.get(grid.task)
    reason = task.supports(dist_name)
    objective = None if reason else task.build(dist, instance_gen)
    return dist, objective, reason


def build_instance(grid: VarianceGrid, seed: int, device: str, dist_name: str, n: int, *,
                   verify_reference: bool = False) -> Instance:
    """The instance and its reference (module docstring); failures are recorded, not raised."""
    try:
        exact_dist, objective, reason = _draw_instance(grid, seed, device, dist_name, n)
    except Interrupted:
        raise
    except Exception as error:  # e.g. a size too large to allocate: failed cells, not a crash
        return Instance(error=f"the instance could not be built: {describe_error(error)}")
    plain = (grid.dtype, grid.logit_shift) == ("float64", 0.0)
    dist = exact_dist if plain else exact_dist.with_logits((exact_dist.logits + grid.logit_shift).to(DTYPES[grid.dtype]))
    instance = Instance(dist, objective, task_reason=reason)
    if reason is not None:
        return instance
    ref_seed = derive_seed(_instance_seed(grid, seed), dist_name, n, grid.task, "reference")
    try:
        # An exact reference comes from the float64 unshifted instance (same law).
        source = exact_dist if is_enumerable(exact_dist) else dist
        instance.reference = compute_reference(source, objective, samples=grid.reference_samples,
                                               replicates=grid.reference_replicates,
                                               generator=generator(ref_seed, device))
    except Interrupted:
        raise
    except Exception as error:  # recorded on every cell of the instance
        instance.error = f"the reference gradient failed: {describe_error(error)}"
        return instance
    if verify_reference and instance.reference.kind == "exact":
        try:
            finite_difference_check(exact_dist, objective, instance.reference.grad)
        except Exception as error:
            instance.error = f"the instance or its exact gradient failed: {describe_error(error)}"
    return instance


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


# ---------------------------------------------------------------------------- one cell
def base_row(grid: VarianceGrid, cell: Cell, dist) -> dict:
    return {
        "dist": cell.dist,
        "n": cell.n,
        "task": grid.task,
        "estimator": cell.estimator,
        "K": cell.K,
        "device": cell.device,
        "dtype": grid.dtype,
        "seed": cell.seed,
        "cell_seed": derive_seed(cell.seed, cell.dist, cell.n, grid.task, cell.estimator, cell.K),
        "status": "skipped",
        "reason": "",
        "unbiased": bool(estimators.ESTIMATORS.get(cell.estimator).unbiased),
        "replicates": grid.replicates,
        "level": grid.level,
        "reference": "",
        "reference_samples": 0,
        "reference_norm": float("nan"),
        "objective_mean": float("nan"),
        "num_coords": dist.logits.numel() if dist is not None else 0,
        # Positions the structure can move (e.g. the strict upper triangle for spanning trees).
        "num_free_coords": int(dist.support_mask.sum()) if dist is not None else 0,
        "num_tests": pd.NA,
        "num_fixed_biased": pd.NA,
    }


def _fill_reference(row: dict, reference: Reference) -> None:
    row.update(
        reference=reference.kind,
        reference_samples=reference.samples,
        reference_norm=float(reference.grad.norm()),
        objective_mean=reference.value,
        reference_s=reference.seconds,
    )


def _checked(draws, size: int, shape) -> torch.Tensor:
    """``draws`` when it is a finite tensor [size, *shape]; ValueError / FloatingPointError otherwise."""
    if not isinstance(draws, torch.Tensor) or tuple(draws.shape) != (size, *shape):
        got = tuple(draws.shape) if isinstance(draws, torch.Tensor) else type(draws).__name__
        raise ValueError(f"estimate returned shape {got}, expected ({size}, *{tuple(shape)})")
    if not bool(torch.isfinite(draws).all()):
        raise FloatingPointError("estimate returned NaN or inf")
    return draws


def measure_cell(grid: VarianceGrid, cell: Cell, dist, objective, reference: Reference,
                 factory: Callable[[CellSpec], object] | None = None) -> dict:
    """One row: the statistics of ``cell.estimator`` with K samples on this instance.

    ``factory(spec)`` builds the estimator (default: the registry, with the grid's options;
    tests substitute a regressed one)."""
    start_cell = time.perf_counter()
    row = _base_row(grid, cell, dist)
    _fill_reference(row, reference)
    seed = row["cell_seed"]
    spec = CellSpec.of(grid, cell)
    try:
        estimator = (factory or default_estimator_factory)(spec)
    except ValueError as error:  # e.g. LOO needs K >= 2
        return {**row, "reason": str(error)}
    row["unbiased"] = bool(estimator.unbiased)
    # Components that draw from the global generator (e.g. a critic's initial weights) are
    # seeded per cell too, so results never depend on the cells that ran before.
    torch.manual_seed(seed)
    gen = generator(seed, cell.device)
    try:
        reason = estimator.supports(dist, objective)
        if reason is not None:
            return {**row, "reason": reason}
        start = time.perf_counter()
        if grid.instance_seed is None:
            estimator.warm_up(dist, objective, generator=gen)  # e.g. RELAX trains its critic
        else:  # the same trained critic for every seed
            warm_seed = derive_seed(grid.instance_seed, spec.name, grid.task, "warmup")
            torch.manual_seed(warm_seed)
            estimator.warm_up(dist, objective, generator=generator(warm_seed, cell.device))
            torch.manual_seed(seed)
        timing.synchronize(cell.device)
        warmup_s = time.perf_counter() - start
        coords = dist.logits.numel()
        summary = ReplicateSummary(reference.grad, resamples=grid.bootstrap_resamples,
                                   generator=generator(derive_seed(seed, "bootstrap")),
                                   deviation_moments=coords <= SE_MAX_COORDS)
        shape = tuple(dist.logits.shape)
        # In chunks of a fixed size, so memory does not grow with R (``streaming``).
        for chunk in draw_chunks(
                lambda size: _checked(estimator.estimate(dist, objective, num_replicates=size, generator=gen),
                                      size, shape),
                grid.replicates, coords, between=check_stop):
            summary.add(chunk)
        stats = summary_statistics(
            summary,
            reference.grad.to("cpu", torch.float64),
            reference.se.to("cpu", torch.float64),
            row["num_free_coords"],
            eps=torch.finfo(dist.logits.dtype).eps,
            level=grid.level,
            objective_scale=reference.objective_scale,
        )
        timing_gen = generator(derive_seed(seed, "timing"), cell.device)
        start_memory, read_memory = timing.peak_memory_tracker(cell.device)
        start_memory()
        times = timing.time_calls(
            lambda: estimator.estimate(dist, objective, num_replicates=1, generator=timing_gen),
            grid.timing_repeats,
            cell.device,
        )
        peak = read_memory()
    except Interrupted:
        raise
    except NotImplementedError as error:
        return {**row, "reason": str(error)}
    except Exception as error:  # a bug in one estimator must not lose the whole sweep
        return {**row, "status": "failed", "reason": describe_error(error)}
    summary = timing.summarize(times, level=grid.level)
    lo_split, hi_split = timing.summarize(times, level=1 - (1 - grid.level) / 2)[3:]
    flagged = stats.pop("bias_flagged") and row["unbiased"]
    row.update({key: value for key, value in stats.items() if not key.endswith("_split")})
    row.update(
        status="biased" if flagged else "ok",
        reason=biased_reason(stats) if flagged else "",
        time_median_s=summary.median,
        time_q25_s=summary.q25,
        time_q75_s=summary.q75,
        time_lo_s=summary.lo,
        time_hi_s=summary.hi,
        work_var=stats["total_var"] * summary.median,
        work_var_lo=stats["total_var_lo_split"] * lo_split,
        work_var_hi=stats["total_var_hi_split"] * hi_split,
        peak_memory_mb=peak,
        warmup_s=warmup_s,
        cell_s=time.perf_counter() - start_cell,
    )
    return row


_base_row = base_row


def biased_reason(stats: dict) -> str:
    """Why an unbiased estimator's row is flagged: its bias box at the flag's rate."""
    return (
        f"registered unbiased, but its bias interval [{stats['bias_flag_lo']:.3g}, {stats['bias_flag_hi']:.3g}] "
        f"at false-alarm rate {FLAG_FALSE_ALARM_RATE:g} excludes 0 (max |z| = {stats['bias_z']:.3g}, "
        f"Bonferroni over {stats['num_tests']} coordinates)"
    )


class CellRunner:
    """``runner(cell)`` -> the cell's row; keeps the last instance (``build_instance``) so the
    cells of one instance share it. Picklable state only (the grid and options), so an
    executor may run one per worker."""

    def __init__(self, grid: VarianceGrid, *, factory: Callable[[CellSpec], object] | None = None,
                 verify_reference: bool = False):
        self.grid = grid
        self.factory = factory
        self.verify_reference = verify_reference
        self._key = None
        self._instance = None

    def instance(self, cell: Cell) -> Instance:
        key = (cell.seed, cell.device, cell.dist, cell.n)
        if key != self._key:
            self._key, self._instance = key, None  # a failed build is not reused by accident
            self._instance = build_instance(self.grid, *key, verify_reference=self.verify_reference)
        return self._instance

    def __call__(self, cell: Cell) -> dict:
        check_stop()
        instance = self.instance(cell)
        if instance.error is not None:
            return {**base_row(self.grid, cell, instance.dist), "status": "failed", "reason": instance.error}
        if instance.task_reason is not None:
            return {**base_row(self.grid, cell, instance.dist), "reason": instance.task_reason}
        return measure_cell(self.grid, cell, instance.dist, instance.objective, instance.reference, self.factory)
