"""Reports rendered from saved results: tables (Markdown, LaTeX), figures, warnings.

Most tests use a hand-written results frame whose best values, skipped cells and unstable
intervals are known; one renders a real (tiny) run.
"""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest

from rgbench.bench import Results, SpeedGrid, VarianceGrid, run_speed, run_variance
from rgbench.bench.results import SPEED_SCHEMA, VARIANCE_SCHEMA
from rgbench.reports import build_tables, latex, markdown, render
from rgbench.reports.format import bracketed, latex_escape, latex_number, number, with_interval

METADATA = {"command": "rgbench variance --dist cle", "date": "2024-01-01T00:00:00+00:00", "seed": 0,
            "notes": ["cle: a note"]}


def _row(estimator, n, var, **overrides):
    """A full-schema variance row: total variance ``var`` with a tight interval."""
    row = {column: math.nan for column, kind in VARIANCE_SCHEMA.items() if kind == "float"}
    row.update(
        dist="cle", n=n, task="quadratic", estimator=estimator, K=4, device="cpu", dtype="float64", seed=0,
        cell_seed=1, status="ok", reason="", unbiased=True, replicates=100, level=0.95, reference="exact",
        reference_samples=0, reference_norm=1.0, objective_mean=2.0, num_coords=n * n, num_free_coords=n * n - n,
        num_tests=3, num_fixed_biased=0, bias=0.1, bias_lo=0.0, bias_hi=0.3, total_var=var, total_var_lo=0.9 * var,
        total_var_hi=1.1 * var, coord_var=var / 4, coord_var_lo=0.2 * var, coord_var_hi=0.3 * var, snr=1.0,
        snr_lo=0.9, snr_hi=1.1, cosine=0.5, cosine_lo=0.4, cosine_hi=0.6, time_median_s=0.002, time_q25_s=0.0019,
        time_q75_s=0.0021, time_lo_s=0.0018, time_hi_s=0.0022, work_var=var * 0.002, work_var_lo=var * 0.0015,
        work_var_hi=var * 0.0025, warmup_s=0.0, reference_s=0.1,
    )
    row.update(overrides)
    return row


