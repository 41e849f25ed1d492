"""The built-in tasks: quadratic, linear and exact-match objectives on indicators.

Every parameter is drawn once per instance with the caller's generator, on the logits'
device and in their dtype, so a (seed, instance) pair fixes the objective:

* ``quadratic``: L(X) = ||ind(X) - ind(X*)||^2 with X* ~ p(.; logits) one sample of the
  instance's own distribution (a random *hard* structure, so the optimum is attainable).
* ``linear``: L(X) = <c, ind(X)> with c_ij ~ Normal(0, 1) i.i.d.
* ``match``: L(X) = 1 if X = X* else 0, X* drawn as for ``quadratic``. It is not defined on
  relaxed input (``accepts_relaxed = False``), so relaxation estimators refuse it.

Cost: O(size of the indicator) per evaluation.
"""

from __future__ import annotations

import torch

from rgbench.distributions.base import StructuredDistribution
from rgbench.bench.tasks.base import StructuredObjective, Task
from rgbench.bench.tasks.catalog import register


def random_structure(dist: StructuredDistribution, generator: torch.Generator | None) -> torch.Tensor:
    """Indicator of one sample X* ~ dist per batch element, shape ``batch + indicator event``."""
    with torch.no_grad():
        return dist.indicator(dist.sample(generator=generator)).detach()


class Quadratic(StructuredObjective):
    """L = sum over the indicator of (ind - target)^2; smooth, so relaxed input is fine."""

    def __init__(self, target: torch.Tensor, event_dim: int):
        super().__init__(event_dim)
        self.target = target

    def per_instance(self, indicator):
        return self._sum_event((indicator - self.target) ** 2)

    def __repr__(self):
        return f"Quadratic(target shape {tuple(self.target.shape)})"


class Linear(StructuredObjective):
    """L = <weights, ind>."""

    def __init__(self, weights: torch.Tensor, event_dim: int):
        super().__init__(event_dim)
        self.weights = weights

    def per_instance(self, indicator):
        return self._sum_event(indicator * self.weights)

    def __repr__(self):
        return f"Linear(weights shape {tuple(self.weights.shape)})"


class Match(StructuredObjective):
    """L = 1 where the indicator equals the target exactly, else 0 (piecewise constant:
    its relaxation would carry no gradient, hence ``accepts_relaxed = False``)."""

    accepts_relaxed = False

    def __init__(self, target: torch.Tensor, event_dim: int):
        super().__init__(event_dim)
        self.target = target

    def per_instance(self, indicator):
        equal = (indicator == self.target).flatten(-self.event_dim)
        return equal.all(-1).to(indicator.dtype)

    def __repr__(self):
        return f"Match(target shape {tuple(self.target.shape)})"


def _event_dim(dist: StructuredDistribution) -> int:
    return len(dist.indicator_event_shape)


@register("quadratic")
class QuadraticTask(Task):
    summary = "||ind(X) - ind(X*)||^2, X* one seeded sample of the instance (a random hard structure)"

    def _build(self, dist, generator):
        return Quadratic(random_structure(dist, generator), _event_dim(dist))


@register("linear")
class LinearTask(Task):
    summary = "<c, ind(X)>, c ~ Normal(0, 1) i.i.d., seeded"

    def _build(self, dist, generator):
        shape = dist.batch_shape + dist.indicator_event_shape
        weights = torch.randn(shape, generator=generator, dtype=dist.logits.dtype, device=dist.logits.device)
        return Linear(weights, _event_dim(dist))


@register("match")
class MatchTask(Task):
    summary = "1 if X equals X* (one seeded sample of the instance) else 0; not defined on relaxed input"
    accepts_relaxed = False

    def _build(self, dist, generator):
        return Match(random_structure(dist, generator), _event_dim(dist))
