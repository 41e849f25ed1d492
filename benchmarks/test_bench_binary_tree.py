"""Benchmarks of BinaryTree (pytest-benchmark group "binary-tree"), float32 on the CPU.

Run with ``python -m pytest benchmarks/test_bench_binary_tree.py --benchmark-only``.
Target (issue 6): sample + trace_log_prob + backward at n = 100, batch 128 in <= 15 ms;
noise_given_trace no slower than sampling.
"""

from __future__ import annotations

import pytest
import torch

from rgbench.distributions.binary_tree import BinaryTree


def random_logits(n: int, batch: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return BinaryTree.random_logits(n, (batch,), generator=generator).requires_grad_()


def sample_score_backward(logits: torch.Tensor) -> None:
    dist = BinaryTree(logits)
    trace = dist.sample_with_trace().trace
    dist.trace_log_prob(trace).sum().backward()


@pytest.mark.benchmark(group="binary-tree")
@pytest.mark.parametrize("n", [10, 100])
def test_sample_trace_log_prob_backward(benchmark, n):
    logits = random_logits(n, 128)
    benchmark.extra_info.update(n=n, batch=128, dtype="float32", device="cpu")
    benchmark(sample_score_backward, logits)


@pytest.mark.benchmark(group="binary-tree")
def test_sample_n100(benchmark):
    """Sampling alone: the reference for the noise_given_trace target."""
    dist = BinaryTree(random_logits(100, 128).detach())
    benchmark.extra_info.update(n=100, batch=128, dtype="float32", device="cpu")
    benchmark(dist.sample_with_trace)


@pytest.mark.benchmark(group="binary-tree")
def test_noise_given_trace(benchmark):
    dist = BinaryTree(random_logits(100, 128).detach())  # as for every structure: no graph
    trace = dist.sample_with_trace(generator=torch.Generator().manual_seed(1)).trace
    benchmark.extra_info.update(n=100, batch=128, dtype="float32", device="cpu")
    benchmark(dist.noise_given_trace, trace)
