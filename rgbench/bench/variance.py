"""The variance harness: bias, variance, SNR, cosine and cost of each estimator per cell.

For every instance (seed, device, dist, n) of a :class:`~rgbench.bench.grid.VarianceGrid`:
draw the logits and the task's objective from a seed derived from (seed, dist, n, task), so
every estimator faces the same instance; compute the reference gradient once (exact, or
t-loo Monte Carlo beyond the enumeration limit). Then for each (estimator, K) cell, seeded
from (seed, dist, n, task, estimator, K):

1. record a skipped row with the reason when the estimator cannot serve the combination
   (``supports``, a constructor's ValueError such as K < 2 for LOO, or NotImplementedError);
2. ``estimator.warm_up`` (RELAX trains its critic for ``warmup_steps``);
3. draw R replicates in batched ``estimate`` calls of a fixed chunk size and summarise
   them chunk by chunk against the reference (``streaming.ReplicateSummary``,
   ``statistics.summary_statistics``), so memory does not grow with R; an estimator registered as unbiased
   whose bias interval at the flag's per-cell false-alarm rate (1e-3, Bonferroni over the
   coordinates) excludes 0 gets status ``biased`` (not ``ok``) with that interval and max
   |z| in its reason;
4. time single estimates (``num_replicates=1``), synchronising the device around each
   call: median, quartiles and an order-statistic interval; CUDA peak memory over them.

Work-normalised variance is total variance x median seconds per estimate (the variance of
an estimator given a fixed time budget, up to a constant). All columns except
``results.VARIANCE_TIMING_COLUMNS`` are a deterministic function of the command and seed.
"""

from __future__ import annotations

import time
import traceback

import pandas as pd
import torch
from tqdm.auto import tqdm

from rgbench import estimators
from rgbench.bench import tasks
from rgbench.bench import timing
from rgbench.bench.grid import DTYPES, Cell, VarianceGrid
from rgbench.bench.progress import CellStore
from rgbench.bench.reference import Reference, compute_reference
from rgbench.bench.results import VARIANCE_SCHEMA, Results, make_metadata
from rgbench.bench.seeds import derive_seed, generator
from rgbench.bench.statistics import FLAG_FALSE_ALARM_RATE, summary_statistics
from rgbench.bench.store import Interrupted, check_stop
from rgbench.bench.streaming import ReplicateSummary, draw_chunks

def _instance(grid: VarianceGrid, seed: int, device: str, dist_name: str, n: int):
    instance_gen = generator(derive_seed(seed, dist_name, n, grid.task, "instance"), device)
    dist = tasks.make_instance(
        dist_name, n, scale=grid.logit_scale, generator=instance_gen, dtype=DTYPES[grid.dtype], device=device
    )
    task = tasks.get(grid.task)
    reason = task.supports(dist_name)
    objective = None if reason else task.build(dist, instance_gen)
    return dist, objective, reason


def _base_row(grid: VarianceGrid, cell: Cell, dist) -> dict:
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
    }


def _fill_reference(row: dict, reference: Reference) -> None:
    row.update(
        reference=reference.kind,
        reference_samples=reference.samples,
        reference_norm=float(reference.grad.norm()),
        objective_mean=reference.value,
        reference_s=reference.seconds,
    )


def describe_error(error: Exception) -> str:
    """One line: the exception's type, where it was raised and its message."""
    last = traceback.extract_tb(error.__traceback__)[-1]
    return f"{type(error).__name__} at {last.filename.rsplit('/', 1)[-1]}:{last.lineno}: {error}"


def measure_cell(grid: VarianceGrid, cell: Cell, dist, objective, reference: Reference) -> dict:
    """One row: the statistics of ``cell.estimator`` with K samples on this instance."""
    row = _base_row(grid, cell, dist)
    _fill_reference(row, reference)
    seed = row["cell_seed"]
    options = grid.estimator_options.get(cell.estimator, {})
    try:
        estimator = estimators.get(cell.estimator, num_samples=cell.K, **options)
    except ValueError as error:  # e.g. LOO needs K >= 2
        return {**row, "reason": str(error)}
    # Components that draw from the global generator (e.g. a critic's initial weights) are
    # seeded per cell too, so results never depend on the cells that ran before.
    torch.manual_seed(seed)
    gen = generator(seed, cell.device)
    try:
        reason = estimator.supports(dist, objective)
        if reason is not None:
            return {**row, "reason": reason}
        start = time.perf_counter()
        estimator.warm_up(dist, objective, generator=gen)  # e.g. RELAX trains its critic
        timing.synchronize(cell.device)
        warmup_s = time.perf_counter() - start
        summary = ReplicateSummary(reference.grad, resamples=grid.bootstrap_resamples,
                                   generator=generator(derive_seed(seed, "bootstrap")))
        # In chunks of a fixed size, so memory does not grow with R (``streaming``).
        for chunk in draw_chunks(lambda size: estimator.estimate(dist, objective, num_replicates=size, generator=gen),
                                 grid.replicates, dist.logits.numel(), between=check_stop):
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
    )
    return row


