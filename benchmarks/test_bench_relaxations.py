"""SST relaxations at n = 50, batch 128: forward + backward of a fixed linear loss, CPU.

Scores are N(0, 3^2), about what (logits + Gumbel) / tau gives at tau ~ 0.5. No target yet:
these fix the cost of one SST estimate next to the recursive samplers' benchmarks.
"""

import pytest
import torch

from rgbench.distributions.relaxations import arborescence_marginals, sinkhorn, spanning_tree_marginals, topk_marginals

N, BATCH, SCALE = 50, 128, 3.0


def forward_backward(function, shape):
    """One benchmarked call: relax, contract with fixed weights, backward to the scores."""
    generator = torch.Generator().manual_seed(0)
    scores = SCALE * torch.randn(shape, generator=generator)
    weights = torch.randn(shape, generator=generator)

    def run():
        leaf = scores.detach().requires_grad_()
        (function(leaf) * weights).sum().backward()
        return leaf.grad

    return run


@pytest.mark.benchmark(group="relaxations")
@pytest.mark.parametrize("k", [5, 25])
def test_topk_marginals_n50(benchmark, k):
    benchmark(forward_backward(lambda s: topk_marginals(s, k), (BATCH, N)))


@pytest.mark.benchmark(group="relaxations")
def test_spanning_tree_marginals_n50(benchmark):
    benchmark(forward_backward(spanning_tree_marginals, (BATCH, N, N)))


@pytest.mark.benchmark(group="relaxations")
def test_arborescence_marginals_n50(benchmark):
    benchmark(forward_backward(arborescence_marginals, (BATCH, N, N)))


@pytest.mark.benchmark(group="relaxations")
@pytest.mark.parametrize("iterations", [20, 100])
def test_sinkhorn_n50(benchmark, iterations):
    # tol=0 runs every sweep, so the two sizes time a fixed amount of work.
    benchmark(forward_backward(lambda s: sinkhorn(s, iterations=iterations, tol=0.0), (BATCH, N, N)))
