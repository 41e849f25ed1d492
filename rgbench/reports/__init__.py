"""Reports: Markdown and LaTeX tables and seaborn figures from saved harness results.

``render(out_dir)`` re-renders everything from the saved CSV/JSON; ``build_tables`` /
``markdown`` / ``latex`` and ``write_figures`` are the pieces; ``console`` has the tables a
run prints. The figure functions load seaborn and matplotlib on first use only, so the
command line starts without them.
"""

from importlib import import_module

from rgbench.reports.render import Rendered, render
from rgbench.reports.tables import Table, build_tables, latex, markdown

_FIGURES = ("figure_warnings", "planned_figures", "write_figures")

__all__ = sorted(["Rendered", "Table", "build_tables", "latex", "markdown", "render", *_FIGURES])


def __getattr__(name: str):
    if name in _FIGURES:
        return getattr(import_module("rgbench.reports.figures"), name)
    raise AttributeError(f"module 'rgbench.reports' has no attribute {name!r}")
