"""Results as rich tables for the terminal: the summary `rgbench variance` and `rgbench
speed` print after a run (one row per cell or timed operation, values with their intervals).

The files (Markdown, LaTeX) are :mod:`rgbench.reports.tables`; these are for reading at a
glance, from the same saved frame and the same number formats (:mod:`rgbench.reports.format`).
"""

from __future__ import annotations

import shutil
import sys

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rgbench.bench.results import MEASURED
from rgbench.reports.format import bracketed, number, with_interval


def console() -> Console:
    """A console as wide as the terminal (200 columns when not a terminal), no soft wrap."""
    wide = shutil.get_terminal_size((200, 24)).columns if sys.stdout.isatty() else 200
    return Console(width=wide, soft_wrap=False)


def _add_row(table: Table, *cells: str) -> None:
    table.add_row(*(escape(str(cell)) for cell in cells))  # brackets in values are not markup


def variance_table(frame: pd.DataFrame) -> Table:
    """One row per variance cell: bias, variance, cosine, time and work with intervals."""
    pct = "/".join(f"{100 * level:g}%" for level in sorted(frame["level"].unique()))
    table = Table(title=f"rgbench variance ({pct} intervals)", header_style="bold")
    for column in ("dist", "n", "estimator", "K", "bias [interval]", "variance", "cosine", "ms / estimate",
                   "var × s", "status"):
        table.add_column(escape(column), justify="left" if column in ("dist", "estimator", "status") else "right")
    for _, row in frame.iterrows():
        ok = row["status"] in MEASURED
        _add_row(
            table, row["dist"], str(row["n"]), row["estimator"], str(row["K"]),
            bracketed(row["bias"], row["bias_lo"], row["bias_hi"]) if ok else "",
            with_interval(row["total_var"], row["total_var_lo"], row["total_var_hi"]) if ok else "",
            with_interval(row["cosine"], row["cosine_lo"], row["cosine_hi"]) if ok else "",
            with_interval(row["time_median_s"] * 1e3, row["time_lo_s"] * 1e3, row["time_hi_s"] * 1e3) if ok else "",
            with_interval(row["work_var"], row["work_var_lo"], row["work_var_hi"]) if ok else "",
            "ok" if row["status"] == "ok" else f"{row['status']}: {row['reason']}",
        )
    return table


def speed_table(frame: pd.DataFrame) -> Table:
    """One row per timed operation: median ms per call and µs per instance."""
    table = Table(title="rgbench speed (median, 95% interval)", header_style="bold")
    for column in ("dist", "n", "batch", "operation", "ms / call", "µs / instance", "status"):
        table.add_column(column, justify="left" if column in ("dist", "operation", "status") else "right")
    for _, row in frame.iterrows():
        ok = row["status"] == "ok"
        _add_row(
            table, row["dist"], str(row["n"]), str(row["batch"]), row["operation"],
            with_interval(row["time_median_s"] * 1e3, row["time_lo_s"] * 1e3, row["time_hi_s"] * 1e3) if ok else "",
            number(row["per_instance_us"]) if ok else "",
            "ok" if ok else f"{row['status']}: {row['reason']}",
        )
    return table


TABLES = {"variance": variance_table, "speed": speed_table}
