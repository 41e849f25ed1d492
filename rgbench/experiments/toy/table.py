"""The toy table (final loss and gradient std at initialisation beside the authors' figures)
and the loss curves figure."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from rgbench.experiments.toy.losses import toy_optimum
from rgbench.experiments.toy.scales import AUTHORS_STEPS
from rgbench.reports.paper import Band, Column, curves_figure, runs_table_markdown, save_figure


def _authors(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}"


TOY_COLUMNS = (
    Column("final loss", lambda row: f"{row['final_loss']:.3f} ± {row['final_loss_se']:.3f}"),
    Column("optimum", lambda row: f"{row['optimum']:.0f}"),
    Column("authors' final loss", lambda row: _authors(row["authors_final_loss"])),
    Column("grad std at init", lambda row: f"{row['grad_std']:.3f}"),
    Column("authors' grad std", lambda row: _authors(row["authors_grad_std"])),
)


def steps_note(steps: int | None) -> str | None:
    """The note a run shorter than the authors' gets: its numbers are not comparable as such."""
    if steps is None or steps >= AUTHORS_STEPS:
        return None
    return (f"Note: these runs stop after {steps:,} steps; the authors' figures are at {AUTHORS_STEPS:,} steps, "
            "so the final losses are not comparable with them.")


def _steps(table: pd.DataFrame) -> int | None:
    if "steps" not in table or table["steps"].isna().all():
        return None
    return int(table["steps"].dropna().min())


def toy_table_markdown(table: pd.DataFrame) -> str:
    """Final loss (± its Monte Carlo standard error) and gradient std at initialisation per
    estimator, with the authors' figures beside them; skipped rows give their reason; runs
    shorter than the authors' 15,000 steps get a note saying so."""
    note = steps_note(_steps(table))
    return runs_table_markdown(table.to_dict("records"), ("structure", "estimator"), TOY_COLUMNS,
                               notes=[note] if note else [])


def plot_toy_curves(curves: pd.DataFrame, stem: str | Path, n: int = 10, eval_samples: int | None = None) -> None:
    """Expected loss against step with its ± 1.96 Monte Carlo standard-error band, one panel
    per structure, one line per estimator, the optimum dashed; ``stem.png`` and ``stem.pdf``."""
    structures = list(dict.fromkeys(curves["structure"]))
    seeds = ", ".join(str(seed) for seed in dict.fromkeys(curves["seed"]))
    band = Band("se", column="valid_loss_se")
    samples = f" by {eval_samples:,} Monte Carlo samples" if eval_samples else " (Monte Carlo)"
    caption = (f"Toy optimisation, n = {n}, seed {seeds}: expected loss of the current logits{samples}; "
               f"{band.describe('the Monte Carlo estimate')}; dashed: the optimum")
    note = steps_note(int(curves["step"].max()))
    if note:
        caption += f"\n{note}"
    figure = curves_figure(
        curves, x="step", y="valid_loss", hue="estimator", panel="structure", ylabel="expected loss",
        caption=caption, band=band, references={s: (toy_optimum(s, n), "optimum") for s in structures},
    )  # fmt: skip
    save_figure(figure, stem)
