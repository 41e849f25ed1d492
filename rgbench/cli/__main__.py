"""``python -m rgbench.cli``: the same as the ``rgbench`` console script."""

from rgbench.cli import app

app()
