"""Result tables in the paper's layout: one row per estimator (or timed operation), one
column group per size, each cell ``mean ± half-width of its interval`` (95% unless the run
chose another level), the best value
of each column in bold where "best" means something (see :func:`_mark_best`: never the bias
of an unbiased estimator, which is noise around 0), a dagger where the interval is wider
than the value.

:func:`build_tables` turns a saved results frame into :class:`Table` objects, one per
(dist, task, K, device, dtype, seed) group; :func:`markdown` and :func:`latex` render them.
Rendering is a pure function of the frame, so re-rendering saved results gives the same
bytes. The Markdown table has every size and metric side by side; the LaTeX one is split
into parts at most :data:`LATEX_MAX_COLUMNS` numeric columns wide (statistics and cost
apart, then groups of sizes) so it fits a page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import pandas as pd

from rgbench.bench.results import MEASURED
from rgbench.reports.format import (
    bracketed,
    latex_bracketed,
    latex_escape,
    latex_with_interval,
    unstable,
    with_interval,
)


class Metric(NamedTuple):
    column: str
    lo: str
    hi: str
    label: str
    latex: str
    better: str  # "min" or "max"
    scale: float = 1.0
    check_stability: bool = True
    bracket: bool = False  # show "value [lo, hi]": the interval is not centred on the value
    timing: bool = False  # from the clock: its instability is reported once per run, not per cell
    #: bold only among estimators that are biased by design (the bias of an unbiased one
    #: is noise around 0: its smallest value means nothing)
    best_among_biased: bool = False


VARIANCE_METRICS = (
    # A zero-bias estimator's interval always reaches 0 and exceeds its noise-level value:
    # that is the expected outcome, not instability.
    Metric("bias", "bias_lo", "bias_hi", "bias", "bias", "min", check_stability=False, bracket=True,
           best_among_biased=True),
    Metric("total_var", "total_var_lo", "total_var_hi", "variance", "var.", "min"),
    Metric("time_median_s", "time_lo_s", "time_hi_s", "ms", "ms", "min", scale=1e3, timing=True),
    Metric("work_var", "work_var_lo", "work_var_hi", "var × s", "var.$\\times$s", "min", timing=True),
)
SPEED_METRICS = (
    Metric("time_median_s", "time_lo_s", "time_hi_s", "ms", "ms", "min", scale=1e3, timing=True),
)

VARIANCE_LEGEND = (
    "Each cell: value ± half-width of its {pct} interval, or value [{pct} interval] for the bias. "
    "bias = ‖E[g] − reference‖ (interval: Bonferroni box of per-coordinate z-intervals; it "
    "contains 0 when no coordinate shows bias); "
    "variance = trace of the covariance of one estimate (percentile bootstrap); ms = median "
    "wall-clock per estimate (order-statistic interval); var × s = variance × median seconds "
    "(Bonferroni product interval). Bold: lowest in its column; for the bias, lowest among the "
    "estimators biased by design when there are two or more (an unbiased estimator's bias is "
    "noise around 0 and is never bold). †: interval wider than the value. "
    "BIASED: an estimator registered as unbiased whose bias interval at per-cell false-alarm rate "
    "1e-3 (Bonferroni over coordinates) excludes 0; the reason is listed below the table."
)
SPEED_LEGEND = (
    "Each cell: median milliseconds per call on the whole batch ± half-width of its 95% "
    "order-statistic interval. Bold: fastest in its column. †: interval wider than the value."
)

GROUP_KEYS = {
    "variance": ("dist", "task", "K", "device", "dtype", "seed"),
    "speed": ("dist", "batch", "K", "task", "device", "dtype", "seed"),
}
ROW_KEY = {"variance": "estimator", "speed": "operation"}


class Cell(NamedTuple):
    value: float
    lo: float
    hi: float
    status: str  # ok, biased (measured, flagged), skipped, failed or missing
    bold: bool = False
    unstable: bool = False
    bracket: bool = False
    unbiased: bool | None = None  # the estimator is registered unbiased (None: unknown)


@dataclass
class Table:
    title: str
    row_label: str
    sizes: list[int]
    metrics: tuple[Metric, ...]
    rows: list[tuple[str, list[Cell]]]  # cells in size-major, metric-minor order
    legend: str
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: "name at n=N" of each row and size whose timing (ms, var × s) is unstable
    unstable_timings: list[str] = field(default_factory=list)
    slug: str = ""


def _sizes_text(sizes) -> str:
    return ", ".join(str(n) for n in sizes)


def _percent(frame: pd.DataFrame) -> str:
    """The confidence level of a frame's intervals, e.g. "95%" (speed runs: always 95%)."""
    levels = sorted(frame["level"].unique()) if "level" in frame else [0.95]
    return "/".join(f"{100 * level:g}%" for level in levels)


def _title(kind: str, key: dict, frame: pd.DataFrame) -> str:
    if kind == "variance":
        replicates = ", ".join(str(r) for r in sorted(frame["replicates"].unique()))
        return (
            f"{key['dist']}: task {key['task']}, K={key['K']}, {replicates} replicates, "
            f"seed {key['seed']}, {key['device']} {key['dtype']}"
        )
    return f"{key['dist']}: batch {key['batch']}, K={key['K']}, task {key['task']}, seed {key['seed']}, {key['device']} {key['dtype']}"


