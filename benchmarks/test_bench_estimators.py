"""Issue 6: one estimate (K = 4) at n = 50, batch 128, float32, for t-loo and sst on
kruskal and cle; t-loo should be faster than sst there (the lead reports the ratio).

Each call is one ``estimate(dist, objective, num_replicates=1)``: K samples, the objective
and one backward pass. The objective is <w, indicator> squared per instance (defined on
relaxed input, so both estimators take it).
"""

import pytest
import torch

from rgbench import distributions, estimators

N, BATCH, K = 50, 128, 4


class SquaredLinear:
    def __init__(self, dist):
        generator = torch.Generator().manual_seed(1)
        self.weights = torch.randn(dist.indicator_event_shape, generator=generator).to(dist.logits)

    def __call__(self, y):
        return (y * self.weights).flatten(-2).sum(-1) ** 2


def instance(structure):
    cls = distributions.get(structure)
    generator = torch.Generator().manual_seed(0)
    logits = cls.random_logits(N, (BATCH,), generator=generator)
    return cls(logits, **cls.default_args(N))


@pytest.mark.benchmark(group="estimators")
@pytest.mark.parametrize("structure", ["kruskal", "cle"])
@pytest.mark.parametrize("estimator", ["t-loo", "sst"])
def test_one_estimate_n50_batch128(benchmark, estimator, structure):
    dist = instance(structure)
    objective = SquaredLinear(dist)
    est = estimators.get(estimator, num_samples=K)
    generator = torch.Generator().manual_seed(2)

    def run():
        out = est.estimate(dist, objective, 1, generator=generator)
        if out.is_cuda:
            torch.cuda.synchronize()
        return out

    result = benchmark(run)
    assert result.shape == (1, BATCH, N, N) and torch.isfinite(result).all()
