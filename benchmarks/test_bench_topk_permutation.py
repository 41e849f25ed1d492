"""Issue 6 targets: TopK n=1000, k=50 and Permutation n=100, batch 128: <= 3 ms;
noise_given_trace no slower than sampling (the sample-only benchmarks)."""

import pytest
import torch

from benchmarks.bench_util import sample_score_backward
from rgbench.distributions import Permutation, TopK


@pytest.mark.benchmark(group="topk")
def test_topk_n1000_k50(benchmark):
    logits = torch.randn(128, 1000)
    benchmark(sample_score_backward(TopK, logits, k=50))


@pytest.mark.benchmark(group="topk")
def test_topk_sample_n1000_k50(benchmark):
    benchmark(TopK(torch.randn(128, 1000), k=50).sample_with_trace)


@pytest.mark.benchmark(group="topk")
def test_topk_noise_given_trace_n1000_k50(benchmark):
    dist = TopK(torch.randn(128, 1000), k=50)
    trace = dist.sample_with_trace().trace
    benchmark(dist.noise_given_trace, trace)


@pytest.mark.benchmark(group="permutation")
def test_permutation_n100(benchmark):
    benchmark(sample_score_backward(Permutation, torch.randn(128, 100)))


@pytest.mark.benchmark(group="permutation")
def test_permutation_sample_n100(benchmark):
    benchmark(Permutation(torch.randn(128, 100)).sample_with_trace)


@pytest.mark.benchmark(group="permutation")
def test_permutation_noise_given_trace_n100(benchmark):
    dist = Permutation(torch.randn(128, 100))
    trace = dist.sample_with_trace().trace
    benchmark(dist.noise_given_trace, trace)
