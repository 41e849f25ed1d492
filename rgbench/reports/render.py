"""Render saved results into tables, figures and a Markdown report, without recomputing.

For a result directory holding ``variance.csv``/``.json`` and/or ``speed.csv``/``.json``,
:func:`render` writes

* ``tables.md`` / ``tables.tex`` (variance) and ``speed_tables.md`` / ``speed_tables.tex``,
* ``figures/*.png`` and ``figures/*.pdf``,
* ``report.md``: the run's metadata, notes, warnings (unstable timings summed up in one
  line), tables and figure links.

Every file is written atomically (``store``); a folder whose run was interrupted (progress
without final results) is refused with the command that continues it.

Everything is a function of the saved files, so rendering twice gives the same tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from rgbench.bench import store
from rgbench.bench.progress import incomplete_reason
from rgbench.bench.results import FORMAT, Results, saved_kinds
from rgbench.reports.tables import build_tables, latex, markdown, timing_note

PREFIX = {"variance": "", "speed": "speed_"}


class Rendered(NamedTuple):
    paths: list[Path]
    warnings: list[str]


def _metadata_lines(results: Results) -> list[str]:
    metadata = results.metadata
    fields = [
        ("command", f"`{metadata.get('command', '')}`"),
        ("date (UTC)", metadata.get("date")),
        ("rgbench / torch / Python", f"{metadata.get('rgbench_version')} / {metadata.get('torch_version')} / "
                                     f"{metadata.get('python_version')}"),
        ("device", f"{metadata.get('device')} ({metadata.get('device_name')}), {metadata.get('threads')} threads"),
        ("seed", metadata.get("seed")),
    ]
    if results.format != FORMAT:
        fields.append(("results format", f"{results.format} (read by a {FORMAT} reader)"))
    if results.missing_columns:
        fields.append(("columns not in the saved files (shown as missing)", ", ".join(results.missing_columns)))
    if results.extra_columns:
        fields.append(("columns this rgbench does not know (kept, not shown)", ", ".join(results.extra_columns)))
    return [f"- {name}: {value}" for name, value in fields]


def render(out_dir: str | Path, figures: bool = True) -> Rendered:
    """Write the tables, figures (unless ``figures=False``) and report of the results saved
    in ``out_dir``."""
    # seaborn and matplotlib load slowly: only rendering pays for them, not importing
    from rgbench.reports.figures import figure_warnings, planned_figures, write_figures

    out = Path(out_dir)
    reason = incomplete_reason(out)
    if reason is not None:
        raise store.OutputError(reason)
    kinds = saved_kinds(out)
    if not kinds:
        raise FileNotFoundError(f"no saved results in {out} (expected variance.csv or speed.csv with its .json)")
    paths, warnings, report = [], [], []
    for kind in kinds:
        results = Results.load(out, kind)
        tables = build_tables(results.frame, kind)
        md_path, tex_path = out / f"{PREFIX[kind]}tables.md", out / f"{PREFIX[kind]}tables.tex"
        store.write_text(md_path, "\n".join(markdown(table) for table in tables))
        store.write_text(tex_path, "\n".join(latex(table) for table in tables))
        figure_paths = write_figures(results.frame, kind, out) if figures else []
        kind_warnings = [w for table in tables for w in table.warnings] + figure_warnings(results.frame, kind)
        note = timing_note(tables)  # one line for all unstable timings, not one per cell
        kind_warnings += [note] if note else []
        paths += [md_path, tex_path, *figure_paths]
        warnings += kind_warnings

        report += [f"# rgbench {kind} results", ""] + _metadata_lines(results) + [""]
        for note in results.metadata.get("notes", []):
            report.append(f"> Note: {note}")
        if kind_warnings:
            report += ["", "## Warnings", ""] + [f"- {warning}" for warning in kind_warnings]
        report += ["", "## Tables", ""] + [markdown(table) for table in tables]
        report += ["## Figures", ""]
        report += [f"![{stem}](figures/{stem}.png)" for stem in planned_figures(results.frame, kind)]
        report.append("")
    report_path = out / "report.md"
    store.write_text(report_path, "\n".join(report))
    return Rendered([*paths, report_path], warnings)
