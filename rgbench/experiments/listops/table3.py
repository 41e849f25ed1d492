"""Paper Table 3 (ListOps): the paper's numbers, and our runs summarised in its layout
(Markdown, LaTeX) with the validation curves figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from rgbench.experiments.scales import Scale
from rgbench.reports.paper import (
    Band,
    curves_figure,
    save_figure,
    seed_table_latex,
    seed_table_markdown,
    summarise_seeds,
)

#: the paper's estimator names, in the paper's row order
TABLE3_LABELS = {"sst": "SST", "e-loo": "E-REINFORCE+", "t-loo": "T-REINFORCE+", "relax": "RELAX"}
#: Paper Table 3 (test, %): metric -> (mean, std, max) over the authors' seeds.
PAPER_TABLE3 = {
    "sst": {"accuracy": (78.42, 8.14, 93.78), "precision": (56.84, 20.08, 82.40), "recall": (30.18, 19.10, 73.11)},
    "e-loo": {"accuracy": (60.25, 2.29, 64.47), "precision": (40.87, 6.90, 45.74), "recall": (40.74, 6.93, 45.46)},
    "t-loo": {"accuracy": (87.34, 3.00, 91.97), "precision": (77.93, 7.36, 79.65), "recall": (61.10, 14.11, 79.65)},
    "relax": {"accuracy": (79.60, 9.36, 88.64), "precision": (54.73, 17.48, 75.27), "recall": (53.61, 17.14, 75.27)},
}
TABLE3_METRICS = ("accuracy", "precision", "recall")
PAPER_SCALE_COMMAND = "rgbench table --paper 3 --scale paper --seeds 3 --device cuda --out results/table3-paper"
TABLE3_FILES = ("table3.md", "table3.tex", "table3_runs.csv", "table3_curves.png/pdf")


def _scale(scale: Scale | str) -> str:
    return Scale(scale).value if scale else ""


def summarise_table3(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """Per estimator: mean, std (ddof 1; NaN with one seed) and max over seeds of each test
    metric in %, the number of seeds and the mean wall-clock per run; the paper's order."""
    return summarise_seeds(runs, TABLE3_METRICS, order=list(TABLE3_LABELS))


def table3_markdown(summary: list[dict[str, Any]], scale: Scale | str = "") -> str:
    """Table 3 in the paper's layout (mean ± std and max over seeds, test, %), the paper's
    numbers in the adjacent columns."""
    caption = (f"Table 3 (ListOps, scale {_scale(scale)}): test metrics of the best-validation "
               "checkpoint, mean ± std and max over seeds, in %.")
    return seed_table_markdown(summary, TABLE3_METRICS, TABLE3_LABELS, PAPER_TABLE3, caption,
                               footer=[f"Paper scale (GPU): `{PAPER_SCALE_COMMAND}`"])


def table3_latex(summary: list[dict[str, Any]], scale: Scale | str = "") -> str:
    """The same table as LaTeX (booktabs): ours and the paper's side by side per metric."""
    comment = f"% ListOps, scale {_scale(scale)}; test metrics (%) of the best-validation checkpoint."
    return seed_table_latex(summary, TABLE3_METRICS, TABLE3_LABELS, PAPER_TABLE3, comment)


def plot_table3_curves(metrics: pd.DataFrame, stem: str | Path, scale: Scale | str = "") -> None:
    """Validation accuracy, edge precision and recall against step, one line per estimator
    (mean over seeds with a 95% bootstrap band over seeds); ``stem.png`` and ``stem.pdf``."""
    long = metrics.melt(
        id_vars=["estimator", "seed", "step"], value_vars=[f"valid_{m}" for m in TABLE3_METRICS],
        var_name="metric", value_name="value",
    )  # fmt: skip
    long["metric"] = long["metric"].str.removeprefix("valid_")
    long["estimator"] = long["estimator"].map(lambda name: TABLE3_LABELS.get(name, name))
    seeds = long.groupby("estimator")["seed"].nunique()
    band = Band("bootstrap")
    counts = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}-{seeds.max()}"
    caption = (f"ListOps (Table 3, scale {_scale(scale)}): validation metrics of the mode arborescence; "
               f"{band.describe()} ({counts} seeds per estimator" + ("; one seed: no band)" if seeds.max() < 2 else ")"))
    order = [label for label in TABLE3_LABELS.values() if label in set(long["estimator"])]
    order += [label for label in dict.fromkeys(long["estimator"]) if label not in order]
    figure = curves_figure(long, x="step", y="value", hue="estimator", panel="metric", ylabel="validation",
                           caption=caption, band=band, hue_order=order, panel_order=TABLE3_METRICS)
    save_figure(figure, stem)
