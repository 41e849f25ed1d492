"""The Exp(1) draws every sampler starts from, against scipy's exponential law.

Each Kolmogorov-Smirnov test uses a fixed seed and rejects at p < 1e-3 (false-alarm rate
1e-3 per test).
"""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from rgbench.distributions.base import unit_exponential


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # float32 on the CPU: int64 words
def test_unit_exponential_draws_are_standard_exponential(dtype):
    draws = unit_exponential((300, 667), torch.zeros((), dtype=dtype), torch.Generator().manual_seed(3))
    assert draws.shape == (300, 667) and draws.dtype == dtype
    assert bool(torch.isfinite(draws).all()) and bool((draws >= 0).all())
    assert stats.kstest(draws.flatten().double().numpy(), "expon").pvalue > 1e-3


def test_unit_exponential_is_reproducible_and_handles_odd_sizes():
    like = torch.zeros(())
    first = unit_exponential((7,), like, torch.Generator().manual_seed(5))
    assert torch.equal(first, unit_exponential((7,), like, torch.Generator().manual_seed(5)))
    assert unit_exponential((0, 3), like).shape == (0, 3)
