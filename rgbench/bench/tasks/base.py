"""What a task is: a recipe that turns one distribution instance into an objective.

An *objective* is a callable on the indicator form of X (``dist.indicator(x)``, float
``[..., *dist.indicator_event_shape]``) returning ``[...]``; it broadcasts over any leading
sample / replicate axes, so the same objective scores hard samples, batches of them and
SST's relaxed indicators. ``accepts_relaxed`` says whether fractional input is meaningful.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from rgbench.distributions.base import StructuredDistribution


class StructuredObjective(ABC):
    """An objective on indicators with ``event_dim`` trailing event axes.

    Subclasses implement :meth:`per_instance` on tensors whose trailing axes are the
    indicator's event shape; the leading axes broadcast against the task's parameters
    (the target or the weights, shaped like one batch of indicators).
    """

    accepts_relaxed: ClassVar[bool] = True

    def __init__(self, event_dim: int):
        self.event_dim = event_dim

    def __call__(self, indicator: torch.Tensor) -> torch.Tensor:
        if indicator.dim() < self.event_dim:
            raise ValueError(
                f"{type(self).__name__}: indicator must have at least {self.event_dim} event axes, "
                f"got shape {tuple(indicator.shape)}"
            )
        return self.per_instance(indicator)

    def _sum_event(self, values: torch.Tensor) -> torch.Tensor:
        return values.sum(dim=tuple(range(-self.event_dim, 0)))

    @abstractmethod
    def per_instance(self, indicator: torch.Tensor) -> torch.Tensor:
        """L(indicator), shape ``indicator.shape[:-event_dim]`` (after broadcasting)."""


class Task(ABC):
    """A named family of objectives: :meth:`build` draws one, seeded, for an instance.

    ``structures`` lists the distribution names the task supports (``None``: all of them);
    ``accepts_relaxed`` is copied onto every objective it builds.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    accepts_relaxed: ClassVar[bool] = True
    structures: ClassVar[tuple[str, ...] | None] = None

    def supports(self, dist_name: str) -> str | None:
        """None when the task is defined for the structure ``dist_name``, else the reason."""
        if self.structures is None or dist_name in self.structures:
            return None
        return f"task {self.name!r} is defined only for {', '.join(self.structures)}"

    def build(self, dist: StructuredDistribution, generator: torch.Generator | None = None) -> StructuredObjective:
        """The objective for ``dist`` (any batch shape: one set of parameters per instance),
        drawn with ``generator`` on the logits' device."""
        # An unregistered class has no registry name: it is supported only by the all-structure tasks.
        reason = self.supports(getattr(type(dist), "name", type(dist).__name__))
        if reason is not None:
            raise NotImplementedError(reason)
        return self._build(dist, generator)

    @abstractmethod
    def _build(self, dist: StructuredDistribution, generator: torch.Generator | None) -> StructuredObjective:
        ...

