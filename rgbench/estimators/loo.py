"""REINFORCE with the leave-one-out baseline (the paper's E-/T-REINFORCE+).

    g = 1/(K-1) sum_k (L_k - mean_j L_j) grad log p_k
      = 1/K     sum_k (L_k - mean_{j != k} L_j) grad log p_k,

unbiased because each baseline is independent of the sample it multiplies. Needs K >= 2.
A constant objective gives exactly zero: the centring subtracts L_0 first (shift
invariance), so equal values cancel without rounding. Cost as for REINFORCE with K samples.
"""

from __future__ import annotations

import torch

from rgbench.estimators.catalog import register
from rgbench.estimators.reinforce import ScoreFunctionEstimator


class LeaveOneOut(ScoreFunctionEstimator):
    def __init__(self, num_samples: int = 2, **options):
        super().__init__(num_samples, **options)
        if self.num_samples < 2:
            raise ValueError(
                f"{self.label}: num_samples must be >= 2 for the leave-one-out baseline, got {self.num_samples}"
            )

    def _coefficients(self, values: torch.Tensor) -> torch.Tensor:
        shifted = values - values[:1]
        return (shifted - shifted.mean(0)) / (self.num_samples - 1)


@register("e-loo", aliases=("e-reinforce+",))
class ELeaveOneOut(LeaveOneOut):
    """E-LOO: the leave-one-out baseline with the noise score 1 - lambda_i E_i."""

    score = "noise"


@register("t-loo", aliases=("t-reinforce+",))
class TLeaveOneOut(LeaveOneOut):
    """T-LOO: the leave-one-out baseline with the trace score grad log P(T)."""

    score = "trace"
