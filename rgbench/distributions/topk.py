"""Top-k subsets: the first k argmins of the Exponential race (a Plackett-Luce prefix)."""

from __future__ import annotations

from functools import lru_cache
from typing import Iterator

import torch

from rgbench.distributions import recursion as spec
from rgbench.distributions.base import DrawSet, StructuredDistribution, scale_exponential, unit_exponential
from rgbench.distributions.catalog import register
from rgbench.distributions.pool import rate_dtype, reverse_logcumsumexp
from rgbench.distributions.relaxations import topk_marginals


class PlackettLuceRecursion(spec.Recursion):
    """Algorithm 1: pick the argmin of all unpicked items, k times.

    State: (unpicked keys, picks so far). X is the sorted subset, or the ordered picks when
    ``ordered`` (insertion sort: a permutation when k = n).
    """

    def __init__(self, usable, k: int, ordered: bool):
        super().__init__(usable)
        self.k, self.ordered = k, ordered

    def initial(self):
        return self.usable, ()

    def stop(self, state):
        return len(state[1]) == self.k

    def split(self, state):
        return [tuple(sorted(state[0]))]

    def map(self, state, picks):
        (pick,) = picks
        return state[0] - {pick}, state[1] + (pick,)

    def finish(self, state):
        return state[1] if self.ordered else tuple(sorted(state[1]))


def prefix_draw_sets(usable: torch.Tensor, trace: torch.Tensor) -> DrawSet:
    """All k draws of a Plackett-Luce prefix at once: draw r's candidates are the usable
    items not among trace[..., :r]. ``usable`` [..., n], ``trace`` [..., k]."""
    n = usable.shape[-1]
    picks = torch.nn.functional.one_hot(trace.clamp(0, n - 1), n).bool()  # [..., k, n]
    before = (picks.cumsum(-2) - picks.long()).bool()
    candidates = usable.unsqueeze(-2) & ~before
    active = torch.ones(trace.shape, dtype=torch.bool, device=trace.device)
    return DrawSet(candidates, trace, active)


