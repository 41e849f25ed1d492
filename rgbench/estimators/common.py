"""Machinery shared by the estimators: argument checks, replicates, objective evaluation.

Every Monte Carlo estimator here is defined by one *surrogate*: a scalar built from K samples
of a (possibly batched) distribution whose gradient w.r.t. the logits is the estimate.
:class:`SurrogateEstimator` turns it into R independent estimates at once by rebuilding the
distribution on logits expanded to ``(R, *logits.shape)``: replicate r's terms depend only on
replicate r's logits, so one ``torch.autograd.grad`` of the summed surrogate returns every
per-replicate gradient, with no Python loop over replicates or samples.

Surrogate values follow one convention (DiCE / Pyro's ``tracegraph_elbo``): the value is the
Monte Carlo objective ``sum_batch mean_k L(X_k)``, kept differentiable w.r.t. any parameters
of the objective, and the score-function part enters as ``t - t.detach()`` (value zero,
gradient the estimate).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch

from rgbench.distributions.base import StructuredDistribution
from rgbench.estimators.base import Estimator, Objective


def check_distribution(dist: Any, who: str) -> StructuredDistribution:
    if not isinstance(dist, StructuredDistribution):
        raise ValueError(f"{who}: dist must be a StructuredDistribution, got {type(dist).__name__}")
    return dist


def check_int(value: Any, name: str, who: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        wanted = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{who}: {name} must be {wanted}, got {value!r}")
    return value


def check_positive_number(value: Any, name: str, who: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{who}: {name} must be a positive number, got {value!r}")
    return float(value)


def check_num_replicates(num_replicates: Any, who: str) -> int:
    return check_int(num_replicates, "num_replicates", who)


def perturbed_logits(dist: StructuredDistribution, noise: torch.Tensor, fill: float) -> torch.Tensor:
    """G = -log E (= logits + Gumbel, reparameterised when E is) on usable positions and
    ``fill`` elsewhere. E = +inf there: swapping in 1 before the log keeps inf * 0 out of
    the backward pass; the clamp guards against an underflowed E = 0."""
    usable = dist.support_mask
    safe = torch.where(usable, noise, torch.ones_like(noise)).clamp_min(torch.finfo(noise.dtype).tiny)
    return torch.where(usable, -torch.log(safe), torch.full_like(noise, fill))


def replicate(dist: StructuredDistribution, num_replicates: int) -> StructuredDistribution:
    """``dist`` rebuilt on fresh leaf logits of shape ``(R, *dist.logits.shape)``."""
    logits = dist.logits.detach().expand(num_replicates, *dist.logits.shape).clone().requires_grad_()
    return dist.with_logits(logits)


def leaf_copy(dist: StructuredDistribution) -> StructuredDistribution:
    """``dist`` rebuilt on a detached leaf copy of its logits (gradients stop there)."""
    return dist.with_logits(dist.logits.detach().clone().requires_grad_())


def evaluate(objective: Objective, indicator: torch.Tensor, batch_shape: torch.Size, who: str) -> torch.Tensor:
    """``objective(indicator)`` with its shape checked: ``indicator.shape[:len(batch_shape)]``."""
    values = objective(indicator)
    if not isinstance(values, torch.Tensor) or values.shape != batch_shape or not values.is_floating_point():
        got = (tuple(values.shape), values.dtype) if isinstance(values, torch.Tensor) else type(values).__name__
        raise ValueError(
            f"{who}: objective must map indicators of shape {tuple(indicator.shape)} to a float tensor "
            f"of shape {tuple(batch_shape)}, got {got}"
        )
    return values


def attach(term: torch.Tensor) -> torch.Tensor:
    """Value zero, gradient that of ``term`` (the DiCE 'magic box' minus one)."""
    return term - term.detach()


def gradient(
    surrogate: torch.Tensor, logits: torch.Tensor, create_graph: bool = False, retain_graph: bool | None = None
) -> torch.Tensor:
    """d surrogate / d logits; zeros when the surrogate does not depend on the logits."""
    if not surrogate.requires_grad:
        return torch.zeros_like(logits)
    (grad,) = torch.autograd.grad(
        surrogate, logits, allow_unused=True, create_graph=create_graph, retain_graph=retain_graph
    )
    return torch.zeros_like(logits) if grad is None else grad


class SurrogateEstimator(Estimator):
    """An estimator given by :meth:`_surrogate`; provides ``estimate`` and ``surrogate``.

    ``_surrogate(dist, objective, generator)`` draws ``num_samples`` samples of ``dist``
    (any batch shape; the replicate axis is just one more batch axis) and returns a scalar
    whose gradient w.r.t. ``dist.logits`` is the estimate, summed over the batch.
    """

    @property
    def label(self) -> str:
        return getattr(self, "name", type(self).__name__)

    @abstractmethod
    def _surrogate(
        self, dist: StructuredDistribution, objective: Objective, generator: torch.Generator | None
    ) -> torch.Tensor:
        """The scalar surrogate of one estimate per batch element."""

    def _prepare(self, dist: Any, objective: Objective) -> StructuredDistribution:
        dist = check_distribution(dist, self.label)
        if not callable(objective):
            raise ValueError(f"{self.label}: objective must be callable, got {type(objective).__name__}")
        self.check(dist, objective)
        return dist

    def estimate(self, dist, objective, num_replicates=1, generator=None):
        dist = self._prepare(dist, objective)
        num_replicates = check_num_replicates(num_replicates, self.label)
        with torch.enable_grad():
            replicated = replicate(dist, num_replicates)
            surrogate = self._surrogate(replicated, objective, generator)
            return gradient(surrogate, replicated.logits).detach()

    def surrogate(self, dist, objective, generator=None):
        dist = self._prepare(dist, objective)
        with torch.enable_grad():
            return self._surrogate(dist, objective, generator)
