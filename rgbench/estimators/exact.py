"""The exact objective and gradient by enumerating execution traces (docs/design.md §3.3).

    E[L(X)] = sum_T P(T) L(X(T)),   grad = sum_T P(T) L(X(T)) grad log P(T),

the ground truth for bias. Batched distributions enumerate the traces once, on the first
batch element, and score them for the whole batch with the fast ``trace_log_prob`` on the
traces expanded over the batch; this needs every batch element to share the usable
positions (``support_mask``), otherwise each element is enumerated on its own (a Python loop over
the batch, fine at the sizes enumeration allows). Cost: O(#traces) objective evaluations
per batch element; only for n <= ``dist.max_enumeration_size``.
"""

from __future__ import annotations

import torch

from rgbench.distributions.base import StructuredDistribution
from rgbench.estimators.base import Objective
from rgbench.estimators.catalog import register
from rgbench.estimators.common import (
    SurrogateEstimator,
    check_distribution,
    check_num_replicates,
    evaluate,
    gradient,
    leaf_copy,
)


def _expand_trace(trace, batch_shape: torch.Size):
    """[N, *rest] -> [N, *batch_shape, *rest] for a tensor or a tuple of tensors."""

    def expand(t: torch.Tensor) -> torch.Tensor:
        lead = (t.shape[0],) + (1,) * len(batch_shape)
        return t.reshape(lead + t.shape[1:]).expand((t.shape[0], *batch_shape) + t.shape[1:]).contiguous()

    return expand(trace) if isinstance(trace, torch.Tensor) else type(trace)(*(expand(t) for t in trace))


def _enumerate(dist: StructuredDistribution, element: int):
    """The traces and samples of batch element ``element`` (flat index), without gradients."""
    event = dist.logits.shape[-dist.logits_event_dim :]
    logits = dist.logits.detach().reshape(-1, *event)[element]
    with torch.no_grad():
        enum = dist.with_logits(logits).enumerate_traces()
    return enum.traces, enum.x


def _expectation_shared(dist, objective, who):
    traces, x = _enumerate(dist, 0)
    batch = dist.batch_shape
    log_probs = dist.trace_log_prob(_expand_trace(traces, batch))  # [N, *batch]
    x = _expand_trace(x, batch)
    values = evaluate(objective, dist.indicator(x), log_probs.shape, who).detach()
    return (log_probs.exp() * values).sum(0)


def _expectation_per_element(dist, objective, who):
    batch = dist.batch_shape
    event = dist.logits.shape[-dist.logits_event_dim :]
    flat_logits = dist.logits.reshape(-1, *event)
    results = []
    for element in range(flat_logits.shape[0]):
        traces, x = _enumerate(dist, element)
        single = dist.with_logits(flat_logits[element])
        log_probs = single.trace_log_prob(traces)
        # The objective sees the whole batch (it may depend on the batch position); keep
        # this element's column.
        indicator = dist.indicator(_expand_trace(x, batch))
        values = evaluate(objective, indicator, (x.shape[0], *batch), who).detach()
        values = values.reshape(x.shape[0], -1)[:, element]
        results.append((log_probs.exp() * values).sum(0))
    return torch.stack(results).reshape(batch)


def exact_expectation(dist: StructuredDistribution, objective: Objective, who: str = "exact") -> torch.Tensor:
    """E[L(X)], shape ``dist.batch_shape``, differentiable w.r.t. ``dist.logits``."""
    dist = check_distribution(dist, who)
    if dist.n > dist.max_enumeration_size:
        raise ValueError(
            f"{who}: enumeration supports n <= {dist.max_enumeration_size} for {type(dist).__name__}, got n={dist.n}"
        )
    event_dims = dist.logits_event_dim
    if dist.logits.numel() == 0:  # an empty batch: an empty expectation, still on the logits' graph
        return dist.logits.sum(tuple(range(-event_dims, 0))) * 0.0
    usable = dist.support_mask.reshape(-1, *dist.logits.shape[-event_dims:])
    if bool((usable == usable[:1]).all()):
        return _expectation_shared(dist, objective, who)
    return _expectation_per_element(dist, objective, who)


def exact_gradient(dist: StructuredDistribution, objective: Objective) -> tuple[torch.Tensor, torch.Tensor]:
    """``(value, grad)``: E[L(X)] of shape ``batch_shape`` and its gradient w.r.t. the
    logits, shape ``logits.shape``, by enumeration (both detached).

    Example:
        >>> from rgbench.distributions import TopK
        >>> value, grad = exact_gradient(TopK(torch.zeros(3), k=1), lambda y: y[..., 0])
        >>> round(value.item(), 4), torch.allclose(grad.sum(), torch.tensor(0.0), atol=1e-6)
        (0.3333, True)
    """
    dist = check_distribution(dist, "exact_gradient")
    with torch.enable_grad():
        leaf = leaf_copy(dist)
        value = exact_expectation(leaf, objective, "exact_gradient")
        return value.detach(), gradient(value.sum(), leaf.logits).detach()


@register("exact")
class Exact(SurrogateEstimator):
    """The exact gradient by enumeration, repeated for every replicate (zero variance).

    ``surrogate`` is the exact E[L(X)] summed over the batch. ``num_samples`` is ignored.
    Only for structures small enough to enumerate (n <= ``dist.max_enumeration_size``).
    """


    def check(self, dist, objective):
        if dist.n > dist.max_enumeration_size:
            raise NotImplementedError(
                f"exact enumerates every trace, which {type(dist).__name__} supports only up to "
                f"n={dist.max_enumeration_size}; got n={dist.n}"
            )

    def _surrogate(self, dist, objective, generator):
        return exact_expectation(dist, objective, self.label).sum()

    def estimate(self, dist, objective, num_replicates=1, generator=None):
        dist = self._prepare(dist, objective)
        num_replicates = check_num_replicates(num_replicates, self.label)
        _, grad = exact_gradient(dist, objective)
        return grad.expand(num_replicates, *grad.shape).clone()
