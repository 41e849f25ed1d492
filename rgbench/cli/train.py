"""Commands for the paper's training experiments: ``optimize``, ``train listops``, ``table``.

``register(app)`` adds them to a Typer app (the main ``rgbench`` CLI calls it):

    rgbench optimize --dist cle [--estimators e-reinforce,t-loo] [--steps 15000] [--seed 0] [--out DIR]
    rgbench train listops --estimator t-loo --scale quick --seed 0 --out DIR
    rgbench table --paper 3 --scale quick --seeds 3 --out DIR

User errors (unknown names, bad values, CUDA without a GPU, an unusable --out) exit with
code 1 or 2 and a one-line reason; a failed run leaves ``status.json`` = failed in its folder.
--out is checked before any compute; a non-empty one needs --resume (continue: complete runs
are reused, an interrupted one continues from its checkpoint) or --force (start afresh; old
files stay until new ones replace them). SIGINT/SIGTERM stop at the next step with a
checkpoint, one line saying how to resume, and exit code 130/143.
"""

from __future__ import annotations

import math
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import torch
import typer

from rgbench import distributions, estimators
from rgbench.cli.options import command_line, fail, parse_names
from rgbench.bench import store
from rgbench.experiments import paper as experiments
from rgbench.experiments.paper import Scale
from rgbench.experiments.toy.losses import toy_structures


def _names(value: str, registry, option: str) -> list[str]:
    names = parse_names(value)
    if not names:
        raise typer.BadParameter(f"{option} needs at least one name")
    for name in names:
        if name not in registry:
            raise typer.BadParameter(f"unknown name {name!r}; valid names: {', '.join(registry.names(with_aliases=True))}")
    return [registry.canonical(name) for name in names]