def _frame():
    rows = []
    for n in (3, 4):
        rows.append(_row("e-reinforce", n, 10.0 * n))
        rows.append(_row("t-reinforce", n, 2.0 * n, time_median_s=0.001, time_lo_s=0.0009, time_hi_s=0.0011))
        # Unstable: the interval [0.5, 30] is wider than the value 3.
        rows.append(_row("relax", n, 3.0 * n, total_var_lo=0.5, total_var_hi=30.0))
        rows.append(_row("sst", n, math.nan, status="skipped", reason="the objective is not defined on relaxed input"))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Saved hand-written results, rendered once (figures are the slow part)."""
    folder = tmp_path_factory.mktemp("saved")
    Results("variance", _frame(), METADATA).save(folder)
    return folder, render(folder)


def test_number_formats():
    assert number(0.000123456) == "0.000123"
    assert number(123456.0) == "1.23e+05"
    assert number(math.inf) == "inf" and number(math.nan) == "-"
    assert with_interval(1.0, 0.8, 1.4) == "1 ± 0.3"
    assert bracketed(0.05, 0.0, 0.21) == "0.05 [0, 0.21]"
    assert latex_number(1.5e-5) == "1.5 \\times 10^{-5}"
    assert latex_escape("t_loo & 50%") == "t\\_loo \\& 50\\%"


def test_table_layout_best_and_skipped():
    (table,) = build_tables(_frame(), "variance")
    text = markdown(table)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| estimator"))
    assert header.count("|") == 1 + 1 + 2 * 4  # estimator + 2 sizes x 4 metrics
    assert "n=3 bias" in header and "n=4 var × s" in header
    rows = {line.split("|")[1].strip(): line for line in lines[4:] if line.startswith("| ")}
    assert list(rows) == ["e-reinforce", "t-reinforce", "relax", "sst"]
    # Lowest variance and fastest time are bold; skipped cells say so; the reason is a note.
    assert "**6 ± 0.6**" in rows["t-reinforce"] and "**8 ± 0.8**" in rows["t-reinforce"]
    assert "**1 ± 0.1**" in rows["t-reinforce"]  # 1 ms
    assert "**" not in rows["e-reinforce"].split("|")[3]  # n=3 variance
    assert rows["sst"].count("skipped") == 8
    assert "- skipped: sst at n = 3, 4: the objective is not defined on relaxed input" in text
    assert "- bias against the exact gradient (enumeration) at n = 3, 4" in text
    # Bias is shown with its (asymmetric) interval.
    assert "0.1 [0, 0.3]" in rows["e-reinforce"]


def test_unstable_values_are_marked_and_warned():
    (table,) = build_tables(_frame(), "variance")
    relax = next(line for line in markdown(table).splitlines() if line.startswith("| relax"))
    assert relax.count("†") == 2  # its variance at n = 3 and n = 4
    assert any("variance of relax at n=3 is unstable" in warning for warning in table.warnings)
    assert not any("t-reinforce" in warning for warning in table.warnings)


def test_latex_table_is_well_formed():
    (table,) = build_tables(_frame(), "variance")
    text = latex(table)
    # Changed: the table used to be one tabular of 2 sizes x 4 metrics with no word of its
    # package; now it says it needs booktabs and comes as two parts (bias and variance; ms
    # and var x s) of at most 6 numeric columns, each a well-formed table.
    assert text.startswith("% requires \\usepackage{booktabs}\n\\begin{table}")
    assert text.rstrip().endswith("\\end{table}")
    parts = text.split("\\begin{table}")[1:]
    assert len(parts) == 2 and all(part.rstrip().endswith("\\end{table}") for part in parts)
    for part in parts:
        assert "\\begin{tabular}{lrr rr}" in part
        assert "\\multicolumn{2}{c}{$n=3$}" in part and "\\cmidrule(lr){4-5}" in part
        body = part.split("\\midrule")[1].split("\\bottomrule")[0].strip().splitlines()
        assert len(body) == 4
        for line in body:
            assert line.endswith("\\\\") and line.count("&") == 4
    assert "bias & var. & bias & var." in parts[0] and "ms & var.$\\times$s" in parts[1]
    assert "$\\mathbf{6 \\pm 0.6}$" in text
    assert "\\textit{skipped}" in text
    assert text.count("$") % 2 == 0  # math mode always closed


def test_latex_parts_stay_narrow():
    rows = [_row(name, n, float(n)) for n in (3, 4, 5, 6) for name in ("t-reinforce", "sst")]
    (table,) = build_tables(pd.DataFrame(rows), "variance")
    text = latex(table)
    specs = re.findall(r"\\begin\{tabular\}\{([lr ]+)\}", text)
    assert len(specs) == 4  # 4 sizes: (bias, variance) and (ms, var x s), each for n = 3-5 and n = 6
    assert all(spec.count("r") <= 6 for spec in specs)
    assert "n = 6" in text and text.count("\\footnotesize") == 1


def test_bias_is_bold_only_among_biased_estimators():
    rows = []
    for n in (3, 4):
        rows.append(_row("t-reinforce", n, 1.0, bias=0.01))  # unbiased: its small bias is noise
        rows.append(_row("sst", n, 2.0, bias=0.5, unbiased=False))
        rows.append(_row("gumbel", n, 3.0, bias=0.3, unbiased=False))
    (table,) = build_tables(pd.DataFrame(rows), "variance")
    lines = {line.split("|")[1].strip(): line for line in markdown(table).splitlines() if line.startswith("| ")}
    assert "**0.3 [0, 0.3]**" in lines["gumbel"] and "**0.01" not in lines["t-reinforce"]
    assert "**0.5" not in lines["sst"] and "**1 ± 0.1**" in lines["t-reinforce"]  # variance still bold
    assert "never bold" in table.legend
    # A single biased estimator is best of nothing: no bold bias at all.
    (table,) = build_tables(pd.DataFrame([r for r in rows if r["estimator"] != "gumbel"]), "variance")
    text = markdown(table)
    assert "**0.5" not in text and "**0.01" not in text


def test_render_writes_everything_and_is_reproducible(saved):
    folder, rendered = saved
    names = {path.relative_to(folder).as_posix() for path in rendered.paths}
    for name in ("tables.md", "tables.tex", "report.md"):
        assert name in names
    for figure in ("variance", "time", "work"):
        for extension in ("png", "pdf"):
            path = folder / "figures" / f"{figure}.{extension}"
            assert path.is_file() and path.stat().st_size > 1000
    first = {name: (folder / name).read_bytes() for name in ("tables.md", "tables.tex", "report.md")}
    render(folder, figures=False)  # the tables and the report do not depend on drawing
    assert first == {name: (folder / name).read_bytes() for name in ("tables.md", "tables.tex", "report.md")}
    report = first["report.md"].decode()
    assert "`rgbench variance --dist cle`" in report and "> Note: cle: a note" in report
    assert "## Warnings" in report and "![variance](figures/variance.png)" in report
    assert any(w.startswith("figure variance: relax on cle at n=3 is unstable") for w in rendered.warnings)


def test_render_without_results_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no saved results"):
        render(tmp_path)


def test_render_a_real_run(tmp_path):
    grid = VarianceGrid(dists=("topk",), sizes=(3, 4), estimators=("exact", "t-reinforce", "sst"), replicates=30,
                        timing_repeats=1, bootstrap_resamples=50)
    run_variance(grid).save(tmp_path)
    render(tmp_path)
    text = (tmp_path / "tables.md").read_text()
    assert "### topk: task quadratic, K=4, 30 replicates, seed 0, cpu float64" in text
    # Changed: the exact estimator's bias was bold as "best", but it is unbiased (its bias is
    # rounding noise): only its zero variance is bold now.
    assert re.search(r"\| exact \| [^ *]+ \[0, [^\]]+\] \| \*\*0 ± 0\*\*", text)
    # The exact estimator's zero variance cannot sit on a log axis: the caption says so.
    assert (tmp_path / "figures" / "variance.png").is_file()


def test_render_speed_results(tmp_path):
    grid = SpeedGrid(dists=("topk",), sizes=(4, 6), batch=2, estimators=("t-reinforce",), repeats=1)
    run_speed(grid).save(tmp_path)
    rendered = render(tmp_path)
    text = (tmp_path / "speed_tables.md").read_text()
    assert "| operation | n=4 ms | n=6 ms |" in text
    for operation in ("sample", "trace_log_prob", "noise_given_trace", "estimate:t-reinforce"):
        assert f"| {operation} |" in text
    assert (tmp_path / "figures" / "speed.pdf").is_file()
    assert any(path.name == "speed_tables.tex" for path in rendered.paths)
    assert list(pd.read_csv(tmp_path / "speed.csv").columns) == list(SPEED_SCHEMA)


def test_one_legend_lists_every_panel_level():
    from rgbench.reports.figures import VARIANCE_FIGURES, _draw

    rows = [_row(name, n, 1.0 + n, dist=dist) for dist, names in (("cle", ("t-reinforce", "relax")),
                                                                   ("topk", ("sst",)))
            for name in names for n in (3, 4)]
    rows += [_row("sst", n, 2.0, dist="topk", K=8) for n in (3, 4)]
    figure = _draw(VARIANCE_FIGURES[0], pd.DataFrame(rows), "estimator", "title")
    legends = [ax.get_legend() for ax in figure.axes if ax.get_legend() is not None]
    assert len(legends) == 1 and legends[0].axes is figure.axes[-1]  # beside the last panel only
    labels = [text.get_text() for text in legends[0].get_texts()]
    assert labels == ["t-reinforce", "relax", "sst", "K", "4", "8"]  # cle's levels too, then the K markers


def test_log_x_ticks_are_the_sizes():
    from rgbench.reports.figures import SPEED_FIGURES, _draw

    rows = [dict(dist="topk", n=n, batch=4, operation="sample", K=4, task="quadratic", device="cpu",
                 dtype="float32", seed=0, status="ok", reason="", repeats=3, time_median_s=1e-3 * n,
                 time_lo_s=0.9e-3 * n, time_hi_s=1.1e-3 * n) for n in (5, 10, 20, 50)]
    figure = _draw(SPEED_FIGURES[0], pd.DataFrame(rows), "operation", "title")
    ax = figure.axes[0]
    figure.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["5", "10", "20", "50"]
    assert not any(t.get_text() for t in ax.get_xticklabels(minor=True))
