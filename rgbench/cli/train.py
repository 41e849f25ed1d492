"""Commands for the paper's training experiments: ``train``, ``optimize``, ``table``, ``figure``.

``register(app)`` adds them to a Typer app (the main ``rgbench`` CLI calls it). Every
experiment comes from :data:`rgbench.experiments.EXPERIMENTS`:

    rgbench train toy --dists cle [--estimators e-reinforce,t-loo] [--steps 15000] [--seed 0] [--out DIR]
    rgbench optimize --dists cle ...          # the same as `rgbench train toy`
    rgbench train listops --estimator t-loo --scale quick --seed 0 --out DIR
    rgbench table --paper 3 --scale quick --seeds 3 --out DIR
    rgbench figure --paper N --scale smoke --seeds 1

User errors (unknown names, bad values, CUDA without a GPU, an unusable --out) exit with
code 1 or 2 and a one-line reason; a failed run leaves ``status.json`` = failed in its folder.
--out (default ``rgbench-results/<experiment>``, ``rgbench-results/table<N>``) is checked
before any compute (``rgbench-results/figure<N>`` for a figure); a non-empty one needs --resume (continue: complete runs are reused, an
interrupted one continues from its checkpoint) or --force (start afresh; old files stay
until new ones replace them). SIGINT/SIGTERM stop at the next step with a checkpoint, one
line saying how to resume, and exit code 130/143.
"""

from __future__ import annotations

import math
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

from rgbench import distributions, estimators
from rgbench.bench import store
from rgbench.cli import options
from rgbench.cli.options import DEFAULT_OUT_ROOT, command_line, fail, parse_registered
from rgbench.experiments import EXPERIMENTS, find_artefact
from rgbench.experiments.registry import Experiment, artefacts, describe_artefacts
from rgbench.experiments.scales import Scale


def _positive(value: Optional[int], option: str) -> Optional[int]:
    if value is not None and value < 1:
        raise typer.BadParameter(f"{option} must be a positive integer, got {value}")
    return value


def _fail(error: Exception) -> None:
    fail(f"{type(error).__name__}: {error}")


def _usage_error(message: str) -> None:
    """A usage error on one line (exit code 2, like Typer's, without its box)."""
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(2)


Estimators = Annotated[Optional[str], typer.Option(
    "--estimators", "--estimator", help="Estimators, comma-separated, or 'all' (default: the experiment's).")]
