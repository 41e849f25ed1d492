"""Reports: Markdown and LaTeX tables and seaborn figures from saved harness results.

``render(out_dir)`` re-renders everything from the saved CSV/JSON; ``build_tables`` /
``markdown`` / ``latex`` and ``write_figures`` are the pieces.
"""

from rgbench.reports.figures import figure_warnings, planned_figures, write_figures
from rgbench.reports.render import Rendered, render
from rgbench.reports.tables import Table, build_tables, latex, markdown

__all__ = [
    "Rendered",
    "Table",
    "build_tables",
    "figure_warnings",
    "latex",
    "markdown",
    "planned_figures",
    "render",
    "write_figures",
]
