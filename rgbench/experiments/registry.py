"""The experiment registry: one :class:`Experiment` record per paper experiment.

Each experiment folder (``toy/``, ``listops/``, ...) builds its record in its
``__init__.py`` and calls :func:`register`; ``rgbench.experiments`` imports the folders, so
adding an experiment is one folder and one import line there. The CLI reads everything it
needs from the record:

* ``rgbench train NAME`` calls ``experiment.train`` (options the experiment does not list in
  ``train_options`` are refused);
* ``rgbench table --paper N`` (and later ``rgbench figure --paper N``) finds the experiment
  whose ``artefact`` is Table N (Figure N) and calls ``experiment.paper_artefact``.

Entry signatures (keyword arguments; each returns the text the CLI prints):

    train(*, estimators, scale, seed, out, steps, device, progress, resume, **extra) -> str
    paper_artefact(*, estimators, scale, seeds, out, steps, device, cache, progress, resume, executor) -> str

``extra`` holds the experiment's own options by name (those of :data:`TRAIN_OPTIONS` it lists
in ``train_options``). ``executor`` (None: the local one) runs the artefact's training runs:
build the grid with :func:`rgbench.experiments.sweep.run_sweep`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

from rgbench.experiments.scales import Scale
from rgbench.registry import Registry

#: the experiment-specific options ``rgbench train`` knows; an experiment lists the ones it reads
#: (structures, learning rate, dataset cache, encoder architecture, subset size k, training
#: mode, number of token types)
TRAIN_OPTIONS = ("dists", "lr", "cache", "encoder", "k", "mode", "types")


@dataclass(frozen=True)
class Artefact:
    """A numbered table or figure of the paper: ``Artefact("table", 3)`` is Table 3."""

    kind: Literal["table", "figure"]
    number: int

    def __str__(self) -> str:
        return f"{self.kind.capitalize()} {self.number}"

    @property
    def slug(self) -> str:
        """``table3``: the default output folder and the files' prefix."""
        return f"{self.kind}{self.number}"


@dataclass(frozen=True)
class Experiment:
    name: str
    summary: str  # one line: what it trains, which paper artefact it reproduces
    scales: Mapping[Scale, Any]  # the configuration of each scale
    train: Callable[..., str]
    train_estimators: tuple[str, ...]  # ``rgbench train NAME``'s default --estimators
    train_options: frozenset[str] = frozenset()  # of TRAIN_OPTIONS
    structures: tuple[str, ...] = ()  # the --dists it accepts (with "dists" in train_options)
    artefact: Artefact | None = None  # None: not a numbered table or figure of the paper
    paper_artefact: Callable[..., str] | None = None
    artefact_estimators: tuple[str, ...] = ()  # ``rgbench table --paper N``'s default --estimators
    artefact_files: tuple[str, ...] = field(default=())  # what paper_artefact writes, for the help

    def __post_init__(self):
        unknown = set(self.train_options) - set(TRAIN_OPTIONS)
        if unknown:
            raise ValueError(f"experiment {self.name!r}: unknown train options {sorted(unknown)}; known: {TRAIN_OPTIONS}")
        if (self.artefact is None) != (self.paper_artefact is None):
            raise ValueError(f"experiment {self.name!r}: an artefact needs its paper_artefact entry and vice versa")


EXPERIMENTS: Registry[Experiment] = Registry("experiment")


def register(experiment: Experiment) -> Experiment:
    """Add ``experiment`` under its name; a second experiment claiming the same artefact is refused."""
    if experiment.artefact is not None and find_artefact(experiment.artefact.kind, experiment.artefact.number):
        raise ValueError(f"{experiment.artefact} is already registered")
    return EXPERIMENTS.register(experiment.name)(experiment)


def find_artefact(kind: str, number: int) -> Experiment | None:
    """The experiment that reproduces Table/Figure ``number``, else None."""
    for name in EXPERIMENTS:
        experiment = EXPERIMENTS.get(name)
        if experiment.artefact == Artefact(kind, number):
            return experiment
    return None


def artefacts(kind: str | None = None) -> list[tuple[Artefact, Experiment]]:
    """The registered (artefact, experiment) pairs, tables then figures, by number."""
    pairs = [(EXPERIMENTS.get(name).artefact, EXPERIMENTS.get(name)) for name in EXPERIMENTS]
    pairs = [(a, e) for a, e in pairs if a is not None and (kind is None or a.kind == kind)]
    return sorted(pairs, key=lambda pair: (pair[0].kind != "table", pair[0].number))


def describe_artefacts(kind: str | None = None) -> str:
    """'Table 3 (listops)' -- the registered artefacts in one line, for error messages."""
    return ", ".join(f"{artefact} ({experiment.name})" for artefact, experiment in artefacts(kind)) or "none"
