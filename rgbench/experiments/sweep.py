"""A paper artefact's grid of training runs (estimator x seed x setting), run through an executor.

Every experiment's ``paper_artefact`` describes its grid as a list of :class:`Run` records
and calls :func:`run_sweep`, which

* with ``resume``, reuses each run whose folder ``out/runs/<folder>`` is complete and whose
  summary matches the run's ``matches`` (same scale, same steps, ...): nothing is retrained;
* trains the others through ``executor.map`` (:class:`~rgbench.bench.executor.LocalExecutor`
  by default: one after another in this process; a distributed executor runs one training
  run per task), each run writing its own folder atomically through the shared trainer, so an
  interrupted sweep keeps every finished run and ``--resume`` continues the interrupted one
  from its checkpoint;
* calls ``on_rows`` with the summaries finished so far (in grid order) after every run, so
  the artefact's table is rewritten as runs finish.

``train_one`` must be a module-level function (a distributed executor pickles it) taking the
run's ``options`` as keyword arguments plus ``out``, ``progress`` and ``resume``, and
returning the run's summary row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from rgbench.bench.executor import Executor, LocalExecutor
from rgbench.experiments.files import run_is_complete


@dataclass(frozen=True)
class Run:
    """One training run of a sweep: its folder under ``out/runs``, the keyword arguments of
    the experiment's run function, and the summary fields a saved run must match to be reused."""

    folder: str
    options: Mapping[str, Any]
    matches: Mapping[str, Any] = field(default_factory=dict)


def _train(train_one: Callable[..., dict[str, Any]], runs_dir: Path, progress: bool, resume: bool,
           run: Run) -> dict[str, Any]:
    return train_one(**run.options, out=runs_dir / run.folder, progress=progress, resume=resume)


def reusable(run: Run, runs_dir: Path) -> dict[str, Any] | None:
    """The saved summary of ``run`` if its folder holds a complete run with matching settings."""
    done = run_is_complete(runs_dir / run.folder)
    if done is not None and all(done.get(key) == value for key, value in run.matches.items()):
        return done
    return None


def run_sweep(
    runs: Sequence[Run],
    train_one: Callable[..., dict[str, Any]],
    out: str | Path,
    *,
    resume: bool,
    progress: bool,
    executor: Executor | None = None,
    on_rows: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train (or, with ``resume``, reuse) every run; the summaries in the order of ``runs``."""
    folders = [run.folder for run in runs]
    if len(set(folders)) != len(folders):
        raise ValueError(f"a sweep's runs need distinct folders, got {folders}")
    runs_dir = Path(out) / "runs"
    rows: list[dict[str, Any] | None] = [reusable(run, runs_dir) if resume else None for run in runs]
    pending = [index for index, row in enumerate(rows) if row is None]
    job = partial(_train, train_one, runs_dir, progress, resume)
    for index, row in zip(pending, (executor or LocalExecutor()).map(job, [runs[i] for i in pending])):
        rows[index] = row
        if on_rows is not None:
            on_rows([done for done in rows if done is not None])
    return [row for row in rows if row is not None]


__all__ = ["Run", "reusable", "run_sweep"]
