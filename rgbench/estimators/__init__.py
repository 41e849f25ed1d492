"""Gradient estimators of grad_logits E[L(X)] behind one interface (see ``base.Estimator``)."""

from rgbench.estimators.base import Estimator, Objective, accepts_relaxed
from rgbench.estimators.catalog import ESTIMATORS


def get(name: str, num_samples: int = 1, **options) -> Estimator:
    """An estimator instance by registry name; ``ValueError`` listing the valid names."""
    return ESTIMATORS.get(name)(num_samples=num_samples, **options)


def names() -> list[str]:
    return ESTIMATORS.names()


__all__ = ["Estimator", "Objective", "accepts_relaxed", "get", "names"]
