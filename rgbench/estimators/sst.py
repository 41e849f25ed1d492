"""Stochastic softmax tricks (Paulus et al. 2020): relaxed and straight-through.

With Gumbel-perturbed logits G = logits + Gumbel = -log E (E from ``sample_noise``, so G is
reparameterised in the logits), the hard sample is the max-weight structure under G and the
relaxed sample is X_tau = ``dist.relax(G / tau)``, the structure's regularised argmax in
indicator form (top-k marginals, matrix-tree marginals, Sinkhorn; see each distribution's
``relax``). Structures with ``has_relaxation = False`` (binary trees) are unsupported.

``sst``:    g = (1/K) sum_k grad L(X_tau,k)                       (relaxed forward)
``sst-st``: forward L(H_k), H_k the hard indicator of solve(E_k), backward through
            X_tau,k: the input is H + X_tau - X_tau.detach()       (straight-through)

Both are biased (``unbiased = False``) and need an objective defined on relaxed input
(``accepts_relaxed``). Option ``temperature`` (tau > 0, default 1.0). Cost: K samples, K
objective evaluations with a backward pass, plus the relaxation (O(n^3) for the matrix-tree
relaxations, ``iterations`` * O(n^2) for Sinkhorn, O(n k) for top-k).
"""

from __future__ import annotations

from typing import Any

import torch

from rgbench.distributions.base import StructuredDistribution
from rgbench.estimators.base import Objective, accepts_relaxed
from rgbench.estimators.catalog import register
from rgbench.estimators.common import SurrogateEstimator, check_positive_number, evaluate, perturbed_logits


def check_relaxable(dist: StructuredDistribution, who: str) -> None:
    """``NotImplementedError`` naming ``who`` unless ``dist`` has a relaxation."""
    if not dist.has_relaxation:
        raise NotImplementedError(f"{who} is not available for {type(dist).__name__}: {dist.no_relaxation_reason}")


def relaxed_indicator(dist: StructuredDistribution, noise: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """X_tau = dist.relax(G / tau), G = -log E, for the noise E (shape ``sample_shape + logits.shape``)."""
    check_relaxable(dist, "relaxed_indicator")
    return dist.relax(perturbed_logits(dist, noise, fill=-torch.inf) / temperature)


class SoftmaxTrick(SurrogateEstimator):
    unbiased = False
    needs_relaxation = True
    straight_through = False

    def __init__(self, num_samples: int = 1, temperature: float = 1.0, **options: Any):
        super().__init__(num_samples, **options)
        self.temperature = check_positive_number(temperature, "temperature", self.label)

    def check(self, dist, objective):
        check_relaxable(dist, self.label)
        if not accepts_relaxed(objective):
            raise NotImplementedError(
                f"{self.label} feeds relaxed (fractional) samples to the objective, but this objective "
                "declares accepts_relaxed = False; use a score-function estimator instead"
            )

    def _surrogate(self, dist: StructuredDistribution, objective: Objective, generator):
        noise = dist.sample_noise((self.num_samples,), generator)  # reparameterised in the logits
        relaxed = relaxed_indicator(dist, noise, self.temperature)
        if self.straight_through:
            with torch.no_grad():
                hard = dist.indicator(dist.solve(noise.detach())[0])
            relaxed = hard + (relaxed - relaxed.detach())
        values = evaluate(objective, relaxed, (self.num_samples, *dist.batch_shape), self.label)
        return values.mean(0).sum()


@register("sst")
class StochasticSoftmaxTrick(SoftmaxTrick):
    """SST: the gradient of the objective at the relaxed sample X_tau (biased)."""


@register("sst-st")
class StraightThroughSoftmaxTrick(SoftmaxTrick):
    """SST straight-through: objective at the hard sample, gradient through X_tau (biased)."""

    straight_through = True
