"""The three score functions of the REINFORCE family (docs/design.md §4.1).

Each maps (dist, sample) to a log-probability of shape ``sample_shape + batch_shape`` whose
gradient w.r.t. the logits is the score:

* ``noise``: log p(E); d/d logits_i = 1 - lambda_i E_i on usable positions (E-REINFORCE).
* ``trace``: log P(T) = sum_draws [logits_t - logsumexp_P logits] (T-REINFORCE).
* ``x``: log P(X), only where the structure makes it tractable (X-REINFORCE).

Conditioning lowers the variance: Var[L grad log P(X)] <= Var[L grad log P(T)] <=
Var[L grad log p(E)] (Rao-Blackwell, since X = X(T) and T = T(E)).
"""

from __future__ import annotations

from typing import Callable

import torch

from rgbench.distributions.base import StructuredDistribution, TraceSample

Score = Callable[[StructuredDistribution, TraceSample], torch.Tensor]


def noise_score(dist: StructuredDistribution, sample: TraceSample) -> torch.Tensor:
    return dist.noise_log_prob(sample.noise.detach())


def trace_score(dist: StructuredDistribution, sample: TraceSample) -> torch.Tensor:
    return dist.trace_log_prob(sample.trace)


def x_score(dist: StructuredDistribution, sample: TraceSample) -> torch.Tensor:
    return dist.log_prob(sample.x)


SCORES: dict[str, Score] = {"noise": noise_score, "trace": trace_score, "x": x_score}


def check_x_tractable(dist: StructuredDistribution, who: str) -> None:
    """``NotImplementedError`` with the reason unless ``dist.log_prob(x)`` is tractable.

    Probes ``log_prob`` once on the mode of the first batch element: structures without a
    closed form raise ``NotImplementedError``, and TopK's sum over k! orderings refuses
    large k with a ``ValueError``; both become a ``NotImplementedError`` here.
    """
    event = dist.logits.shape[-dist.logits_event_dim :]
    first = dist.logits.detach().reshape(-1, *event)[0]
    probe = dist.with_logits(first)
    try:
        with torch.no_grad():
            value = probe.log_prob(probe.mode)
    except (NotImplementedError, ValueError) as error:
        raise NotImplementedError(
            f"{who} needs a tractable log P(X), which {type(dist).__name__} does not provide here: {error}"
        ) from error
    if not isinstance(value, torch.Tensor) or not torch.isfinite(value).all():
        raise NotImplementedError(
            f"{who} needs a finite log P(X); {type(dist).__name__}.log_prob returned {value!r} on its mode"
        )
