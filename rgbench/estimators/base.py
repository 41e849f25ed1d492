"""The one interface every gradient estimator implements.

An *objective* is a callable on the indicator form of X (``dist.indicator(x)``, a float
tensor ``[..., *dist.indicator_event_shape]``) returning values of shape ``[...]``. It may
carry ``accepts_relaxed = False`` when it is not defined on relaxed (fractional) input;
plain callables are assumed to accept relaxed input.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar

import torch

from rgbench.distributions.base import StructuredDistribution

Objective = Callable[[torch.Tensor], torch.Tensor]


def accepts_relaxed(objective: Objective) -> bool:
    return bool(getattr(objective, "accepts_relaxed", True))


class Estimator(ABC):
    """Estimates grad_logits E_{X ~ dist}[objective(indicator(X))].

    Every estimator spends ``num_samples`` (K) objective evaluations per estimate, so
    estimators are compared at equal cost.
    """

    #: the registry name (set by ``@register``)
    name: ClassVar[str]
    unbiased: ClassVar[bool] = True
    #: needs the structure's continuous relaxation (SST): unsupported where there is none
    needs_relaxation: ClassVar[bool] = False
    #: carries a learned control variate (RELAX): :meth:`warm_up` trains it before use, and a
    #: training loop updates ``critic(dist).parameters()`` on ``critic_loss``
    has_critic: ClassVar[bool] = False

    def __init__(self, num_samples: int = 1, **options: Any):
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"{type(self).__name__}: num_samples must be a positive int, got {num_samples!r}")
        if options:
            raise ValueError(f"{type(self).__name__}: unknown options {sorted(options)}")
        self.num_samples = num_samples

    def check(self, dist: StructuredDistribution, objective: Objective) -> None:
        """Raise ``NotImplementedError`` (with a sentence) if the combination is unsupported."""

    def warm_up(self, dist: StructuredDistribution, objective: Objective,
                generator: torch.Generator | None = None) -> None:
        """Whatever must run before the estimator is measured (train a critic); nothing by
        default. The harness calls it once per cell, before drawing the replicates."""

    def supports(self, dist: StructuredDistribution, objective: Objective) -> str | None:
        """None when supported, else the reason it is not."""
        try:
            self.check(dist, objective)
        except NotImplementedError as error:
            return str(error)
        return None

    @abstractmethod
    def estimate(
        self,
        dist: StructuredDistribution,
        objective: Objective,
        num_replicates: int = 1,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Independent estimates, shape ``(num_replicates, *dist.logits.shape)``."""

    @abstractmethod
    def surrogate(
        self, dist: StructuredDistribution, objective: Objective, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A scalar whose gradient w.r.t. ``dist.logits`` is one estimate (summed over the
        batch), for training loops. Objective values enter detached where the estimator
        treats them as constants."""
