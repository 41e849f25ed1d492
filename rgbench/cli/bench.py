"""The ``rgbench`` command line: variance and speed benchmarks, reports and listings.

    rgbench variance --dist kruskal            # bias, variance, cost of each estimator
    rgbench variance --dists topk,kruskal      # several structures (or all) in one run
    rgbench speed --dist cle --sizes 10,50     # wall-clock of the building blocks
    rgbench report rgbench-results/variance-kruskal
    rgbench list
    rgbench optimize --dist cle                # the authors' toy optimisation
    rgbench train listops --scale smoke        # unsupervised ListOps parsing (Table 3)
    rgbench check                              # variance/bias regression check (CI)

User errors (an unknown name, a device that is not there) exit with code 1 and one line on
stderr, never a traceback; malformed option values are ``typer.BadParameter`` (code 2).
Options shared with the other command modules (names or ``all``, devices, the output root,
the help width) are in :mod:`rgbench.cli.options`; the console tables in
:mod:`rgbench.reports.console`.
"""

from __future__ import annotations

import ast
import math
import signal
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Iterator, Optional

import torch
import typer
import typer.rich_utils
from rich.table import Table

from rgbench import distributions, estimators
from rgbench.bench import tasks
from rgbench.cli import options
from rgbench.cli import check as check_cli
from rgbench.cli import train as training_cli
from rgbench.cli.options import (
    CONTEXT_SETTINGS,
    DEFAULT_OUT_ROOT,
    command_line,
    fail,
    help_width,
    parse_ints,
    parse_names,
    parse_registered,
)
from rgbench.bench import DEFAULT_ESTIMATORS, SpeedGrid, VarianceGrid, run_speed, run_variance
from rgbench.bench import store
from rgbench.bench.progress import CellStore
from rgbench.bench.speed import speed_total
from rgbench.reports.console import console, speed_table, variance_table

# Help at 100 columns in a pipe too (rich would take 80 there), never wider than the terminal.
typer.rich_utils.MAX_WIDTH = help_width()

app = typer.Typer(
    help="Benchmark gradient estimators for structured discrete variables (recursive Gumbel-Max trick).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings=CONTEXT_SETTINGS,
)

MAX_PRINTED_WARNINGS = 5
SPEED_ESTIMATORS = ("t-reinforce", "t-loo", "sst")
DISTS_HELP = ("Comma-separated structures, or all: " + ", ".join(distributions.names())
              + " (or an alias). --dist is the same option.")
DEVICE_HELP = "Device to run on: cpu, cuda or cuda:N."


class DType(str, Enum):
    float32 = "float32"
    float64 = "float64"


TaskName = Enum("TaskName", {name: name for name in tasks.names()}, type=str)


# ---------------------------------------------------------------------------- helpers
def _registered(value: str | None, registry, option: str, default=None) -> tuple[str, ...]:
    """Names or ``all`` (``options.parse_registered``); an unknown name is left to the
    grid, whose one-line error (exit 1) says which kind of name it is and lists the valid ones."""
    try:
        return parse_registered(value, registry, option, default=default)
    except typer.BadParameter:
        return parse_names(value or "")


def _default_out(kind: str, value: str, dists: tuple[str, ...]) -> Path:
    """``rgbench-results/<kind>-<dist>[-<dist>...]``, or ``<kind>-all`` for ``--dists all``."""
    return DEFAULT_OUT_ROOT / f"{kind}-{'all' if value.strip() == 'all' else '-'.join(dists)}"


def _estimator_options(values: list[str]) -> dict[str, dict]:
    """``NAME.KEY=VALUE`` strings -> {NAME: {KEY: VALUE}}; VALUE as a Python literal if it is one."""
    options: dict[str, dict] = {}
    for item in values:
        target, sep, raw = item.partition("=")
        name, dot, key = target.partition(".")
        if not (sep and dot and name and key):
            raise typer.BadParameter(f"expected NAME.KEY=VALUE such as relax.warmup_steps=100, got {item!r}",
                                     param_hint="--option")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        options.setdefault(name, {})[key] = value
    return options


