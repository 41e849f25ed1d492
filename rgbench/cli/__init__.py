"""The ``rgbench`` command line: one module per command group, shared option parsing in
:mod:`rgbench.cli.options`; ``app`` is the console script's entry point."""

from rgbench.cli.bench import app

__all__ = ["app"]
