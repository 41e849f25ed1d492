"""Running the toy optimisation: every (structure, estimator), its table and curves."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Iterable

import pandas as pd
import torch

from rgbench import distributions, estimators
from rgbench.bench import store
from rgbench.experiments.files import write_csv
from rgbench.experiments.scales import Scale
from rgbench.experiments.toy.authors import AUTHORS_TOY
from rgbench.experiments.toy.losses import toy_loss, toy_optimum
from rgbench.experiments.toy.problem import ToyProblem, gradient_std_at_init
from rgbench.experiments.toy.scales import TOY_SCALES
from rgbench.experiments.toy.table import plot_toy_curves, toy_table_markdown
from rgbench.experiments.trainer import TrainConfig, Trainer

TOY_STRUCTURES = ("matching", "binary-tree", "cle", "kruskal")
TOY_ESTIMATORS = ("e-reinforce", "t-reinforce", "e-loo", "t-loo", "relax", "sst")


def _skip_reason(estimator_name: str, structure: str, num_samples: int, objective, device) -> str | None:
    if estimator_name not in estimators.ESTIMATORS:
        return f"estimator {estimator_name!r} is not registered (known: {', '.join(estimators.names())})"
    if structure not in distributions.DISTRIBUTIONS:
        return f"distribution {structure!r} is not registered"
    cls = distributions.get(structure)
    probe = cls(torch.zeros(cls.random_logits(3, device=device).shape, device=device), **cls.default_args(3))
    try:
        estimator = estimators.get(estimator_name, num_samples=num_samples)
    except ValueError as error:
        return str(error)
    return estimator.supports(probe, objective)


def run_toy(
    structures: Iterable[str],
    estimator_names: Iterable[str] = TOY_ESTIMATORS,
    scale: Scale = Scale.quick,
    seed: int = 0,
    out: str | Path | None = None,
    steps: int | None = None,
    device: str = "cpu",
    progress: bool = True,
    resume: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Optimise every (structure, estimator); returns (curves, table) and, with ``out``,
    writes ``toy_curves.csv``, ``toy_table.{csv,md}``, ``toy_curves.{png,pdf}`` and one
    trainer folder per run, ``out/<structure>/<estimator>-seed<seed>``. With ``resume``,
    complete runs are read back and an interrupted one continues from its checkpoint."""
    config = TOY_SCALES[Scale(scale)]
    if steps is not None:
        config = replace(config, steps=steps, eval_every=min(config.eval_every, steps))
    curves, rows = [], []
    for structure in structures:
        structure = distributions.DISTRIBUTIONS.canonical(structure)
        loss = toy_loss(structure)
        for name in estimator_names:
            name = estimators.ESTIMATORS.canonical(name)
            info = {"structure": structure, "estimator": name, "seed": seed, "scale": Scale(scale).value}
            reason = _skip_reason(name, structure, config.num_samples, loss, device)
            if reason is not None:
                rows.append({**info, "status": "skipped", "reason": reason})
                continue
            problem = ToyProblem(structure, config, seed, device)
            train = TrainConfig(
                steps=config.steps,
                eval_every=config.eval_every,
                lr=config.lr,
                num_samples=config.num_samples,
                batch_structures=config.num_samples,
                select_best=False,
                eval_at_start=True,
                seed=seed,
            )
            run_dir = None if out is None else Path(out) / structure / f"{name}-seed{seed}"
            trainer = Trainer(
                problem,
                estimators.get(name, num_samples=config.num_samples),
                train,
                run_dir,
                {**info, "run": f"{structure}/{name}"},
                device,
                progress,
                resume,
            )
            summary = trainer.run()
            curves += trainer.rows
            std = gradient_std_at_init(structure, name, config, seed, device)
            authors = AUTHORS_TOY.get(structure, {}).get(name, (math.nan, math.nan))
            rows.append(
                {
                    **info,
                    "status": "complete",
                    "reason": "",
                    "final_loss": summary["test_loss"],
                    "final_loss_se": summary["test_loss_se"],
                    "final_mode_loss": summary["test_mode_loss"],
                    "optimum": toy_optimum(structure, config.n),
                    **std,
                    "authors_grad_std": authors[0],
                    "authors_final_loss": authors[1],
                    "steps": config.steps,
                    "wall_s": summary["wall_s"],
                }
            )
    curves_frame, table = pd.DataFrame(curves), pd.DataFrame(rows)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "toy_curves.csv", curves_frame)
        write_csv(out / "toy_table.csv", table)
        store.write_text(out / "toy_table.md", toy_table_markdown(table))
        if not curves_frame.empty:
            plot_toy_curves(curves_frame, out / "toy_curves", n=config.n, eval_samples=config.eval_samples)
    return curves_frame, table


def train(*, estimators, scale, seed, out, steps, device, progress, resume, dists, **_) -> str:
    """The registry's ``train`` entry (``rgbench train toy`` / ``rgbench optimize``): the
    table in Markdown and the files written."""
    _, table = run_toy(dists, estimators, scale, seed, out, steps, device, progress=progress, resume=resume)
    return f"{toy_table_markdown(table)}\nwrote {out}/toy_table.md, toy_curves.csv, toy_curves.png/pdf"
