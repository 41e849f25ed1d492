"""Issue 6 targets for Kruskal: sample + trace log-prob + backward at n=50, batch 128,
float32, CPU <= 10 ms; noise_given_trace no slower than sampling. n=500 records peak memory."""

import pytest
import torch

from benchmarks.bench_util import peak_rss_mib, sample_score_backward
from rgbench.distributions.spanning_tree import SpanningTree


def _logits(n, batch):
    return SpanningTree.random_logits(n, (batch,), generator=torch.Generator().manual_seed(0))


@pytest.mark.benchmark(group="kruskal")
@pytest.mark.parametrize("n", [10, 50])
def test_kruskal_sample_score_backward(benchmark, n):
    benchmark(sample_score_backward(SpanningTree, _logits(n, 128)))


@pytest.mark.benchmark(group="kruskal")
def test_kruskal_sample_n50(benchmark):
    """Sampling alone: the reference for the noise_given_trace target."""
    dist = SpanningTree(_logits(50, 128))
    benchmark(dist.sample_with_trace)


@pytest.mark.benchmark(group="kruskal")
def test_kruskal_noise_given_trace_n50(benchmark):
    dist = SpanningTree(_logits(50, 128))
    trace = dist.sample_with_trace().trace
    benchmark(dist.noise_given_trace, trace)


@pytest.mark.benchmark(group="kruskal")
def test_kruskal_sample_score_backward_n500(benchmark):
    """n=500, batch 16. Peak memory is the process's resident high-water mark (torch's CPU
    allocations bypass tracemalloc); the growth over this benchmark is its own peak when the
    earlier benchmarks used less."""
    run = sample_score_backward(SpanningTree, _logits(500, 16))
    before = peak_rss_mib()
    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["peak_rss_mib"] = round(peak_rss_mib(), 1)
    benchmark.extra_info["peak_rss_growth_mib"] = round(peak_rss_mib() - before, 1)