def _device(device: str) -> str:
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise typer.BadParameter(f"--device must be cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise typer.BadParameter("--device cuda was requested but CUDA is not available on this machine")
    return device


def _positive(value: Optional[int], option: str) -> Optional[int]:
    if value is not None and value < 1:
        raise typer.BadParameter(f"{option} must be a positive integer, got {value}")
    return value


def _fail(error: Exception) -> None:
    fail(f"{type(error).__name__}: {error}")


Resume = Annotated[bool, typer.Option(
    "--resume", help="Continue the run in --out: reuse complete runs, continue an interrupted one from its "
                     "checkpoint.")]
Force = Annotated[bool, typer.Option(
    "--force", help="Start afresh in a non-empty --out (old files stay until new ones replace them).")]


@contextmanager
def _guarded(ctx: typer.Context, out: Path, resume: bool, force: bool) -> Iterator[None]:
    """Check --out before any compute; turn a signal into a checkpoint, one line and exit
    130/143; an unusable file is a one-line error."""
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


def optimize(
    ctx: typer.Context,
    dist: Annotated[str, typer.Option(help="Structures, comma-separated (matching, binary-tree, cle, kruskal) or 'all'.")],
    estimators_: Annotated[
        str, typer.Option("--estimators", help="Estimators, comma-separated.")
    ] = ",".join(experiments.TOY_ESTIMATORS),
    steps: Annotated[Optional[int], typer.Option(help="Adam steps (default: the scale's; 15,000 at quick and paper).")] = None,
    scale: Annotated[Scale, typer.Option(help="smoke (seconds), quick or paper (the authors' setting).")] = Scale.quick,
    seed: Annotated[int, typer.Option(help="Seed of the run.")] = 0,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("results/toy"),
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    resume: Resume = False,
    force: Force = False,
) -> None:
    """The authors' toy optimisation: loss curves and final losses per estimator.

    Minimises a loss with a known optimum over free logits (dimension 10, Adam lr 0.01,
    3 samples per step, logits initialised at 0); writes loss curves (PNG, PDF) and a table
    of final loss and gradient std at initialisation per estimator, with the authors'
    figures beside them.
    """
    known = toy_structures()
    if dist.strip() == "all":
        structures = [name for name in known if name in distributions.DISTRIBUTIONS]
    else:
        structures = _names(dist, distributions.DISTRIBUTIONS, "--dist")
        for name in structures:
            if name not in known:
                raise typer.BadParameter(f"--dist {name!r} has no toy loss; choose from {', '.join(known)}")
    names = _names(estimators_, estimators.ESTIMATORS, "--estimators")
    _positive(steps, "--steps")
    device = _device(device)
    with _guarded(ctx, out, resume, force):
        try:
            _, table = experiments.run_toy(structures, names, scale, seed, out, steps, device, progress=not quiet,
                                           resume=resume)
        except store.OutputError:
            raise
        except (RuntimeError, ValueError, NotImplementedError, FloatingPointError) as error:
            _fail(error)
    typer.echo(experiments.toy_table_markdown(table))
    typer.echo(f"wrote {out}/toy_table.md, toy_curves.csv, toy_curves.png/pdf")


train_app = typer.Typer(help="Train a model with a structured latent variable.", no_args_is_help=True)


@train_app.command("listops")
def train_listops(
    ctx: typer.Context,
    estimator: Annotated[str, typer.Option(help="Estimator (t-loo, e-loo, relax, sst).")] = "t-loo",
    scale: Annotated[Scale, typer.Option(help="smoke (seconds), quick (CPU, ~10-20 min) or paper (GPU).")] = Scale.quick,
    seed: Annotated[int, typer.Option(help="Seed of the run (model, data order, samples).")] = 0,
    out: Annotated[Path, typer.Option(help="Output folder of the run.")] = Path("results/listops"),
    steps: Annotated[Optional[int], typer.Option(help="Override the scale's number of steps.")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    cache: Annotated[Optional[Path], typer.Option(help="Dataset cache folder (default $RGBENCH_CACHE or ~/.cache/rgbench).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    lr: Annotated[
        Optional[float], typer.Option(help="Override the learning rate (default: the scale's, else the estimator's).")
    ] = None,
    resume: Resume = False,
    force: Force = False,
) -> None:
    """Unsupervised ListOps parsing (paper §5.3) with one estimator and seed.

    An LSTM arc scorer defines an arborescence over the tokens and a tree GNN answers from
    it; reports test accuracy and edge precision / recall of the best-validation checkpoint.
    """
    (name,) = _names(estimator, estimators.ESTIMATORS, "--estimator")
    _positive(steps, "--steps")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise typer.BadParameter(f"--lr must be a positive number, got {lr}", param_hint="--lr")
    device = _device(device)
    if "cle" not in distributions.DISTRIBUTIONS:
        _fail(RuntimeError("the arborescence distribution ('cle') is not available"))
    with _guarded(ctx, out, resume, force):
        try:
            summary = experiments.run_listops(name, scale, seed, out, device, cache, steps, progress=not quiet, lr=lr,
                                              resume=resume)
        except store.OutputError:
            raise
        except (RuntimeError, ValueError, NotImplementedError, FloatingPointError) as error:
            _fail(error)
    metrics = ", ".join(f"{key[5:]} {100 * summary[key]:.2f}%" for key in summary if key.startswith("test_"))
    typer.echo(f"{name} seed {seed} ({scale.value}): {metrics}; {summary['wall_s']:.0f} s; wrote {out}")


def table(
    ctx: typer.Context,
    paper: Annotated[int, typer.Option(help="Which paper table to regenerate (3: ListOps).")] = 3,
    scale: Annotated[Scale, typer.Option(help="smoke, quick or paper.")] = Scale.quick,
    seeds: Annotated[int, typer.Option(help="Seeds per estimator (0..seeds-1).")] = 3,
    estimators_: Annotated[
        str, typer.Option("--estimators", help="Estimators, comma-separated.")
    ] = ",".join(experiments.LISTOPS_ESTIMATORS),
    out: Annotated[Path, typer.Option(help="Output folder (with --resume, complete runs are reused).")] = Path("results/table3"),
    steps: Annotated[Optional[int], typer.Option(help="Override the scale's number of steps.")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    cache: Annotated[Optional[Path], typer.Option(help="Dataset cache folder.")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    resume: Resume = False,
    force: Force = False,
) -> None:
    """Regenerate a paper table (Table 3: ListOps) beside the paper's numbers.

    Runs every estimator x seed (with --resume, reusing complete runs) and writes the table in the paper's
    format (mean ± std and max over seeds) with the paper's numbers in adjacent columns, as
    Markdown and LaTeX, and the validation curves of every run as a figure.
    """
    if paper != 3:
        raise typer.BadParameter(f"--paper {paper} is not available here; only Table 3 (ListOps) is", param_hint="--paper")
    _positive(seeds, "--seeds")
    _positive(steps, "--steps")
    names = _names(estimators_, estimators.ESTIMATORS, "--estimators")
    device = _device(device)
    with _guarded(ctx, out, resume, force):
        try:
            experiments.run_table3(scale, seeds, out, names, device, cache, steps, progress=not quiet, resume=resume)
        except store.OutputError:
            raise
        except (RuntimeError, ValueError, NotImplementedError, FloatingPointError) as error:
            _fail(error)
    typer.echo((out / "table3.md").read_text())
    typer.echo(f"wrote {out}/table3.md, table3.tex, table3_runs.csv, table3_curves.png/pdf")


def register(app: typer.Typer) -> None:
    """Add ``optimize``, ``train listops`` and ``table`` to ``app``."""
    app.command("optimize")(optimize)
    app.add_typer(train_app, name="train")
    app.command("table")(table)
