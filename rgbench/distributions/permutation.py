"""Permutations by insertion sort on exponential noise: the Plackett-Luce distribution."""

from __future__ import annotations

import torch

from rgbench.distributions.catalog import register
from rgbench.distributions.relaxations import sinkhorn
from rgbench.distributions.topk import PlackettLuceRecursion, TopK


@register("permutation")
class Permutation(TopK):
    """Plackett-Luce permutations: items sorted by E_i ~ Exp(exp(logits_i)).

    Encodings:
      * sample ``x`` = trace: LongTensor ``[..., n]``, ``x[r]`` is the item at rank r
        (rank 0 is picked first, i.e. has the smallest E / largest perturbed logit);
        ``indicator(x)`` is ``[..., n, n]`` with ``[item, rank] = 1``.
      * log P(x) = sum_r [logits_{x_r} - logsumexp_{s >= r} logits_{x_s}].

    Logits must be finite (every item is placed). Cost: O(n log n) to sample and O(n) for
    the log-probability and for E | T.

    Example:
        >>> d = Permutation(torch.tensor([5.0, 0.0, -5.0]))
        >>> d.mode.tolist()
        [0, 1, 2]
    """

    max_enumeration_size = 7

    def __init__(self, logits: torch.Tensor, validate_args: bool | None = None):
        super().__init__(logits, k=logits.shape[-1] if isinstance(logits, torch.Tensor) and logits.dim() else 1,
                         validate_args=validate_args)

    @classmethod
    def default_args(cls, n: int) -> dict:
        return {}

    def _extra_args(self):
        return {}

    def _check_structure(self):
        if not self._all_finite:  # NaN and +inf were rejected by _check_logits
            raise ValueError("Permutation: logits must be finite (every item is placed), found -inf")

    def _solve(self, noise):
        trace = noise.argsort(-1)
        return trace, trace

    def indicator(self, x):
        return torch.nn.functional.one_hot(x, self.n).to(self.logits.dtype).transpose(-1, -2)

    def relax(self, scores):
        """Sinkhorn(scores_i c_r) in the [item, rank] layout, rank weights c_r = n-1-r.

        The linear assignment maximising sum_i scores_i c_rank(i) puts the largest score at
        rank 0, as insertion sort on E = exp(-scores) does; Sinkhorn is its entropy-regularised
        form (Gumbel-Sinkhorn, Mena et al. 2018).
        """
        weights = torch.arange(self.n - 1, -1, -1, dtype=scores.dtype, device=scores.device)
        return sinkhorn(scores.unsqueeze(-1) * weights)

    def log_prob(self, x):
        return self.trace_log_prob(x)

    def _recursion(self):
        return PlackettLuceRecursion(self._usable_keys(), self.n, ordered=True)
