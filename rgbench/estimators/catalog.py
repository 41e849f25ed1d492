"""The estimator registry."""

from rgbench.registry import Registry

ESTIMATORS = Registry("estimator")
register = ESTIMATORS.register
