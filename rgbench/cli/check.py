"""``rgbench check``: the CI regression check on estimator variance and bias.

    rgbench check                  # compare with the packaged baseline; exit 1 on FAIL
    rgbench check --seed 7         # the same, on a fresh independent sample
    rgbench check --update         # recompute and rewrite the baseline (the only way it changes)

``register(app)`` adds the command to a Typer app (``rgbench.cli`` wires it in). The
statistics and verdicts are documented in :mod:`rgbench.bench.check`.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated, Optional

import torch
import typer

from rgbench import distributions
from rgbench import estimators as estimator_registry
from rgbench.cli.options import fail, parse_ints, parse_registered

from rgbench.bench import check as checks
from rgbench.bench import store


def _command(update: bool, baseline: Path | None, seed: int, dists, sizes, estimators, replicates) -> str:
    """The command that reproduces this run (options left at their defaults are omitted,
    so a committed baseline names no machine-specific path)."""
    words = ["rgbench", "check"] + (["--update"] if update else []) + ["--seed", str(seed)]
    if baseline is not None:
        words += ["--baseline", str(baseline)]
    for flag, value in (("--dists", dists), ("--sizes", sizes), ("--estimators", estimators)):
        if value is not None:
            words += [flag, ",".join(map(str, value))]
    if replicates is not None:
        words += ["--replicates", str(replicates)]
    return " ".join(words)


def check(
    baseline: Annotated[Optional[Path], typer.Option(
        help="Baseline JSON. Default: rgbench/baselines/variance-check.json, shipped inside the package.")] = None,
    update: Annotated[bool, typer.Option(
        "--update", help="Recompute every cell and rewrite the baseline instead of comparing.")] = False,
    seed: Annotated[Optional[int], typer.Option(
        min=0, help="Seed of the estimates. Default: the baseline's (reproduces it exactly); another seed "
                    "compares a fresh independent sample. With --update: the new baseline's seed (default 0).")] = None,
    dists: Annotated[Optional[str], typer.Option(
        help="Comma-separated structures, or all (the default). A subset run compares only its cells.")] = None,
    sizes: Annotated[Optional[str], typer.Option(
        help=f"Comma-separated sizes n (default {','.join(map(str, checks.DEFAULT_SIZES))}).")] = None,
    estimators: Annotated[Optional[str], typer.Option(
        help="Comma-separated estimators, or all. Default: e-/t-/x-reinforce, e-/t-loo, relax, sst.")] = None,
    replicates: Annotated[Optional[int], typer.Option(
        min=2, help=f"Independent estimates per cell, R (default {checks.DEFAULT_REPLICATES}).")] = None,
    threads: Annotated[int, typer.Option(
        min=1, help="torch CPU threads (default 1: steady on a busy machine; recorded in the metadata).")] = 1,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no table; the summary only.")] = False,
):
    """Check that no estimator's variance rose and no unbiased estimator became biased.

    Recomputes the variance cells of a fixed grid, exactly as `rgbench variance` computes
    them (every structure at n=3,4 x e-/t-/x-reinforce, e-/t-loo, relax, sst, K=4, R=10000,
    CPU, float64, fixed seeds; plus t-reinforce and t-loo at n=3 in float32, plain and with
    every logit shifted by +-105) and compares them with the packaged baseline: a
    one-sided z-test on log(V_cur / V_base) per cell, a z-test of every coordinate of each
    unbiased estimator's mean against the exact gradient (itself checked against finite
    differences), Bonferroni over all tests at a family-wise false-alarm rate of 1e-3. Exit 1
    when a cell FAILs (variance rose, biased, missing, raising, newly skipped, or measured
    without baseline numbers), naming the cells, or when the baseline is invalid or lacks
    cells of the grid. --dists/--sizes/--estimators run a subset and compare only its cells.
    `rgbench check --update` is the one way to regenerate the baseline (written atomically).
    Replicates are drawn in chunks (memory does not grow with --replicates); SIGINT/SIGTERM
    stop between chunks and cells, writing nothing (exit 130/143).
    """
    path = baseline if baseline is not None else checks.default_baseline_path()
    # A subset run compares only its own cells; the full run needs every baseline cell.
    subset = any(value is not None for value in (dists, sizes, estimators))
    size_values = None if sizes is None else parse_ints(sizes, "--sizes")
    dist_names = None if dists is None else parse_registered(dists, distributions.DISTRIBUTIONS, "--dists")
    estimator_names = None if estimators is None else parse_registered(
        estimators, estimator_registry.ESTIMATORS, "--estimators", allowed=None)
    try:
        grid = checks.CheckGrid(**{key: value for key, value in (
            ("dists", dist_names), ("sizes", size_values), ("estimators", estimator_names),
            ("replicates", replicates)) if value is not None})
    except ValueError as error:
        fail(str(error))

    reference = None
    if not update:
        if not path.is_file():
            fail(f"no baseline at {path}; create it with `rgbench check --update`")
        try:
            reference = checks.CheckRun.load(path)
        except ValueError as error:
            fail(str(error))
        reason = checks.comparable(reference, grid)
        if reason is not None:
            fail(reason)
        lacking = checks.lacking_cells(reference, grid, subset=subset)
        if lacking:
            fail(f"baseline {path} lacks {len(lacking)} cell(s) of the grid being run (first: {lacking[0]}); "
                 "regenerate it with `rgbench check --update`")
    run_seed = seed if seed is not None else (reference.seed if reference is not None else checks.DEFAULT_SEED)
    instance_seed = reference.instance_seed if reference is not None else run_seed

    start = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with store.stop_on_signals():
            current = checks.run_check(
                grid, run_seed, instance_seed=instance_seed, progress=not quiet,
                command=_command(update, baseline, run_seed, dist_names, size_values, estimator_names, replicates),
            )
    except store.Interrupted as error:
        typer.echo(f"Interrupted ({signal.Signals(error.signum).name}): check stopped, nothing written"
                   + (f" ({path} unchanged)" if update else ""), err=True)
        raise typer.Exit(error.exit_code)
    finally:
        torch.set_num_threads(previous_threads)
    seconds = time.perf_counter() - start

    if update:
        try:
            current.save(path)
        except store.OutputError as error:
            fail(str(error))
        comparison = checks.self_check(current)
    else:
        comparison = checks.compare(reference, current, subset=subset)
    if not quiet:
        typer.echo(checks.format_table(comparison))
    summary = comparison.summary() + f" ({seconds:.0f} s)"
    if update:
        typer.echo(f"Wrote {path} ({len(current.cells)} cells, seed {run_seed}).")
    if not comparison.passed:
        fail(summary if not update else f"baseline written, but {summary}")
    typer.echo(summary)


def register(app: typer.Typer) -> None:
    """Add the ``check`` command to ``app``."""
    app.command(name="check")(check)
