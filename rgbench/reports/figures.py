"""Seaborn figures of saved results, written as PNG and PDF.

Variance runs give three figures against the size n, one panel per structure (and a row
per task when several): ``variance`` (total variance of one estimate, log axis), ``time``
(median milliseconds per estimate, log axis) and ``work`` (variance x seconds, log axis).
Speed runs give ``speed`` (median milliseconds per call against n, log-log). Lines are
coloured by estimator (or operation), styled by K when several; vertical bars are the
intervals saved with the results (95% unless the run chose another level); the title carries the seed.
One legend, beside the top-right panel, lists every level drawn in any panel; the n axis is
labelled with the sizes themselves. Values that cannot be drawn
on a log axis (zero variance of the exact estimator) are left out and the caption says so.
A point whose interval is wider than its value produces a warning (for the timing figures,
the tables' single timing note stands for them).

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas, never through
pyplot's global state, so rendering works headless and leaves the caller's backend alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from rgbench.bench import store
from rgbench.bench.results import MEASURED
from rgbench.reports.format import unstable


class FigureSpec(NamedTuple):
    name: str
    column: str
    lo: str
    hi: str
    ylabel: str
    scale: float = 1.0
    log_x: bool = False
    timing: bool = False  # clock-based: unstable points are summed up once (tables.timing_note)


VARIANCE_FIGURES = (
    FigureSpec("variance", "total_var", "total_var_lo", "total_var_hi", "total variance of one estimate"),
    FigureSpec("time", "time_median_s", "time_lo_s", "time_hi_s", "ms per estimate (median)", scale=1e3, timing=True),
    FigureSpec("work", "work_var", "work_var_lo", "work_var_hi", "variance x seconds per estimate", timing=True),
)
SPEED_FIGURES = (
    FigureSpec("speed", "time_median_s", "time_lo_s", "time_hi_s", "ms per call on the batch (median)", 1e3, True,
               timing=True),
)
HUE = {"variance": "estimator", "speed": "operation"}
#: markers of the K values, in order, the same in every panel
MARKERS = ("o", "X", "s", "P", "D", "^", "v", "*")
#: at most this many labelled ticks on the n axis (more collide on a log axis)
MAX_X_TICKS = 8


def _x_ticks(ax, sizes: list[int], log: bool) -> None:
    """Label the sizes themselves (plain integers), thinned to ``MAX_X_TICKS``, with no
    labelled minor ticks: a log axis would otherwise label 6x10^0, 2x10^1, ... and skip 50."""
    if len(sizes) > MAX_X_TICKS:
        step = -(-len(sizes) // MAX_X_TICKS)
        sizes = sorted(set(sizes[::step]) | {sizes[-1]})
    ax.xaxis.set_major_locator(FixedLocator(sizes))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    if log:
        ax.xaxis.set_minor_formatter(NullFormatter())


def _legend(ax, hue: str, drawn: list, palette: dict, style: str | None, style_order: list) -> None:
    """One legend for the whole figure, beside the top-right panel: every level drawn in
    any panel (a panel's own legend knows only its levels), then the K markers."""
    marker = None if style else "o"
    handles = [Line2D([], [], color=palette[level], marker=marker, label=str(level)) for level in drawn]
    if style:
        handles.append(Line2D([], [], linestyle="none", label=style))
        handles += [Line2D([], [], color="0.35", linestyle="none", marker=MARKERS[i % len(MARKERS)], label=str(k))
                    for i, k in enumerate(style_order)]
    ax.legend(handles=handles, title=hue if style else None, loc="upper left", bbox_to_anchor=(1.02, 1.0),
              frameon=False)


def _points(spec: FigureSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """The ok rows with the figure's y and interval in plotting units."""
    data = frame[frame["status"].isin(MEASURED)].copy()
    data["y"] = data[spec.column] * spec.scale
    data["y_lo"] = data[spec.lo] * spec.scale
    data["y_hi"] = data[spec.hi] * spec.scale
    return data


def _warnings(spec: FigureSpec, frame: pd.DataFrame, hue: str) -> list[str]:
    """One line per drawn point whose interval is wider than its value."""
    return [
        f"figure {spec.name}: {point[hue]} on {point['dist']} at n={point['n']} is unstable "
        f"(interval [{point['y_lo']:.3g}, {point['y_hi']:.3g}] wider than {point['y']:.3g})"
        for _, point in _points(spec, frame).iterrows()
        if point["y"] > 0 and unstable(point["y"], point["y_lo"], point["y_hi"])
    ]


def _draw(spec: FigureSpec, frame: pd.DataFrame, hue: str, suptitle: str) -> Figure:
    """The figure; points that a log axis cannot show (<= 0) are counted in the caption."""
    data = _points(spec, frame)
    drawable = np.isfinite(data["y"]) & (data["y"] > 0)
    dropped = int((~drawable).sum())
    data = data[drawable]
    dists = list(dict.fromkeys(frame["dist"]))
    row_values = list(dict.fromkeys(frame["task"])) if "task" in frame else [None]
    levels = list(dict.fromkeys(frame[hue]))
    palette = dict(zip(levels, sns.color_palette("tab10", len(levels))))
    style = "K" if frame["K"].nunique() > 1 else None
    style_order = sorted(frame["K"].unique()) if style else []
    markers = {k: MARKERS[i % len(MARKERS)] for i, k in enumerate(style_order)}

    figure = Figure(figsize=(4.6 * len(dists) + 1.6, 3.6 * len(row_values)))
    FigureCanvasAgg(figure)
    with sns.axes_style("whitegrid"):
        axes = figure.subplots(len(row_values), len(dists), squeeze=False)
    for i, task in enumerate(row_values):
        for j, dist in enumerate(dists):
            ax = axes[i][j]
            panel = data[(data["dist"] == dist) & ((data["task"] == task) if task is not None else True)]
            ax.set_title(dist if task is None or len(row_values) == 1 else f"{dist}, {task}")
            ax.set_yscale("log")
            if spec.log_x:
                ax.set_xscale("log")
            if panel.empty:
                continue
            # seaborn draws per-style markers only with a style variable; else one marker for all.
            marks = ({"style": style, "style_order": style_order, "markers": markers, "dashes": False} if style
                     else {"marker": "o"})
            sns.lineplot(
                data=panel, x="n", y="y", hue=hue, hue_order=[v for v in levels if v in set(panel[hue])],
                palette=palette, errorbar=None, ax=ax, legend=False, **marks,
            )
            floor = panel["y"].min() / 1e3  # a lower end <= 0 cannot be drawn on a log axis
            for (level, *_), points in panel.groupby([hue] + ([style] if style else []), sort=False):
                lower = (points["y"] - np.maximum(points["y_lo"], floor)).clip(lower=0)
                upper = (points["y_hi"] - points["y"]).clip(lower=0)
                ax.errorbar(points["n"], points["y"], yerr=[lower, upper], fmt="none", ecolor=palette[level],
                            capsize=3, alpha=0.8)
            _x_ticks(ax, sorted(int(n) for n in panel["n"].unique()), spec.log_x)
            ax.set_xlabel("n")
            ax.set_ylabel(spec.ylabel)
    drawn = [level for level in levels if level in set(data[hue])]
    if drawn:
        _legend(axes[0][len(dists) - 1], hue, drawn, palette, style, style_order)
    caption = suptitle + ("" if not dropped else f"; {dropped} non-positive value(s) not drawn on the log axis")
    figure.suptitle(caption, fontsize=9)
    figure.tight_layout()
    return figure


def _planned(frame: pd.DataFrame, kind: str):
    """(file stem, spec, part of the frame, title) for every figure of a ``kind`` frame."""
    specs = VARIANCE_FIGURES if kind == "variance" else SPEED_FIGURES
    groups = list(frame.groupby(["device", "dtype", "seed"], sort=False))
    for (device, dtype, seed), part in groups:
        if not part["status"].isin(MEASURED).any():
            continue
        suffix = "" if len(groups) == 1 else f"-{device}-{dtype}-seed{seed}"
        if kind == "speed":
            extra = f"batch {part['batch'].iloc[0]}, K={part['K'].iloc[0]}"
        else:
            ks = ",".join(str(k) for k in sorted(part["K"].unique()))
            extra = f"task {', '.join(dict.fromkeys(part['task']))}, K={ks}, R={part['replicates'].iloc[0]}"
        levels = sorted(part["level"].unique()) if "level" in part else [0.95]
        pct = "/".join(f"{100 * level:g}%" for level in levels)
        title = f"{extra}, seed {seed}, {device} {dtype}; bars: {pct} intervals"
        for spec in specs:
            yield f"{spec.name}{suffix}", spec, part, title


def planned_figures(frame: pd.DataFrame, kind: str) -> list[str]:
    """The file stems :func:`write_figures` writes for this frame (each as .png and .pdf)."""
    return [stem for stem, *_ in _planned(frame, kind)]


def figure_warnings(frame: pd.DataFrame, kind: str) -> list[str]:
    """The instability warnings of the figures of a ``kind`` frame (without drawing them);
    timing figures give none: the tables' one timing note covers them."""
    return [warning for _, spec, part, _ in _planned(frame, kind) if not spec.timing
            for warning in _warnings(spec, part, HUE[kind])]


def write_figures(frame: pd.DataFrame, kind: str, out_dir: str | Path) -> list[Path]:
    """Draw the figures of a ``kind`` frame into ``out_dir/figures``; the paths written."""
    folder = Path(out_dir) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, spec, part, title in _planned(frame, kind):
        figure = _draw(spec, part, HUE[kind], title)
        for extension, metadata in (("png", {"Software": None}), ("pdf", {"CreationDate": None})):
            path = folder / f"{stem}.{extension}"
            store.write_figure(path, figure, dpi=150, bbox_inches="tight", metadata=metadata)
            paths.append(path)
    return paths