def _slug(key: dict) -> str:
    return "-".join(str(value) for value in key.values())


def _notes(kind: str, frame: pd.DataFrame, row_key: str) -> list[str]:
    notes = []
    if kind == "variance":
        done = frame[frame["reference"] != ""]
        for reference, part in done.groupby("reference", sort=False):
            sizes = sorted(part["n"].unique())
            if reference == "exact":
                notes.append(f"bias against the exact gradient (enumeration) at n = {_sizes_text(sizes)}")
            else:
                samples = part["reference_samples"].iloc[0]
                notes.append(
                    f"bias against a {reference} Monte Carlo reference ({samples} samples, its standard error "
                    f"included in the interval) at n = {_sizes_text(sizes)}"
                )
    for status in ("biased", "skipped", "failed"):
        part = frame[frame["status"] == status]
        for (name, reason), cells in part.groupby([row_key, "reason"], sort=False):
            notes.append(f"{status}: {name} at n = {_sizes_text(sorted(cells['n'].unique()))}: {reason}")
    return notes


def build_tables(frame: pd.DataFrame, kind: str) -> list[Table]:
    """One :class:`Table` per group of ``frame`` (a saved ``variance`` or ``speed`` frame)."""
    metrics = VARIANCE_METRICS if kind == "variance" else SPEED_METRICS
    legend = VARIANCE_LEGEND if kind == "variance" else SPEED_LEGEND
    row_key, keys = ROW_KEY[kind], list(GROUP_KEYS[kind])
    tables = []
    for values, group in frame.groupby(keys, sort=False):
        key = dict(zip(keys, values))
        sizes = sorted(int(n) for n in group["n"].unique())
        names = list(dict.fromkeys(group[row_key]))
        rows = []
        for name in names:
            cells = []
            for n in sizes:
                match = group[(group[row_key] == name) & (group["n"] == n)]
                for metric in metrics:
                    if match.empty:
                        cells.append(Cell(math.nan, math.nan, math.nan, "missing"))
                        continue
                    record = match.iloc[0]
                    if record["status"] not in MEASURED:
                        cells.append(Cell(math.nan, math.nan, math.nan, record["status"]))
                        continue
                    value, lo, hi = (float(record[c]) * metric.scale for c in (metric.column, metric.lo, metric.hi))
                    shaky = metric.check_stability and unstable(value, lo, hi)
                    # The flag belongs to the bias; the other metrics of the row stay plain.
                    status = record["status"] if metric.column == "bias" else "ok"
                    flag = record.get("unbiased", None)
                    unbiased = None if flag is None or pd.isna(flag) else bool(flag)
                    cells.append(Cell(value, lo, hi, status, unstable=shaky, bracket=metric.bracket,
                                      unbiased=unbiased))
            rows.append((name, cells))
        pct = _percent(group)
        table = Table(
            _title(kind, key, group), row_key, sizes, metrics, rows, legend.format(pct=pct), _notes(kind, group, row_key)
        )
        table.slug = _slug(key)
        _mark_best(table)
        table.warnings = [
            f"{table.title}: {record[row_key]} at n={record['n']} is flagged biased: {record['reason']}"
            for _, record in group[group["status"] == "biased"].iterrows()
        ] + [
            f"{table.title}: {metric.label} of {name} at n={n} is unstable ({pct} interval wider than the value)"
            for name, cells in table.rows
            for (n, metric), cell in zip(_columns(table), cells)
            if cell.unstable and not metric.timing
        ]
        table.unstable_timings = list(dict.fromkeys(
            f"{name} at n={n}"
            for name, cells in table.rows
            for (n, metric), cell in zip(_columns(table), cells)
            if cell.unstable and metric.timing
        ))
        tables.append(table)
    return tables


def timing_note(tables: list[Table], limit: int = 6) -> str | None:
    """One line for every unstable timing of ``tables`` (None when there is none)."""
    cells = [f"{table.title.split(':')[0]} {cell}" for table in tables for cell in table.unstable_timings]
    if not cells:
        return None
    shown = ", ".join(cells[:limit]) + (f" and {len(cells) - limit} more" if len(cells) > limit else "")
    return (f"timings unstable in {len(cells)} cell(s) ({shown}; marked †): their interval is wider than the "
            "median, as when other processes share the CPU; time on an idle machine with --threads 1 and "
            "more repeats to firm them up")


def _columns(table: Table) -> list[tuple[int, Metric]]:
    return [(n, metric) for n in table.sizes for metric in table.metrics]


