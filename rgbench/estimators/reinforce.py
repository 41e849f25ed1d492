"""REINFORCE with the score of the noise, of the trace or of the sample (docs/design.md §4.1).

    g = (1/K) sum_k L(X_k) grad log p_k,     X_k i.i.d. ~ dist,

with log p_k = log p(E_k) (``e-reinforce``), log P(T_k) (``t-reinforce``) or log P(X_k)
(``x-reinforce``). Unbiased for any objective; needs no derivative of L. The three share
their mean and are ordered in variance x <= t <= e (Rao-Blackwell). Cost per estimate: K
samples, K objective evaluations and one backward pass through the score.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from rgbench.distributions.base import StructuredDistribution
from rgbench.estimators.base import Objective
from rgbench.estimators.catalog import register
from rgbench.estimators.common import SurrogateEstimator, attach, evaluate
from rgbench.estimators.scores import SCORES, check_x_tractable


class ScoreFunctionEstimator(SurrogateEstimator):
    """Shared sampling for the score-function estimators; subclasses pick ``score``
    (a key of :data:`rgbench.estimators.scores.SCORES`) and the per-sample coefficients."""

    score: ClassVar[str]

    def check(self, dist, objective):
        if self.score == "x":
            check_x_tractable(dist, self.label)

    def _coefficients(self, values: torch.Tensor) -> torch.Tensor:
        """Weights of grad log p_k, shape [K, *batch]: L_k / K for plain REINFORCE."""
        return values / self.num_samples

    def _surrogate(self, dist: StructuredDistribution, objective: Objective, generator):
        sample = dist.sample_with_trace((self.num_samples,), generator)
        values = evaluate(
            objective, dist.indicator(sample.x), (self.num_samples, *dist.batch_shape), self.label
        )
        log_p = SCORES[self.score](dist, sample)
        weighted = self._coefficients(values.detach()) * log_p
        return values.mean(0).sum() + attach(weighted).sum()


@register("e-reinforce")
class EReinforce(ScoreFunctionEstimator):
    """E-REINFORCE: L(X) grad log p(E), score 1 - lambda_i E_i. Works for every structure."""

    score = "noise"


@register("t-reinforce")
class TReinforce(ScoreFunctionEstimator):
    """T-REINFORCE: L(X) grad log P(T), the trace score. Works for every structure."""

    score = "trace"


@register("x-reinforce")
class XReinforce(ScoreFunctionEstimator):
    """X-REINFORCE: L(X) grad log P(X). Requires a tractable ``log_prob``: Permutation and
    BinaryTree (X = T) and TopK with k <= 10 (a sum over the k! orderings); ``check`` raises
    ``NotImplementedError`` for the others."""

    score = "x"
