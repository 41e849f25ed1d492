"""Gradient estimators of grad_logits E[L(X)] behind one interface (see ``base.Estimator``).

Registered names: ``e-reinforce``, ``t-reinforce``, ``x-reinforce``, ``e-loo`` (alias
``e-reinforce+``), ``t-loo`` (alias ``t-reinforce+``), ``relax``, ``sst``, ``sst-st`` and
``exact``; :func:`exact_gradient` gives the ground truth by enumeration.
"""

# Importing each estimator module registers it.
from rgbench.estimators import exact, loo, reinforce, relax, sst  # noqa: F401
from rgbench.estimators.base import Estimator, Objective, accepts_relaxed
from rgbench.estimators.catalog import ESTIMATORS
from rgbench.estimators.exact import exact_expectation, exact_gradient


def get(name: str, num_samples: int = 1, **options) -> Estimator:
    """An estimator instance by registry name; ``ValueError`` listing the valid names."""
    return ESTIMATORS.get(name)(num_samples=num_samples, **options)


def names() -> list[str]:
    return ESTIMATORS.names()


__all__ = [
    "Estimator",
    "Objective",
    "accepts_relaxed",
    "exact_expectation",
    "exact_gradient",
    "get",
    "names",
]
