"""Benchmarks of GreedyMatching (pytest-benchmark group "matching"), float32 on the CPU.

Run with ``python -m pytest benchmarks/test_bench_matching.py --benchmark-only``.
Target (issue 6): sample + trace_log_prob + backward at n = 50, batch 128 in <= 10 ms.
The n = 300 case records the peak of live tensor memory in ``extra_info``: O(n^2) per
sample (a 300 x 300 exit-time matrix), where a mask per step would need O(n^3).
"""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from rgbench.distributions.matching import GreedyMatching


def random_logits(n: int, batch: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return GreedyMatching.random_logits(n, (batch,), generator=generator).requires_grad_()


def sample_score_backward(logits: torch.Tensor) -> None:
    dist = GreedyMatching(logits)
    trace = dist.sample_with_trace().trace
    dist.trace_log_prob(trace).sum().backward()


def peak_tensor_bytes(fn) -> int:
    """Peak of live CPU tensor bytes while ``fn`` runs, from the profiler's allocation
    events (op granularity: temporaries freed inside a single op are not seen)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(prof.events(), key=lambda event: event.time_range.start)
    live = peak = 0
    for event in events:
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


@pytest.mark.benchmark(group="matching")
@pytest.mark.parametrize("n", [10, 50])
def test_sample_trace_log_prob_backward(benchmark, n):
    logits = random_logits(n, 128)
    benchmark.extra_info.update(n=n, batch=128, dtype="float32", device="cpu")
    benchmark(sample_score_backward, logits)


@pytest.mark.benchmark(group="matching")
def test_noise_given_trace(benchmark):
    dist = GreedyMatching(random_logits(50, 128))
    trace = dist.sample_with_trace(generator=torch.Generator().manual_seed(1)).trace
    benchmark.extra_info.update(n=50, batch=128, dtype="float32", device="cpu")
    benchmark(dist.noise_given_trace, trace)


@pytest.mark.benchmark(group="matching")
def test_large_sample_trace_log_prob_backward(benchmark):
    logits = random_logits(300, 16)
    peak = peak_tensor_bytes(lambda: sample_score_backward(logits))
    benchmark.extra_info.update(
        n=300, batch=16, dtype="float32", device="cpu", peak_tensor_bytes=peak, peak_bytes_per_sample=peak // 16
    )
    benchmark(sample_score_backward, logits)
