"""The one knob of every paper experiment: ``--scale smoke|quick|paper``.

* ``smoke``: seconds, for CI: a few steps on tiny data; numbers mean nothing.
* ``quick``: a CPU budget (each experiment's ``scales.py`` says what it costs).
* ``paper``: the paper's sizes, meant for a GPU.
"""

from __future__ import annotations

from enum import Enum


class Scale(str, Enum):
    smoke = "smoke"
    quick = "quick"
    paper = "paper"
