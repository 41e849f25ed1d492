"""Permutations by insertion sort on exponential noise: the Plackett-Luce distribution."""

from __future__ import annotations

import torch

from rgbench.distributions.base import unit_exponential
from rgbench.distributions.catalog import register
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
        if not torch.isfinite(self.logits).all():
            raise ValueError("Permutation: logits must be finite (every item is placed), found -inf")

    def solve(self, noise):
        noise = self._check_noise(noise)
        trace = noise.argsort(-1)
        return trace, trace

    def indicator(self, x):
        return torch.nn.functional.one_hot(x, self.n).to(self.logits.dtype).transpose(-1, -2)

    def _check_permutation(self, trace):
        trace = self._check_trace(trace)
        if (trace.sort(-1).values != torch.arange(self.n, device=trace.device)).any():
            raise ValueError("Permutation: trace is not a permutation of 0..n-1")
        return trace

    def trace_log_prob(self, trace):
        trace = self._check_permutation(trace)
        ordered = self.logits.expand(trace.shape).gather(-1, trace)
        # logsumexp over the items still unplaced at each rank: a reversed cumulative lse.
        tails = torch.logcumsumexp(ordered.flip(-1), -1).flip(-1)
        return (ordered - tails).sum(-1)

    def log_prob(self, x):
        return self.trace_log_prob(x)

    def noise_given_trace(self, trace, generator=None):
        """E | T in O(n): the r-th smallest E is the sum of increments d_q ~ Exp(total rate of
        the items unplaced at rank q), q <= r."""
        trace = self._check_permutation(trace)
        ordered = self.logits.expand(trace.shape).gather(-1, trace)
        tails = torch.logcumsumexp(ordered.flip(-1), -1).flip(-1)
        unit = unit_exponential(trace.shape, self.logits, generator)
        sorted_noise = torch.cumsum(unit * torch.exp(-tails), -1)
        return torch.empty_like(sorted_noise).scatter_(-1, trace, sorted_noise)

    def _recursion(self):
        return PlackettLuceRecursion(self._usable_keys(), self.n, ordered=True)
