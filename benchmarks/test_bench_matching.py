"""Benchmarks of GreedyMatching (pytest-benchmark group "matching"), float32 on the CPU.

Run with ``python -m pytest benchmarks/test_bench_matching.py --benchmark-only``.
Target (issue 6): sample + trace_log_prob + backward at n = 50, batch 128 in <= 10 ms;
noise_given_trace no slower than sampling. The n = 300 case records peak memory in
``extra_info`` as the process's resident high-water mark (a profiler would slow down and
disturb the benchmarks that follow): O(n^2) per sample (a 300 x 300 exit-time matrix),
where a mask per step would need O(n^3).
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.bench_util import peak_rss_mib, sample_score_backward
from rgbench.distributions.matching import GreedyMatching


def random_logits(n: int, batch: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return GreedyMatching.random_logits(n, (batch,), generator=generator)


@pytest.mark.benchmark(group="matching")
@pytest.mark.parametrize("n", [10, 50])
def test_sample_trace_log_prob_backward(benchmark, n):
    benchmark.extra_info.update(n=n, batch=128, dtype="float32", device="cpu")
    benchmark(sample_score_backward(GreedyMatching, random_logits(n, 128)))


@pytest.mark.benchmark(group="matching")
def test_sample_n50(benchmark):
    """Sampling alone: the reference for the noise_given_trace target."""
    dist = GreedyMatching(random_logits(50, 128))
    benchmark.extra_info.update(n=50, batch=128, dtype="float32", device="cpu")
    benchmark(dist.sample_with_trace)


@pytest.mark.benchmark(group="matching")
def test_noise_given_trace(benchmark):
    dist = GreedyMatching(random_logits(50, 128))
    trace = dist.sample_with_trace(generator=torch.Generator().manual_seed(1)).trace
    benchmark.extra_info.update(n=50, batch=128, dtype="float32", device="cpu")
    benchmark(dist.noise_given_trace, trace)


@pytest.mark.benchmark(group="matching")
def test_large_sample_trace_log_prob_backward(benchmark):
    """n = 300, batch 16. The peak RSS growth over this benchmark is its own peak when the
    earlier benchmarks used less (torch's CPU allocations bypass tracemalloc)."""
    run = sample_score_backward(GreedyMatching, random_logits(300, 16))
    before = peak_rss_mib()
    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(
        n=300,
        batch=16,
        dtype="float32",
        device="cpu",
        peak_rss_mib=round(peak_rss_mib(), 1),
        peak_rss_growth_mib=round(peak_rss_mib() - before, 1),
    )
