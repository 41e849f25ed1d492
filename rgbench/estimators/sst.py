"""Stochastic softmax tricks (Paulus et al. 2020): relaxed and straight-through.

With Gumbel-perturbed logits G = logits + Gumbel = -log E (E from ``sample_noise``, so G is
reparameterised in the logits), the hard sample is the max-weight structure under G and the
relaxed sample X_tau is the regularised argmax at temperature tau, in indicator form:

    topk         topk_marginals(G / tau, k)           (fixed-size exponential family)
    kruskal      spanning_tree_marginals(G / tau)      (matrix-tree theorem on the upper
                                                        triangle; symmetric output)
    cle          arborescence_marginals(G / tau, root) (directed matrix-tree theorem)
    permutation  sinkhorn(G_i c_r / tau), c_r = n-1-r  (the hard limit sorts G descending,
                                                        rank 0 first; indicator [item, rank])
    matching     sinkhorn(G / tau)                     (Gumbel-Sinkhorn)
    binary-tree  none (NotImplementedError)

``sst``:    g = (1/K) sum_k grad L(X_tau,k)                       (relaxed forward)
``sst-st``: forward L(H_k), H_k the hard indicator of solve(E_k), backward through
            X_tau,k: the input is H + X_tau - X_tau.detach()       (straight-through)

Both are biased (``unbiased = False``) and need an objective defined on relaxed input
(``accepts_relaxed``). Option ``temperature`` (tau > 0, default 1.0). Cost: K samples, K
objective evaluations with a backward pass, plus the relaxation (O(n^3) for the matrix-tree
relaxations, ``iterations`` * O(n^2) for Sinkhorn, O(n k) for top-k).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from rgbench.distributions.base import StructuredDistribution
from rgbench.distributions.catalog import DISTRIBUTIONS
from rgbench.estimators.base import Objective, accepts_relaxed
from rgbench.estimators.catalog import register
from rgbench.estimators.common import SurrogateEstimator, check_positive_number, evaluate, perturbed_logits


def structure_name(dist: StructuredDistribution) -> str | None:
    """The registry name of ``dist``'s class, or of its nearest registered base class."""
    registered = {DISTRIBUTIONS.get(name): name for name in DISTRIBUTIONS}
    for cls in type(dist).__mro__:
        if cls in registered:
            return registered[cls]
    return None


def _relax_topk(dist, scores):
    from rgbench.estimators.relaxations import topk_marginals

    return topk_marginals(scores, dist.k)


def _relax_permutation(dist, scores):
    from rgbench.estimators.relaxations import sinkhorn

    n = dist.n
    # Rank weights c_r = n-1-r: the linear assignment maximising sum_i G_i c_rank(i) puts the
    # largest G at rank 0, matching insertion sort on E = exp(-G).
    weights = torch.arange(n - 1, -1, -1, dtype=scores.dtype, device=scores.device)
    return sinkhorn(scores.unsqueeze(-1) * weights)


def _relax_matching(dist, scores):
    from rgbench.estimators.relaxations import sinkhorn

    return sinkhorn(scores)


def _relax_spanning_tree(dist, scores):
    from rgbench.estimators.relaxations import spanning_tree_marginals

    # One noise variable per undirected edge, in the strict upper triangle (the lower one is
    # unusable, G = -inf); the marginals read that triangle and come back symmetric, which is
    # the indicator's layout.
    return spanning_tree_marginals(scores)


def _relax_arborescence(dist, scores):
    from rgbench.estimators.relaxations import arborescence_marginals

    return arborescence_marginals(scores, root=dist.root)


RELAXATIONS: dict[str, Callable[[StructuredDistribution, torch.Tensor], torch.Tensor]] = {
    "topk": _relax_topk,
    "permutation": _relax_permutation,
    "matching": _relax_matching,
    "kruskal": _relax_spanning_tree,
    "cle": _relax_arborescence,
}
UNSUPPORTED = {
    "binary-tree": "binary trees from divide and conquer have no linear-program (regularised argmax) "
    "form, so there is no stochastic softmax trick for them",
}


def check_relaxable(dist: StructuredDistribution, who: str) -> str:
    name = structure_name(dist)
    if name in UNSUPPORTED:
        raise NotImplementedError(f"{who} is not available for {type(dist).__name__}: {UNSUPPORTED[name]}")
    if name not in RELAXATIONS:
        raise NotImplementedError(f"{who} has no relaxation for {type(dist).__name__} (registered as {name!r})")
    return name


def relaxed_indicator(dist: StructuredDistribution, noise: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """X_tau in indicator form for the noise E (shape ``sample_shape + logits.shape``)."""
    name = check_relaxable(dist, "relaxed_indicator")
    return RELAXATIONS[name](dist, perturbed_logits(dist, noise, fill=-torch.inf) / temperature)


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
