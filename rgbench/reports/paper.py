"""Tables and figures of the paper experiments (``rgbench train``, ``rgbench table --paper N``).

Generic over an experiment's metrics, so every paper table and curve figure uses the same
writers:

* :func:`runs_table_markdown`: one row per run (key columns, then value columns; a skipped
  run gives its reason), with notes under the table -- the toy table.
* :func:`summarise_seeds`, :func:`seed_table_markdown`, :func:`seed_table_latex`: the paper's
  layout for test metrics over seeds (mean ± std and max per metric, ours beside the paper's)
  -- Table 3, and Tables 1 and 2 later.
* :func:`curves_figure`: metrics against step, one panel per structure or metric, one line
  per estimator, with a band that the caption explains (a Monte Carlo standard-error band, or
  a bootstrap interval over seeds), an integer step axis, in the style of the other
  rgbench figures (seaborn whitegrid, tab10, caption on top, legend beside the last panel),
  written with :func:`save_figure` as PNG and PDF.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import pandas as pd

from rgbench.bench import store

# ---------------------------------------------------------------------- per-run tables


@dataclass(frozen=True)
class Column:
    """A value column of :func:`runs_table_markdown`: its header and how a row fills it."""

    header: str
    cell: Callable[[dict[str, Any]], str]


def runs_table_markdown(rows: Sequence[dict[str, Any]], keys: Sequence[str], columns: Sequence[Column],
                        notes: Sequence[str] = ()) -> str:
    """A Markdown table: ``keys`` as they are, then ``columns``; a row whose ``status`` is not
    ``complete`` gives ``skipped: <reason>`` instead of its values. ``notes`` follow the table."""
    header = [*keys, *(column.header for column in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row[key]) for key in keys]
        if row.get("status") != "complete":
            lines.append("| " + " | ".join([*cells, f"skipped: {row.get('reason', '')}"]) + " |" + " |" * (len(columns) - 1))
            continue
        lines.append("| " + " | ".join([*cells, *(column.cell(row) for column in columns)]) + " |")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- tables over seeds
Triple = tuple[float, float, float]  # mean, std (ddof 1; NaN with one seed), max


def summarise_seeds(runs: pd.DataFrame, metrics: Sequence[str], order: Sequence[str] = (),
                    factor: float = 100.0) -> list[dict[str, Any]]:
    """Per estimator: (mean, std, max) over seeds of each ``test_<metric>`` times ``factor``
    (percent by default), the number of seeds and the mean wall-clock per run; estimators in
    ``order`` first, in that order."""
    summary = []
    for name, group in runs.groupby("estimator", sort=False):
        row: dict[str, Any] = {"estimator": name, "seeds": len(group), "wall_s": float(group["wall_s"].mean())}
        for metric in metrics:
            values = factor * group[f"test_{metric}"].astype(float)
            row[metric] = (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan, float(values.max()))
        summary.append(row)
    order = list(order)
    summary.sort(key=lambda r: order.index(r["estimator"]) if r["estimator"] in order else len(order))
    return summary


def mean_std(triple: Triple, pm: str = " ± ") -> str:
    mean, std, _ = triple
    return f"{mean:.2f}{pm}{'n/a' if math.isnan(std) else f'{std:.2f}'}"


def seed_table_markdown(summary: Sequence[dict[str, Any]], metrics: Sequence[str], labels: Mapping[str, str],
                        paper: Mapping[str, Mapping[str, Triple]], caption: str, footer: Sequence[str] = ()) -> str:
    """The paper's layout: per metric our mean ± std and max over seeds, then the paper's; the
    number of seeds and the wall-clock per run last. ``caption`` above, ``footer`` lines below."""
    header = ["Estimator"]
    for metric in metrics:
        title = metric.capitalize()
        header += [f"{title} mean ± std", f"{title} max", f"paper {metric} mean ± std", f"paper {metric} max"]
    header += ["seeds", "wall-clock per run (s)"]
    lines = [caption, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in summary:
        reference = paper.get(row["estimator"])
        cells = [labels.get(row["estimator"], row["estimator"])]
        for metric in metrics:
            cells += [mean_std(row[metric]), f"{row[metric][2]:.2f}"]
            cells += [mean_std(reference[metric]), f"{reference[metric][2]:.2f}"] if reference else ["—", "—"]
        cells += [str(row["seeds"]), f"{row['wall_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if footer:
        lines += ["", *footer]
    return "\n".join(lines) + "\n"


def seed_table_latex(summary: Sequence[dict[str, Any]], metrics: Sequence[str], labels: Mapping[str, str],
                     paper: Mapping[str, Mapping[str, Triple]], comment: str) -> str:
    """The same table as LaTeX (booktabs), ``comment`` (a ``%`` line) after it."""
    columns = "l" + "cccc" * len(metrics) + "r"
    lines = [
        "\\begin{tabular}{" + columns + "}",
        "\\toprule",
        " & " + " & ".join(f"\\multicolumn{{4}}{{c}}{{{m.capitalize()}}}" for m in metrics) + " & \\\\",
        "Estimator" + " & Mean $\\pm$ std & Max & Paper mean $\\pm$ std & Paper max" * len(metrics) + " & Seeds \\\\",
        "\\midrule",
    ]
    for row in summary:
        reference = paper.get(row["estimator"])
        cells = [labels.get(row["estimator"], row["estimator"])]
        for metric in metrics:
            cells += [mean_std(row[metric], " $\\pm$ "), f"{row[metric][2]:.2f}"]
            cells += [mean_std(reference[metric], " $\\pm$ "), f"{reference[metric][2]:.2f}"] if reference else ["--", "--"]
        cells.append(str(row["seeds"]))
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", comment]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- curves


@dataclass(frozen=True)
class Band:
    """The band around each line: ``se`` -- ± ``z`` times the standard-error column ``column``
    (one row per step); ``bootstrap`` -- the mean over the rows at each step (seeds) with a
    ``level`` bootstrap interval."""

    kind: Literal["se", "bootstrap"]
    column: str | None = None
    z: float = 1.96
    level: int = 95

    def describe(self, what: str = "") -> str:
        if self.kind == "se":
            return f"band: ± {self.z:g} standard errors{' of ' + what if what else ''} ({self.level}%)"
        return f"line: mean over seeds, band: {self.level}% bootstrap interval over seeds"


def curves_figure(data: pd.DataFrame, *, x: str, y: str, hue: str, panel: str, ylabel: str, caption: str,
                  band: Band, hue_order: Sequence[str] | None = None, panel_order: Sequence[str] | None = None,
                  references: Mapping[str, tuple[float, str]] | None = None, xlabel: str = "step"):
    """One panel per value of ``panel``, one line per ``hue`` with its ``band``; ``references``
    maps a panel to (value, label), drawn dashed grey. Returns a matplotlib ``Figure``."""
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = list(panel_order or dict.fromkeys(data[panel]))
    levels = list(hue_order or dict.fromkeys(data[hue]))
    palette = dict(zip(levels, sns.color_palette("tab10", len(levels))))
    figure = Figure(figsize=(4.2 * len(panels) + 1.8, 3.6))
    FigureCanvasAgg(figure)
    with sns.axes_style("whitegrid"):
        axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for j, (ax, name) in enumerate(zip(axes, panels)):
        part = data[data[panel] == name]
        shown = [level for level in levels if level in set(part[hue])]
        errorbar = ("ci", band.level) if band.kind == "bootstrap" else None
        sns.lineplot(data=part, x=x, y=y, hue=hue, hue_order=shown, palette=palette, errorbar=errorbar,
                     n_boot=1000, seed=0, ax=ax)
        if band.kind == "se":
            for level in shown:
                line = part[part[hue] == level].sort_values(x)
                half = band.z * line[band.column]
                ax.fill_between(line[x], line[y] - half, line[y] + half, color=palette[level], alpha=0.2, linewidth=0)
        if references and name in references:
            value, label = references[name]
            ax.axhline(value, color="grey", linestyle="--", linewidth=1, label=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(str(name))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        legend = ax.get_legend()
        if legend is not None and j != len(panels) - 1:
            legend.remove()
        elif legend is not None:
            ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    figure.suptitle(caption, fontsize=9)
    figure.tight_layout()
    return figure


def save_figure(figure, stem: str | Path) -> list[Path]:
    """``stem.png`` and ``stem.pdf``, each written atomically, without dates in the metadata."""
    paths = []
    for extension, metadata in (("png", {"Software": None}), ("pdf", {"CreationDate": None})):
        paths.append(store.write_figure(f"{stem}.{extension}", figure, dpi=150, bbox_inches="tight", metadata=metadata))
    return paths
