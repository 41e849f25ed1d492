"""Training ListOps models: one estimator and seed (``train listops``), or the grid of Table 3.

Model selection: the checkpoint with the best validation accuracy (evaluated on the mode
arborescence, noise-free CLE on the arc logits); the test metrics are that checkpoint's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import torch

from rgbench import estimators
from rgbench.bench import store
from rgbench.bench.executor import Executor
from rgbench.experiments.files import write_csv
from rgbench.experiments.listops.data import load_or_generate
from rgbench.experiments.listops.model import ListOpsModel
from rgbench.experiments.listops.problem import ListOpsProblem
from rgbench.experiments.listops.scales import LISTOPS_SCALES, listops_hyper
from rgbench.experiments.listops.table3 import TABLE3_FILES, plot_table3_curves, summarise_table3, table3_latex, table3_markdown
from rgbench.experiments.scales import Scale
from rgbench.experiments.sweep import Run, run_sweep
from rgbench.experiments.trainer import TrainConfig, Trainer

LISTOPS_ESTIMATORS = ("sst", "e-loo", "t-loo", "relax")


def run_listops(
    estimator_name: str,
    scale: Scale = Scale.quick,
    seed: int = 0,
    out: str | Path | None = None,
    device: str = "cpu",
    cache_dir: str | Path | None = None,
    steps: int | None = None,
    progress: bool = True,
    lr: float | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train one ListOps model with ``estimator_name``; returns the trainer's summary row
    (test metrics of the best-validation checkpoint, wall-clock, ...). ``lr`` overrides the
    learning rate that :func:`listops_hyper` picks; ``resume`` continues the run in ``out``
    from its checkpoint (a complete run is returned as saved)."""
    name = estimators.ESTIMATORS.canonical(estimator_name)
    config = LISTOPS_SCALES[Scale(scale)]
    if steps is not None:
        config = replace(config, steps=steps, eval_every=min(config.eval_every, steps))
    hyper = listops_hyper(name, config)
    if lr is not None:
        hyper["lr"] = lr
    data = load_or_generate(config.data, cache_dir)
    torch.manual_seed(seed)  # model initialisation
    model = ListOpsModel(config.hidden, config.message_steps, config.dropout)
    estimator = estimators.get(name, num_samples=hyper["num_samples"], **hyper["options"])
    # A critic (RELAX) reads a fixed event shape: pad every batch to the longest expression.
    pad_to = config.data.max_length if estimator.has_critic else None
    problem = ListOpsProblem(data, model, config, seed, device, pad_to)
    reason = estimator.supports(*problem.probe())
    if reason is not None:
        raise NotImplementedError(f"{name} cannot train the ListOps parser: {reason}")
    train = TrainConfig(
        steps=config.steps,
        eval_every=config.eval_every,
        lr=hyper["lr"],
        num_samples=hyper["num_samples"],
        batch_structures=config.batch_structures,
        optimizer="adamw",
        weight_decay=hyper["weight_decay"],
        seed=seed,
    )
    info = {
        "task": "listops",
        "estimator": name,
        "seed": seed,
        "scale": Scale(scale).value,
        "run": f"listops/{name}/seed{seed}",
        "data_fingerprint": config.data.fingerprint(),
        "scale_config": json.dumps(asdict(replace(config, data=None))),
    }
    trainer = Trainer(problem, estimator, train, None if out is None else Path(out), info, device, progress, resume)
    return trainer.run()



def train(*, estimators, scale, seed, out, steps, device, progress, resume, lr=None, cache=None, **_) -> str:
    """The registry's ``train`` entry (``rgbench train listops``): one estimator, one seed."""
    if len(estimators) != 1:
        raise ValueError(f"train listops trains one estimator per run (one --out), got {', '.join(estimators)}")
    (name,) = estimators
    summary = run_listops(name, scale, seed, out, device, cache, steps, progress=progress, lr=lr, resume=resume)
    metrics = ", ".join(f"{key[5:]} {100 * summary[key]:.2f}%" for key in summary if key.startswith("test_"))
    return f"{name} seed {seed} ({Scale(scale).value}): {metrics}; {summary['wall_s']:.0f} s; wrote {out}"


def run_table3(
    scale: Scale = Scale.quick,
    seeds: int = 3,
    out: str | Path = Path("rgbench-results") / "table3",
    estimator_names: Iterable[str] = LISTOPS_ESTIMATORS,
    device: str = "cpu",
    cache_dir: str | Path | None = None,
    steps: int | None = None,
    progress: bool = True,
    resume: bool = False,
    executor: Executor | None = None,
) -> pd.DataFrame:
    """Run the grid estimator x seed and write ``table3_runs.csv``, ``table3.md``,
    ``table3.tex`` and the validation curves ``table3_curves.png`` / ``.pdf``; each is
    rewritten as soon as a run finishes. With ``resume``, runs whose folder is complete with
    the same configuration are reused and an interrupted one continues from its checkpoint.
    Returns the per-run frame."""
    out = Path(out)
    expected_steps = steps if steps is not None else LISTOPS_SCALES[Scale(scale)].steps
    runs = [
        Run(f"{name}-seed{seed}",
            {"estimator_name": name, "scale": scale, "seed": seed, "device": device, "cache_dir": cache_dir,
             "steps": steps},
            {"scale": Scale(scale).value, "steps": expected_steps})
        for name in (estimators.ESTIMATORS.canonical(name) for name in estimator_names)
        for seed in range(seeds)
    ]  # fmt: skip
    rows = run_sweep(runs, run_listops, out, resume=resume, progress=progress, executor=executor,
                     on_rows=lambda rows: _write_table3(out, rows, scale, figure=False))
    return _write_table3(out, rows, scale, figure=True)


def _write_table3(out: Path, rows: list[dict[str, Any]], scale: Scale, figure: bool) -> pd.DataFrame:
    """The table of the runs finished so far (the curves figure only at the end: it is slow)."""
    runs = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "table3_runs.csv", runs)
    if figure:
        curves = [out / "runs" / f"{row['estimator']}-seed{row['seed']}" / "metrics.csv" for row in rows]
        plot_table3_curves(pd.concat([pd.read_csv(path) for path in curves]), out / "table3_curves", scale)
    summary = summarise_table3(runs)
    store.write_text(out / "table3.md", table3_markdown(summary, scale))
    store.write_text(out / "table3.tex", table3_latex(summary, scale))
    return runs


def paper_artefact(*, estimators, scale, seeds, out, steps, device, cache, progress, resume, executor=None,
                   **_) -> str:
    """The registry's ``paper_artefact`` entry (``rgbench table --paper 3``)."""
    run_table3(scale, seeds, out, estimators, device, cache, steps, progress=progress, resume=resume,
               executor=executor)
    return f"{(Path(out) / 'table3.md').read_text()}\nwrote {out}/{', '.join(TABLE3_FILES)}"