@contextmanager
def _threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` within the block (restored after)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _open_run(ctx: typer.Context, kind: str, out: Path, config: dict, total: int, unit: str,
              resume: bool, force: bool) -> CellStore:
    """Check ``--out`` and open its progress, before any compute; one-line errors."""
    try:
        store.prepare_out(out, resume=resume, force=force)
        return CellStore.open(out, kind, config, total=total, unit=unit, resume=resume,
                              resume_command=command_line(ctx, out=out, resume=True, force=False))
    except store.OutputError as error:
        fail(str(error))


def _interrupted(error: store.Interrupted, saved: CellStore, ctx: typer.Context, out: Path) -> None:
    """One line on what was saved and how to continue; exit 130 (SIGINT) or 143 (SIGTERM)."""
    name = signal.Signals(error.signum).name
    typer.echo(f"Interrupted ({name}): {len(saved)} of {saved.total} {saved.unit}s saved in {out}; continue with: "
               f"{command_line(ctx, out=out, resume=True, force=False)}", err=True)
    raise typer.Exit(error.exit_code)


def _execute(ctx: typer.Context, run, saved: CellStore, out: Path, threads: int, quiet: bool, figures: bool,
             table, what: str) -> None:
    """``run(command)`` with ``threads`` torch threads and signals as stop requests, then the
    final files and the report; an interruption or an unwritable file is one line."""
    with _threads(threads), store.stop_on_signals():
        try:
            results = run(command_line(ctx, resume=False, force=False))
            _finish(results, out, quiet, figures, table)
        except store.Interrupted as error:
            _interrupted(error, saved, ctx, out)
        except store.OutputError as error:  # a progress file could not be written (disk full)
            fail(str(error))
    _check_failures(results.frame, out, what)


def _finish(results, out: Path, quiet: bool, figures: bool, table) -> None:
    """Write the final results and the report; an OSError is one line."""
    try:
        results.save(out)
        if not quiet:
            console().print(table(results.frame))
        store.check_stop()
        _report(out, quiet, figures)
    except store.OutputError as error:
        fail(str(error))


def _check_scale(scale: float) -> None:
    if not (math.isfinite(scale) and scale > 0):
        fail(f"--scale must be a finite positive number, got {scale}")


def _report(out: Path, quiet: bool, figures: bool = True) -> None:
    from rgbench.reports import render  # seaborn and matplotlib load when it draws, not at start

    rendered = render(out, figures=figures)
    for warning in rendered.warnings[:MAX_PRINTED_WARNINGS]:
        typer.echo(f"Warning: {warning}", err=True)
    more = len(rendered.warnings) - MAX_PRINTED_WARNINGS
    if more > 0:
        typer.echo(f"Warning: ... and {more} more, listed in {out / 'report.md'}", err=True)
    if not quiet:
        typer.echo(f"Wrote {out}: " + ", ".join(sorted({p.relative_to(out).parts[0] for p in rendered.paths})))


def _check_failures(frame, out: Path, what: str) -> None:
    failed = frame[frame["status"] == "failed"]
    if not failed.empty:
        first = failed.iloc[0]
        fail(f"{len(failed)} {what} failed (first: {first.get('estimator', first.get('operation'))} at n={first['n']}: "
              f"{first['reason']}); results saved in {out}")


# ---------------------------------------------------------------------------- commands
@app.command()
def variance(
    ctx: typer.Context,
    dists: Annotated[str, typer.Option("--dists", "--dist", help=DISTS_HELP)],
    sizes: Annotated[Optional[str], typer.Option(
        help="Comma-separated sizes n. Default 3,4,5 (exact bias by enumeration); sizes above the "
             "structure's enumeration limit use a t-loo Monte Carlo reference.")] = None,
    estimators_: Annotated[Optional[str], typer.Option(
        "--estimators", help="Comma-separated estimator names, or all. Default: " + ", ".join(DEFAULT_ESTIMATORS)
                             + ".")] = None,
    task: Annotated[TaskName, typer.Option(help="Objective (see `rgbench list`).")] = "quadratic",
    samples: Annotated[str, typer.Option(
        help="K, objective evaluations per estimate; comma-separated for several.")] = "4",
    replicates: Annotated[int, typer.Option(min=2, help="Independent estimates per cell (R).")] = 1000,
    level: Annotated[float, typer.Option(min=0.5, max=0.999999, help="Confidence level of every interval.")] = 0.95,
    seed: Annotated[int, typer.Option(min=0, help="Seed; every cell derives its own from it.")] = 0,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "cpu",
    dtype: Annotated[DType, typer.Option(help="Floating-point type of the logits.")] = DType.float64,
    scale: Annotated[float, typer.Option(help="Logits ~ Normal(0, scale^2) (symmetric for kruskal).")] = 1.0,
    logit_shift: Annotated[float, typer.Option(
        help="Constant added to every logit: the same law, a test of numerical range; an exact "
             "reference is then the float64 gradient of the unshifted logits.")] = 0.0,
    timing_repeats: Annotated[int, typer.Option(min=1, help="Timed single estimates per cell.")] = 11,
    reference_samples: Annotated[int, typer.Option(
        min=2, help="K of the t-loo reference used above the enumeration limit.")] = 1000,
    option: Annotated[list[str], typer.Option(
        help="Estimator option NAME.KEY=VALUE, repeatable (e.g. relax.warmup_steps=100, sst.temperature=0.5).")] = [],
    out: Annotated[Optional[Path], typer.Option(
        help="Output directory. Default: variance-DIST under rgbench-results/ (variance-DIST1-DIST2 for "
             "several, variance-all for all).")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the interrupted run in --out: keep its saved cells, compute the rest "
                         "(refused if its options differ).")] = False,
    force: options.Force = False,
    threads: options.Threads = 1,
    figures: options.Figures = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no table; for scripts.")] = False,
):
    """Measure bias, variance, SNR, cosine and cost of gradient estimators on structures.

    For each size and estimator: R independent estimates of the gradient of E[L(X)] on seeded
    random logits, compared with the exact gradient (or a Monte Carlo reference); writes
    variance.csv/json, Markdown and LaTeX tables, figures and report.md to --out.

    --out is checked first (a folder, writable, with space; refused when it already holds
    results, unless --resume or --force). Each finished cell is saved at once in
    OUT/progress/, so SIGINT/SIGTERM (exit 130/143) or a kill loses at most the cell being
    computed, and --resume continues with the same numbers as an uninterrupted run.
    """
    _check_scale(scale)
    dist_names = _registered(dists, distributions.DISTRIBUTIONS, "--dists")
    size_values = None if sizes is None else parse_ints(sizes, "--sizes")
    sample_values = parse_ints(samples, "--samples")
    options = _estimator_options(option)
    try:
        grid = VarianceGrid(
            dists=dist_names, sizes=size_values,
            estimators=_registered(estimators_, estimators.ESTIMATORS, "--estimators", DEFAULT_ESTIMATORS),
            samples=sample_values, devices=(device,), seeds=(seed,), task=task.value, replicates=replicates,
            level=level,
            dtype=dtype.value, logit_scale=scale, logit_shift=logit_shift, timing_repeats=timing_repeats,
            reference_samples=reference_samples, estimator_options=options,
        )
    except ValueError as error:
        fail(str(error))
    out = out if out is not None else _default_out("variance", dists, grid.dists)
    saved = _open_run(ctx, "variance", out, {**grid.as_dict(), "threads": threads}, len(grid), "cell", resume, force)
    for note in grid.fallback_notes():
        typer.echo(f"Note: {note}", err=True)
    _execute(ctx, lambda command: run_variance(grid, progress=not quiet, command=command, saved=saved),
             saved, out, threads, quiet, figures, variance_table, "cell(s)")


@app.command()
def speed(
    ctx: typer.Context,
    dists: Annotated[str, typer.Option("--dists", "--dist", help=DISTS_HELP)],
    sizes: Annotated[str, typer.Option(help="Comma-separated sizes n.")] = "10,50",
    batch: Annotated[int, typer.Option(min=1, help="Independent instances per call.")] = 128,
    estimators_: Annotated[Optional[str], typer.Option(
        "--estimators", help="Comma-separated estimators to time, or all. Default: "
                             + ", ".join(SPEED_ESTIMATORS) + ".")] = None,
    task: Annotated[TaskName, typer.Option(help="Objective the estimators use.")] = "quadratic",
    samples: Annotated[int, typer.Option(min=1, help="K, samples per estimate.")] = 4,
    repeats: Annotated[int, typer.Option(min=1, help="Timed calls per operation.")] = 11,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the logits and the noise.")] = 0,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "cpu",
    dtype: Annotated[DType, typer.Option(help="Floating-point type of the logits.")] = DType.float32,
    option: Annotated[list[str], typer.Option(help="Estimator option NAME.KEY=VALUE, repeatable.")] = [],
    out: Annotated[Optional[Path], typer.Option(
        help="Output directory. Default: speed-DIST under rgbench-results/ (speed-DIST1-DIST2 for several, "
             "speed-all for all).")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the interrupted run in --out: keep its saved operations, compute the rest "
                         "(refused if its options differ).")] = False,
    force: options.Force = False,
    threads: options.Threads = 1,
    figures: options.Figures = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no table; for scripts.")] = False,
):
    """Time sampling, the trace log-probability (with backward), E | T and each estimator.

    One batch of seeded instances per size; median, quartiles and a 95% interval over
    --repeats calls, synchronising the device around each. Writes speed.csv/json, tables,
    a figure and report.md to --out. --out, --resume and --force as for `rgbench variance`;
    each timed operation is saved at once in OUT/progress/.
    """
    dist_names = _registered(dists, distributions.DISTRIBUTIONS, "--dists")
    size_values = parse_ints(sizes, "--sizes")
    options = _estimator_options(option)
    try:
        grid = SpeedGrid(
            dists=dist_names, sizes=size_values, batch=batch,
            estimators=_registered(estimators_, estimators.ESTIMATORS, "--estimators", SPEED_ESTIMATORS),
            samples=samples, devices=(device,), seed=seed, task=task.value, dtype=dtype.value, repeats=repeats,
            estimator_options=options,
        )
    except ValueError as error:
        fail(str(error))
    out = out if out is not None else _default_out("speed", dists, grid.dists)
    saved = _open_run(ctx, "speed", out, {**grid.as_dict(), "threads": threads}, speed_total(grid), "operation",
                      resume, force)
    _execute(ctx, lambda command: run_speed(grid, progress=not quiet, command=command, saved=saved),
             saved, out, threads, quiet, figures, speed_table, "operation(s)")


@app.command()
def report(
    directory: Annotated[Path, typer.Argument(help="A directory written by `rgbench variance` or `rgbench speed`.")],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but warnings.")] = False,
):
    """Re-render tables, figures and report.md from saved results, without recomputing.

    A folder whose run was interrupted (progress/ without final results) is refused with
    the command that continues it.
    """
    try:
        _report(directory, quiet)
    except (FileNotFoundError, ValueError) as error:
        fail(str(error))


def _support_matrix(task_name: str) -> tuple[Table, list[str]]:
    task = tasks.get(task_name)
    table = Table(title=f"supported combinations, task {task_name} (at n=4)", header_style="bold")
    table.add_column("structure")
    names = estimators.names()
    for name in names:
        table.add_column(name, justify="center")
    reasons = []
    for dist_name in distributions.names():
        dist = tasks.make_instance(dist_name, 4)
        reason = task.supports(dist_name)
        objective = None if reason else task.build(dist)
        marks = []
        for name in names:
            why = reason or estimators.get(name, num_samples=2).supports(dist, objective)
            marks.append("yes" if why is None else "-")
            if why is not None:
                reasons.append(f"{dist_name} / {name}: {why}")
        table.add_row(dist_name, *marks)
    return table, reasons


@app.command(name="list")
def list_(
    task: Annotated[Optional[TaskName], typer.Option(
        help="Show the support matrix for this task only (default: every task).")] = None,
):
    """List structures, estimators, tasks, and which combinations are supported."""
    out = console()
    aliases: dict[str, list[str]] = {}
    for registry in (distributions.DISTRIBUTIONS, estimators.ESTIMATORS):
        for entry in registry.names(with_aliases=True):
            if " (= " in entry:
                alias, target = entry[:-1].split(" (= ")
                aliases.setdefault(target, []).append(alias)

    structures = Table(title="structures", header_style="bold")
    for column in ("name", "aliases", "exact bias up to n", "default arguments at n=6"):
        structures.add_column(column)
    for name in distributions.names():
        cls = distributions.get(name)
        structures.add_row(name, ", ".join(aliases.get(name, [])), str(cls.max_enumeration_size),
                           str(cls.default_args(6) or "-"))
    out.print(structures)

    estimator_table = Table(title="estimators", header_style="bold")
    for column in ("name", "aliases", "unbiased", "summary"):
        estimator_table.add_column(column)
    for name in estimators.names():
        cls = estimators.ESTIMATORS.get(name)
        summary = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())  # the first paragraph
        estimator_table.add_row(name, ", ".join(aliases.get(name, [])), "yes" if cls.unbiased else "no", summary)
    out.print(estimator_table)

    task_table = Table(title="tasks", header_style="bold")
    for column in ("name", "relaxed input", "structures", "objective"):
        task_table.add_column(column)
    for name in tasks.names():
        entry = tasks.get(name)
        task_table.add_row(name, "yes" if entry.accepts_relaxed else "no",
                           "all" if entry.structures is None else ", ".join(entry.structures), entry.summary)
    out.print(task_table)

    for task_name in [task.value] if task is not None else tasks.names():
        matrix, reasons = _support_matrix(task_name)
        out.print(matrix)
        for reason in dict.fromkeys(reasons):
            out.print(f"  - {reason}", highlight=False, markup=False)


# The training commands (optimize, train, table) live with the training harness, and the
# variance-regression check with the check module.
training_cli.register(app)
check_cli.register(app)


def main() -> None:  # pragma: no cover - the console script calls ``app`` directly
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