@lru_cache(maxsize=None)
def _subset_transitions(k: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """For each popcount r = 1..k: (dst masks [m], src masks [m, r], added element [m, r])."""
    levels = []
    for r in range(1, k + 1):
        dst = [mask for mask in range(1 << k) if bin(mask).count("1") == r]
        src = [[mask & ~(1 << i) for i in range(k) if mask >> i & 1] for mask in dst]
        elem = [[i for i in range(k) if mask >> i & 1] for mask in dst]
        levels.append((torch.tensor(dst), torch.tensor(src), torch.tensor(elem)))
    return levels


@register("topk")
class TopK(StructuredDistribution):
    """Random k-subsets: the k smallest of E_i ~ Exp(exp(logits_i)) (Gumbel-top-k).

    Encodings:
      * sample ``x``: LongTensor ``[..., k]``, the chosen items in increasing order;
        ``indicator(x)`` is the float mask ``[..., n]``.
      * trace: LongTensor ``[..., k]``, the items in the order picked (a Plackett-Luce
        prefix): log P(T) = sum_r [logits_{t_r} - logsumexp_{j not in t_<r} logits_j].

    ``log_prob(x)`` sums over the k! orderings with a dynamic programme over the 2^k
    subsets of x (k <= 10). ``-inf`` logits mark items that are never picked; at least k
    items must be finite. Cost: O(n log n) to sample, O(n) for the trace log-probability and E | T.

    Example:
        >>> d = TopK(torch.zeros(5), k=2)
        >>> d.indicator(d.sample()).sum().item()
        2.0
    """

    max_enumeration_size = 8
    max_log_prob_k = 10
    has_relaxation = True

    def __init__(self, logits: torch.Tensor, k: int, validate_args: bool | None = None):
        self.k = k
        super().__init__(logits, validate_args)

    @classmethod
    def default_args(cls, n: int) -> dict:
        return {"k": max(1, n // 2)}

    def _extra_args(self):
        return {"k": self.k}

    def _check_structure(self):
        name = type(self).__name__
        if isinstance(self.k, bool) or not isinstance(self.k, int):
            raise ValueError(f"{name}: k must be an int, got {self.k!r}")
        if not 1 <= self.k <= self.n:
            raise ValueError(f"{name}: k={self.k} must be between 1 and the {self.n} items")
        self._nothing_left = None
        if self._all_finite:  # n >= k usable items everywhere, and none left over only if k = n
            return
        finite = self._usable.sum(-1)
        too_few, exactly_k = torch.stack([(finite < self.k).any(), (finite == self.k).any()]).tolist()
        if too_few:
            raise ValueError(
                f"{name}: k={self.k} exceeds the number of items with finite logits "
                f"({int(finite.min())} in some batch element)"
            )
        # Rows with exactly k usable items have nothing left over after the k picks.
        self._nothing_left = (finite == self.k).unsqueeze(-1) if exactly_k else None

    def _x_event_shape(self):
        return torch.Size([self.k])

    def _solve(self, noise):
        trace = torch.topk(noise, self.k, dim=-1, largest=False, sorted=True).indices
        return trace.sort(-1).values, trace

    def indicator(self, x):
        zeros = torch.zeros(x.shape[:-1] + (self.n,), dtype=self.logits.dtype, device=x.device)
        return zeros.scatter(-1, x, 1.0)

    def relax(self, scores):
        """P(i ∈ S) under p(S) ∝ exp(sum_{i∈S} scores_i), |S| = k (``topk_marginals``)."""
        return topk_marginals(scores, self.k)

    def _check_trace(self, trace: torch.Tensor) -> torch.Tensor:
        self._trace_lead_shape(trace, (self.k,))
        if ((trace < 0) | (trace >= self.n)).any():
            raise ValueError(f"{type(self).__name__}: trace holds items outside 0..{self.n - 1}")
        return trace

    def _draw_sets(self, trace) -> Iterator[DrawSet]:
        yield prefix_draw_sets(self._usable, self._check_trace(trace))

    def _prefix(self, trace):
        """The picked logits in order [..., k] and log Z_r, the log total rate of the items
        still unpicked at step r [..., k]; checks that the picks are distinct and usable."""
        trace = self._check_trace(trace)
        logits = self.logits.expand(trace.shape[:-1] + (self.n,))
        picked = logits.gather(-1, trace)
        # Checked on the k picks: usable (unusable items are exactly the -inf logits) and
        # distinct (k different items marked; a mask is far cheaper than sorting on the CPU).
        ok = self._all_finite or bool((picked > -torch.inf).all())
        marked = torch.zeros(logits.shape, dtype=torch.bool, device=trace.device).scatter_(-1, trace, True)
        if not (ok and bool((marked.sum(-1) == self.k).all())):
            raise ValueError(f"{type(self).__name__}: trace does not belong to this distribution (repeated or unusable items)")
        return trace, picked, self._log_normalizers(trace, picked)

    def _log_normalizers(self, trace: torch.Tensor, picked: torch.Tensor) -> torch.Tensor:
        """log Z_r [..., k] for checked picks: Z_r = (rate of the items never picked) +
        (rates of picks r, r+1, ...).

        Where the logits are finite and span at most 600 nats, the rates are taken relative
        to the largest logit (in the dtype of :func:`~rgbench.distributions.pool.rate_dtype`),
        the unpicked mass is one masked sum and the picks' tails a float64 reversed
        cumulative sum. Otherwise in log space (a log-sum-exp over the unpicked items with
        -inf at the picks, several times slower on the CPU, where exp of -inf or of a
        denormal result takes a slow path)."""
        logits, top = self.logits, self._logits_max  # the extremes were read at construction
        dtype = rate_dtype(logits.dtype, top - self._logits_min) if self._all_finite else None
        if dtype is not None:
            tails = torch.exp((picked - top).to(dtype)).double().flip(-1).cumsum(-1).flip(-1)
            if self.k < self.n:  # plus the items never picked
                rates = torch.exp((logits - top).to(dtype)).expand(trace.shape[:-1] + (self.n,))
                tails = tails + rates.scatter(-1, trace, 0.0).sum(-1, keepdim=True).double()
            return (tails.log() + top).to(logits.dtype)
        log_norm = reverse_logcumsumexp(picked)
        if self.k < self.n:  # with k = n nothing is left over (and an empty lse has NaN second derivatives)
            # The picks set to -inf leave exactly the unpicked usable items (unusable ones are -inf).
            rest = logits.expand(trace.shape[:-1] + (self.n,)).scatter(-1, trace, -torch.inf)
            if self._nothing_left is None:
                log_rest = torch.logsumexp(rest, -1, keepdim=True)
            else:  # an all -inf row would give NaN gradients: sum zeros there, then read -inf
                log_rest = torch.logsumexp(rest.masked_fill(self._nothing_left, 0.0), -1, keepdim=True)
                log_rest = log_rest.masked_fill(self._nothing_left, -torch.inf)
            log_norm = torch.logaddexp(log_rest, log_norm)
        return log_norm

    def trace_log_prob(self, trace):
        _, picked, log_norm = self._prefix(trace)
        return (picked - log_norm).sum(-1)

    def noise_given_trace(self, trace, generator=None):
        """E | T in O(n) (in the frame of :meth:`sample_noise`): the r-th pick's utility is
        d_0 + ... + d_r with d_q ~ Exp(Z_q); the unpicked items get d_0 + ... + d_{k-1} plus
        a fresh Exp(lambda_i)."""
        self._check_frame()
        trace, _, log_norm = self._prefix(trace)
        unit = unit_exponential(log_norm.shape, self.logits, generator)
        picked_noise = torch.cumsum(scale_exponential(unit, log_norm - self.noise_shift), -1)
        shape = trace.shape[:-1] + (self.n,)
        if self.k == self.n:  # every item is picked: no fresh noise
            return picked_noise.new_empty(shape).scatter_(-1, trace, picked_noise)
        fresh = self._scale_unit_noise(unit_exponential(shape, self.logits, generator))
        return (picked_noise[..., -1:] + fresh).scatter(-1, trace, picked_noise)

    def log_prob(self, x):
        """log P(X = x) = log of the sum over x's k! orderings, by a DP over its subsets."""
        if self.k > self.max_log_prob_k:
            raise ValueError(
                f"TopK.log_prob sums over k! orderings and supports k <= {self.max_log_prob_k}, got k={self.k}; "
                "use trace_log_prob(trace)"
            )
        x = self._check_trace(x)
        logits = self.logits.expand(x.shape[:-1] + (self.n,))
        inside = logits.gather(-1, x)  # [..., k]
        outside = logits.scatter(-1, x, float("-inf"))
        log_out = torch.logsumexp(outside, -1, keepdim=True)  # -inf when k = n
        masks = torch.arange(1 << self.k, device=x.device)
        in_rest = (masks.unsqueeze(-1) >> torch.arange(self.k, device=x.device) & 1) == 0  # [2^k, k]
        rest = torch.where(in_rest, inside.unsqueeze(-2), torch.full_like(inside.unsqueeze(-2), -torch.inf))
        # log of the total rate still in the race after the subset `mask` was picked.
        log_left = torch.logaddexp(log_out.expand(rest.shape[:-1]), torch.logsumexp(rest, -1))
        log_f = torch.full(log_left.shape, -torch.inf, dtype=logits.dtype, device=x.device)
        log_f[..., 0] = 0.0
        for dst, src, elem in _subset_transitions(self.k):
            dst, src, elem = dst.to(x.device), src.to(x.device), elem.to(x.device)
            terms = log_f[..., src] + inside[..., elem] - log_left[..., src]
            log_f = log_f.index_copy(-1, dst, torch.logsumexp(terms, -1))
        return log_f[..., -1]

    def _recursion(self):
        return PlackettLuceRecursion(self._usable_keys(), self.k, ordered=False)

    def _encode(self, draws, x):
        trace = torch.tensor([d.chosen for d in draws], dtype=torch.long, device=self.logits.device)
        return torch.tensor(x, dtype=torch.long, device=self.logits.device), trace
