"""The reference gradient a cell's bias is measured against.

Exact when the instance is small enough to enumerate (n <= the structure's
``max_enumeration_size``): ``rgbench.estimators.exact_gradient`` sums over every trace.
Otherwise a Monte Carlo reference: the mean of M independent t-loo estimates with K_ref
samples each (unbiased), with per-coordinate standard error sd / sqrt(M); the bias interval
then widens by it (see ``statistics``). Cost: the enumeration (super-exponential in n), or
M * K_ref samples.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import torch

from rgbench.distributions.base import StructuredDistribution

REFERENCE_ESTIMATOR = "t-loo"


class Reference(NamedTuple):
    grad: torch.Tensor  # shape of the logits
    se: torch.Tensor  # per-coordinate standard error; zeros when exact
    kind: str  # "exact" or REFERENCE_ESTIMATOR
    value: float  # E[L(X)] when exact, else NaN
    samples: int  # objective evaluations spent; 0 when exact
    seconds: float
    #: max |L(X)| over the support when exact (enumerated), else 0 (unknown)
    objective_scale: float = 0.0


def is_enumerable(dist: StructuredDistribution) -> bool:
    return dist.n <= type(dist).max_enumeration_size


def compute_reference(
    dist: StructuredDistribution,
    objective,
    *,
    samples: int = 1000,
    replicates: int = 64,
    generator: torch.Generator | None = None,
) -> Reference:
    """The exact gradient when ``dist`` is enumerable, else the t-loo Monte Carlo reference
    from ``replicates`` estimates of ``samples`` samples each."""
    from rgbench import estimators

    start = time.perf_counter()
    if is_enumerable(dist):
        value, grad = estimators.exact_gradient(dist, objective)
        grad = grad.detach()
        with torch.no_grad():
            support = dist.indicator(dist.enumerate_traces().x) if dist.batch_shape == torch.Size() else None
            scale = float(objective(support).abs().max()) if support is not None else 0.0
        return Reference(grad, torch.zeros_like(grad), "exact", float(value), 0, time.perf_counter() - start, scale)
    if replicates < 2:
        raise ValueError(f"compute_reference: replicates must be >= 2 for a standard error, got {replicates}")
    estimator = estimators.get(REFERENCE_ESTIMATOR, num_samples=samples)
    draws = estimator.estimate(dist, objective, num_replicates=replicates, generator=generator).detach()
    se = draws.std(0, unbiased=True) / replicates**0.5
    return Reference(
        draws.mean(0), se, REFERENCE_ESTIMATOR, float("nan"), samples * replicates, time.perf_counter() - start
    )
