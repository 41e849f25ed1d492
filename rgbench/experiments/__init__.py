"""The paper's training experiments: one folder per experiment, each registered in
:data:`rgbench.experiments.registry.EXPERIMENTS` when imported here.

To add an experiment: a folder with its data, model, objective, metrics, scales and paper
table or figure, whose ``__init__.py`` registers an ``Experiment`` record
(:mod:`rgbench.experiments.registry`), and its name in the import line below.
"""

from rgbench.experiments import listops, toy  # noqa: F401  (each folder registers its experiment)
from rgbench.experiments.registry import EXPERIMENTS, Artefact, Experiment, artefacts, find_artefact

__all__ = ["EXPERIMENTS", "Artefact", "Experiment", "artefacts", "find_artefact"]