Steps = Annotated[Optional[int], typer.Option(help="Override the scale's number of steps.")]
ScaleOption = Annotated[Scale, typer.Option(help="smoke (seconds), quick (CPU) or paper (the paper's sizes).")]
Device = Annotated[str, typer.Option(help="cpu or cuda.")]
Cache = Annotated[Optional[Path], typer.Option(
    help="Dataset cache folder (default $RGBENCH_CACHE or ~/.cache/rgbench).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
Resume = Annotated[bool, typer.Option(
    "--resume", help="Continue the run in --out: reuse complete runs, continue an interrupted one from its "
                     "checkpoint.")]


@contextmanager
def _guarded(ctx: typer.Context, out: Path, resume: bool, force: bool) -> Iterator[None]:
    """Check --out before any compute; turn a signal into a checkpoint, one line and exit
    130/143; an unusable file is a one-line error; a run's error is a one-line error."""
    try:
        store.prepare_out(out, resume=resume, force=force)
    except store.OutputError as error:
        fail(str(error))
    with store.stop_on_signals():
        try:
            yield
        except store.Interrupted as error:
            typer.echo(f"Interrupted ({signal.Signals(error.signum).name}): finished runs and a checkpoint of the "
                       f"current one saved in {out}; continue with: {command_line(ctx, resume=True, force=False)}",
                       err=True)
            raise typer.Exit(error.exit_code)
        except store.OutputError as error:
            fail(str(error))
        except (RuntimeError, ValueError, NotImplementedError, FloatingPointError) as error:
            _fail(error)


def _experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise typer.BadParameter(f"unknown experiment {name!r}; registered: {', '.join(EXPERIMENTS.names())}",
                                 param_hint="EXPERIMENT")
    return EXPERIMENTS.get(name)


def _dists(experiment: Experiment, value: Optional[str]) -> tuple[str, ...]:
    if value is None:
        raise typer.BadParameter(f"train {experiment.name} needs the structures: comma-separated names or 'all' "
                                 f"({', '.join(experiment.structures)})", param_hint="--dists")
    allowed = [name for name in experiment.structures if name in distributions.DISTRIBUTIONS]
    if value.strip() == "all":
        return tuple(allowed)
    names = parse_registered(value, distributions.DISTRIBUTIONS, "--dists")
    for name in names:
        if name not in allowed:
            raise typer.BadParameter(f"{name!r} has no {experiment.name} loss; choose from {', '.join(allowed)}",
                                     param_hint="--dists")
    return names


def _train(ctx: typer.Context, experiment: Experiment, *, dists, estimators_, scale, seed, out, steps, device, cache,
           lr, quiet, resume, force, encoder=None, k=None, mode=None, types=None) -> None:
    """``rgbench train NAME``: check the options against the experiment's, then call its train entry
    (which checks the values of its own options: --encoder, --mode, ...)."""
    given = {"dists": dists, "lr": lr, "cache": cache, "encoder": encoder, "k": k, "mode": mode, "types": types}
    for option, value in given.items():
        if value is not None and option not in experiment.train_options:
            raise typer.BadParameter(f"train {experiment.name} has no --{option}", param_hint=f"--{option}")
    extra = {option: given[option] for option in experiment.train_options}
    if "dists" in experiment.train_options:
        extra["dists"] = _dists(experiment, dists)
    names = parse_registered(estimators_, estimators.ESTIMATORS, "--estimators", default=experiment.train_estimators)
    _positive(steps, "--steps")
    _positive(k, "--k")
    _positive(types, "--types")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise typer.BadParameter(f"--lr must be a positive number, got {lr}", param_hint="--lr")
    device = options.device(device)
    out = out if out is not None else DEFAULT_OUT_ROOT / experiment.name
    with _guarded(ctx, out, resume, force):
        text = experiment.train(estimators=names, scale=scale, seed=seed, out=out, steps=steps, device=device,
                                progress=not quiet, resume=resume, **extra)
    typer.echo(text)


def train(
    ctx: typer.Context,
    experiment: Annotated[str, typer.Argument(help="The experiment: toy or listops (see `rgbench train --help`).")],
    dists: Annotated[Optional[str], typer.Option(
        "--dists", "--dist", help="toy: structures, comma-separated (matching, binary-tree, cle, kruskal) or 'all'.")] = None,
    estimators_: Estimators = None,
    scale: ScaleOption = Scale.quick,
    seed: Annotated[int, typer.Option(help="Seed of the run (model, data order, samples).")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default rgbench-results/EXPERIMENT).")] = None,
    steps: Steps = None,
    device: Device = "cpu",
    cache: Annotated[Optional[Path], typer.Option(
        help="listops: dataset cache folder (default $RGBENCH_CACHE or ~/.cache/rgbench).")] = None,
    lr: Annotated[Optional[float], typer.Option(
        help="listops: override the learning rate (default: the scale's, else the estimator's).")] = None,
    encoder: Annotated[Optional[str], typer.Option(help="The experiment's encoder architecture, where it has several.")] = None,
    k: Annotated[Optional[int], typer.Option("--k", help="The subset size, for experiments with a top-k latent.")] = None,
    mode: Annotated[Optional[str], typer.Option(help="The experiment's training mode, where it has several.")] = None,
    types: Annotated[Optional[int], typer.Option(help="The number of token types, where the data has that setting.")] = None,
    quiet: Quiet = False,
    resume: Resume = False,
    force: options.Force = False,
) -> None:
    """Train one paper experiment from the experiment registry.

    toy: the authors' toy optimisation -- free logits (dimension 10, Adam lr 0.01, 3 samples
    per step, logits at 0) against a loss with a known optimum, for every structure in
    --dists and estimator in --estimators (default: all six); writes loss curves (PNG, PDF)
    and a table of final loss and gradient std at initialisation, the authors' figures
    (15,000 steps) beside them.

    listops: unsupervised ListOps parsing (paper §5.3) with one estimator (default t-loo) and
    seed: an LSTM arc scorer defines an arborescence over the tokens and a tree GNN answers
    from it; reports test accuracy and edge precision / recall of the best-validation checkpoint.
    """
    _train(ctx, _experiment(experiment), dists=dists, estimators_=estimators_, scale=scale, seed=seed, out=out,
           steps=steps, device=device, cache=cache, lr=lr, quiet=quiet, resume=resume, force=force, encoder=encoder,
           k=k, mode=mode, types=types)


def optimize(
    ctx: typer.Context,
    dists: Annotated[Optional[str], typer.Option(
        "--dists", "--dist", help="Structures, comma-separated (matching, binary-tree, cle, kruskal) or 'all'.")] = None,
    estimators_: Estimators = None,
    steps: Annotated[Optional[int], typer.Option(help="Adam steps (default: the scale's; 15,000 at quick and paper).")] = None,
    scale: Annotated[Scale, typer.Option(help="smoke (seconds), quick or paper (the authors' setting).")] = Scale.quick,
    seed: Annotated[int, typer.Option(help="Seed of the run.")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default rgbench-results/toy).")] = None,
    device: Device = "cpu",
    quiet: Quiet = False,
    resume: Resume = False,
    force: options.Force = False,
) -> None:
    """The authors' toy optimisation (the same as `rgbench train toy`).

    Minimises a loss with a known optimum over free logits (dimension 10, Adam lr 0.01,
    3 samples per step, logits initialised at 0); writes loss curves (PNG, PDF) and a table
    of final loss and gradient std at initialisation per estimator, with the authors'
    figures (at 15,000 steps) beside them.
    """
    _train(ctx, EXPERIMENTS.get("toy"), dists=dists, estimators_=estimators_, scale=scale, seed=seed, out=out,
           steps=steps, device=device, cache=None, lr=None, quiet=quiet, resume=resume, force=force)


def _available(kind: str) -> str:
    """'only Table 3 (listops) is available' / 'available: Table 1 (l2x), Table 3 (listops)'."""
    pairs = artefacts(kind)
    if not pairs:
        return f"no {kind} is registered yet"
    if len(pairs) == 1:
        return f"only {describe_artefacts(kind)} is available"
    return f"available: {describe_artefacts(kind)}"


def _paper_artefact(ctx: typer.Context, kind: str, number: int, *, scale, seeds, estimators_, out, steps, device, cache,
                    quiet, resume, force) -> None:
    """``rgbench table|figure --paper N``: find the experiment registered for it and run its grid."""
    experiment = find_artefact(kind, number)
    if experiment is None:
        _usage_error(f"--paper {number}: {kind.capitalize()} {number} is not registered; {_available(kind)}")
    _positive(seeds, "--seeds")
    _positive(steps, "--steps")
    names = parse_registered(estimators_, estimators.ESTIMATORS, "--estimators", default=experiment.artefact_estimators)
    device = options.device(device)
    out = out if out is not None else DEFAULT_OUT_ROOT / experiment.artefact.slug
    with _guarded(ctx, out, resume, force):
        text = experiment.paper_artefact(estimators=names, scale=scale, seeds=seeds, out=out, steps=steps,
                                         device=device, cache=cache, progress=not quiet, resume=resume)
    typer.echo(text)


Seeds = Annotated[int, typer.Option(help="Seeds per estimator and setting (0..seeds-1).")]
ArtefactEstimators = Annotated[Optional[str], typer.Option(
    "--estimators", help="Estimators, comma-separated, or 'all' (default: the artefact's).")]


def table(
    ctx: typer.Context,
    paper: Annotated[int, typer.Option(help="Which paper table to regenerate (registered: see the error for others).")] = 3,
    scale: ScaleOption = Scale.quick,
    seeds: Seeds = 3,
    estimators_: ArtefactEstimators = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Output folder (default rgbench-results/table<N>; with --resume, complete runs are reused).")] = None,
    steps: Steps = None,
    device: Device = "cpu",
    cache: Cache = None,
    quiet: Quiet = False,
    resume: Resume = False,
    force: options.Force = False,
) -> None:
    """Regenerate a paper table beside the paper's numbers (from the experiment registry).

    Runs every estimator x seed x setting (with --resume, reusing complete runs) and writes the table in
    the paper's format (mean ± std and max over seeds) with the paper's numbers in adjacent columns, as
    Markdown and LaTeX, the runs as CSV, and the validation curves of every run as a figure.
    """
    _paper_artefact(ctx, "table", paper, scale=scale, seeds=seeds, estimators_=estimators_, out=out, steps=steps,
                    device=device, cache=cache, quiet=quiet, resume=resume, force=force)


def figure(
    ctx: typer.Context,
    paper: Annotated[int, typer.Option(help="Which paper figure to regenerate (registered: see the error for others).")] = 2,
    scale: ScaleOption = Scale.quick,
    seeds: Seeds = 3,
    estimators_: ArtefactEstimators = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Output folder (default rgbench-results/figure<N>; with --resume, complete runs are reused).")] = None,
    steps: Steps = None,
    device: Device = "cpu",
    cache: Cache = None,
    quiet: Quiet = False,
    resume: Resume = False,
    force: options.Force = False,
) -> None:
    """Regenerate a paper figure (from the experiment registry).

    Runs every setting x seed (with --resume, reusing complete runs) and draws the figure (PNG, PDF) with
    its numbers as CSV and a Markdown table.
    """
    _paper_artefact(ctx, "figure", paper, scale=scale, seeds=seeds, estimators_=estimators_, out=out, steps=steps,
                    device=device, cache=cache, quiet=quiet, resume=resume, force=force)


def register(app: typer.Typer) -> None:
    """Add ``train``, ``optimize``, ``table`` and ``figure`` to ``app``."""
    app.command("train")(train)
    app.command("optimize")(optimize)
    app.command("table")(table)
    app.command("figure")(figure)