def biased_reason(stats: dict) -> str:
    """Why an unbiased estimator's row is flagged: its bias box at the flag's rate."""
    return (
        f"registered unbiased, but its bias interval [{stats['bias_flag_lo']:.3g}, {stats['bias_flag_hi']:.3g}] "
        f"at false-alarm rate {FLAG_FALSE_ALARM_RATE:g} excludes 0 (max |z| = {stats['bias_z']:.3g}, "
        f"Bonferroni over {stats['num_tests']} coordinates)"
    )


def cell_key(cell: Cell) -> dict:
    """The identity of a cell in its saved progress file."""
    return cell._asdict()


def run_variance(grid: VarianceGrid, *, progress: bool = False, command: str | None = None,
                 saved: CellStore | None = None) -> Results:
    """Run every cell of ``grid``; a tqdm bar over cells when ``progress``.

    With ``saved``, cells already there are taken as they are and each new one is saved
    the moment it is finished; ``store.check_stop`` runs between cells and chunks, so an
    ``Interrupted`` leaves every finished cell on disk.
    """
    rows = []
    bar = tqdm(total=len(grid), desc="variance", unit="cell", disable=not progress, leave=False)
    current, dist, objective, task_reason, reference, reference_error = None, None, None, None, None, None
    try:
        for index, cell in enumerate(grid.cells()):
            done = saved.get(index, cell_key(cell)) if saved is not None else None
            if done is not None:
                rows.append(done)
                bar.update()
                continue
            check_stop()
            key = (cell.seed, cell.device, cell.dist, cell.n)
            if key != current:  # every cell seeds itself, so skipping saved ones changes nothing
                current = key
                reference, reference_error = None, None
                try:
                    dist, objective, task_reason = _instance(grid, *key)
                except Interrupted:
                    raise
                except Exception as error:  # e.g. a size too large to allocate: failed cells, not a crash
                    dist, objective, task_reason = None, None, None
                    reference_error = f"the instance could not be built: {describe_error(error)}"
                if task_reason is None and reference_error is None:
                    bar.set_postfix_str(f"{cell.dist} n={cell.n}: reference")
                    ref_seed = derive_seed(cell.seed, cell.dist, cell.n, grid.task, "reference")
                    try:
                        reference = compute_reference(
                            dist,
                            objective,
                            samples=grid.reference_samples,
                            replicates=grid.reference_replicates,
                            generator=generator(ref_seed, cell.device),
                        )
                    except Exception as error:  # recorded on every cell of the instance
                        reference_error = f"the reference gradient failed: {describe_error(error)}"
            bar.set_postfix_str(f"{cell.dist} n={cell.n} {cell.estimator} K={cell.K}")
            if task_reason is not None:
                row = {**_base_row(grid, cell, dist), "reason": task_reason}
            elif reference_error is not None:
                row = {**_base_row(grid, cell, dist), "status": "failed", "reason": reference_error}
            else:
                row = measure_cell(grid, cell, dist, objective, reference)
            rows.append(saved.put(index, cell_key(cell), row) if saved is not None else row)
            bar.update()
    finally:
        bar.close()
    frame = pd.DataFrame(rows)
    for column in _missing_float_columns(frame):
        frame[column] = float("nan")
    metadata = make_metadata("variance", grid.as_dict(), grid.devices[0], grid.seeds[0], command)
    metadata["notes"] = grid.fallback_notes()
    metadata["intervals"]["level"] = grid.level
    if saved is not None:
        metadata["run_id"] = saved.run_id
    return Results("variance", frame, metadata)


def _missing_float_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c, kind in VARIANCE_SCHEMA.items() if kind == "float" and c not in frame.columns]
