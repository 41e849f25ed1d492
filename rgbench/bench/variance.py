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

This module is the loop over a grid; each cell is computed by the one cell runner,
:class:`rgbench.bench.cells.CellRunner` (instance, reference, ``measure_cell``), through an
executor (``rgbench.bench.executor``; :class:`LocalExecutor` by default).
"""

from __future__ import annotations

import pandas as pd
from tqdm.auto import tqdm

from rgbench.bench.cells import CellRunner, CellSpec, biased_reason, describe_error, measure_cell  # noqa: F401
from rgbench.bench.executor import Executor, LocalExecutor
from rgbench.bench.grid import Cell, VarianceGrid
from rgbench.bench.progress import CellStore
from rgbench.bench.results import VARIANCE_SCHEMA, Results, make_metadata


def cell_key(cell: Cell) -> dict:
    """The identity of a cell in its saved progress file."""
    return cell._asdict()


def variance_rows(grid: VarianceGrid, *, progress: bool = False, saved: CellStore | None = None,
                  executor: Executor | None = None, factory=None, verify_reference: bool = False,
                  desc: str = "variance") -> list[dict]:
    """The rows of every cell of ``grid``, in grid order (see :func:`run_variance`)."""
    cells = list(grid.cells())
    rows: list[dict | None] = [None] * len(cells)
    pending = []
    for index, cell in enumerate(cells):
        done = saved.get(index, cell_key(cell)) if saved is not None else None
        if done is not None:
            rows[index] = done
        else:
            pending.append(index)
    bar = tqdm(total=len(cells), initial=len(cells) - len(pending), desc=desc, unit="cell",
               disable=not progress, leave=False)
    runner = CellRunner(grid, factory=factory, verify_reference=verify_reference)
    try:
        # Every cell seeds itself, so skipping saved ones changes nothing.
        results = (executor or LocalExecutor()).map(runner, [cells[index] for index in pending])
        for index, row in zip(pending, results):
            rows[index] = saved.put(index, cell_key(cells[index]), row) if saved is not None else row
            bar.update()
    finally:
        bar.close()
    return rows


def run_variance(grid: VarianceGrid, *, progress: bool = False, command: str | None = None,
                 saved: CellStore | None = None, executor: Executor | None = None) -> Results:
    """Run every cell of ``grid``; a tqdm bar over cells when ``progress``.

    With ``saved``, cells already there are taken as they are and each new one is saved
    the moment it is finished; ``store.check_stop`` runs between cells and chunks, so an
    ``Interrupted`` leaves every finished cell on disk.
    """
    rows = variance_rows(grid, progress=progress, saved=saved, executor=executor)
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