def _mark_best(table: Table) -> None:
    """Bold the lowest (or highest) measured, unflagged value of each column.

    Where a metric is ``best_among_biased`` (the bias) only estimators registered as biased
    compete, and only when there are two or more: an unbiased estimator's bias is noise
    around 0, so its smallest value is luck, and one candidate is best of nothing.
    """
    for index, (_, metric) in enumerate(_columns(table)):
        def eligible(cell: Cell) -> bool:
            if cell.status != "ok" or math.isnan(cell.value):  # not flagged, measured
                return False
            return not metric.best_among_biased or cell.unbiased is False

        values = [cells[index].value for _, cells in table.rows if eligible(cells[index])]
        if not values or (metric.best_among_biased and len(values) < 2):
            continue
        best = min(values) if metric.better == "min" else max(values)
        for _, cells in table.rows:
            cell = cells[index]
            if eligible(cell) and cell.value == best:
                cells[index] = cell._replace(bold=True)


def _cell_markdown(cell: Cell) -> str:
    if cell.status not in MEASURED:
        return cell.status
    text = (bracketed if cell.bracket else with_interval)(cell.value, cell.lo, cell.hi)
    text = f"**{text}**" if cell.bold else text
    text = text + " †" if cell.unstable else text
    return text + " BIASED" if cell.status == "biased" else text


def markdown(table: Table) -> str:
    """The table as GitHub Markdown: a heading, the grid, the legend and the notes."""
    header = [table.row_label] + [f"n={n} {metric.label}" for n, metric in _columns(table)]
    lines = [f"### {table.title}", "", "| " + " | ".join(header) + " |"]
    lines.append("| --- |" + " ---: |" * (len(header) - 1))
    for name, cells in table.rows:
        lines.append("| " + " | ".join([name] + [_cell_markdown(cell) for cell in cells]) + " |")
    lines += ["", table.legend]
    if table.notes:
        lines += [""] + [f"- {note}" for note in table.notes]
    return "\n".join(lines) + "\n"


def _cell_latex(cell: Cell) -> str:
    if cell.status not in MEASURED:
        return f"\\textit{{{cell.status}}}"
    text = (latex_bracketed if cell.bracket else latex_with_interval)(cell.value, cell.lo, cell.hi)
    text = f"\\mathbf{{{text}}}" if cell.bold else text
    text = f"${text}$" + ("$^\\dagger$" if cell.unstable else "")
    return text + " \\textbf{BIASED}" if cell.status == "biased" else text


#: the most numeric columns one LaTeX tabular gets (more do not fit a page in \small)
LATEX_MAX_COLUMNS = 6


def _latex_parts(table: Table) -> list[tuple[str, list[int], list[int]]]:
    """(part name, sizes, metric indices) of each LaTeX tabular: metrics in pairs
    (statistics, then cost), sizes in groups, each at most ``LATEX_MAX_COLUMNS`` wide."""
    metric_groups = [list(range(i, min(i + 2, len(table.metrics)))) for i in range(0, len(table.metrics), 2)]
    parts = []
    for group in metric_groups:
        per_table = max(1, LATEX_MAX_COLUMNS // len(group))
        for start in range(0, len(table.sizes), per_table):
            sizes = table.sizes[start:start + per_table]
            what = ", ".join(table.metrics[i].label for i in group) if len(metric_groups) > 1 else ""
            where = f"n = {_sizes_text(sizes)}" if len(sizes) < len(table.sizes) else ""
            parts.append(("; ".join(x for x in (what, where) if x), sizes, group))
    return parts


def latex(table: Table) -> str:
    """The table as booktabs ``table`` environments (a ``% requires \\usepackage{booktabs}``
    line on top), split into parts of at most :data:`LATEX_MAX_COLUMNS` numeric columns."""
    parts = _latex_parts(table)
    lines = ["% requires \\usepackage{booktabs}"]
    for number, (name, sizes, group) in enumerate(parts, 1):
        per = len(group)
        spec = "l" + " ".join("r" * per for _ in sizes)
        group_head = " & ".join(f"\\multicolumn{{{per}}}{{c}}{{$n={n}$}}" for n in sizes)
        rules = " ".join(f"\\cmidrule(lr){{{2 + i * per}-{1 + (i + 1) * per}}}" for i in range(len(sizes)))
        metric_head = " & ".join(table.metrics[i].latex for _ in sizes for i in group)
        caption = table.title + (f" ({name})" if name else "")
        label = table.slug + (f"-{number}" if len(parts) > 1 else "")
        lines += [
            "\\begin{table}[t]",
            "\\centering",
            "\\small",
            f"\\caption{{{latex_escape(caption)}}}",
            f"\\label{{tab:rgbench-{latex_escape(label)}}}",
            f"\\begin{{tabular}}{{{spec}}}",
            "\\toprule",
            f" & {group_head} \\\\",
            rules,
            f"{latex_escape(table.row_label)} & {metric_head} \\\\",
            "\\midrule",
        ]
        columns = [table.sizes.index(n) * len(table.metrics) + i for n in sizes for i in group]
        for row, cells in table.rows:
            chosen = [cells[k] for k in columns]
            lines.append(" & ".join([latex_escape(row)] + [_cell_latex(cell) for cell in chosen]) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}"]
        if number == len(parts):  # the legend and notes once, under the last part
            lines += ["", "\\footnotesize " + latex_escape(table.legend)]
            for note in table.notes:
                lines.append("\\par " + latex_escape(note))
        lines.append("\\end{table}")
    return "\n".join(lines) + "\n"
