"""Benchmark instances: seeded random logits for a named structure at size n.

Logits come from the structure's own ``random_logits`` classmethod: i.i.d.
Normal(0, scale^2) entries of shape ``batch + (n,) * logits_event_dim``, with the
structure's constraints applied (symmetric with a zero diagonal for spanning trees). The
extra constructor arguments are the structure's ``default_args(n)`` (e.g. k = n // 2 for
top-k). Cost: O(number of logits).
"""

from __future__ import annotations

import torch

from rgbench import distributions
from rgbench.distributions.base import StructuredDistribution


def make_instance(
    dist_name: str,
    n: int,
    *,
    batch_shape=torch.Size(),
    scale: float = 1.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> StructuredDistribution:
    """An instance of ``dist_name`` at size ``n`` with seeded random logits."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"make_instance: n must be an int >= 2, got {n!r}")
    if not scale > 0:
        raise ValueError(f"make_instance: scale must be positive, got {scale!r}")
    cls = distributions.get(dist_name)
    logits = cls.random_logits(n, batch_shape, scale=scale, generator=generator, dtype=dtype, device=device)
    return cls(logits, **cls.default_args(n))
