"""Benchmarks of Arborescence / Chu-Liu-Edmonds (pytest-benchmark group "cle"), float32.

Run with ``python -m pytest benchmarks/test_bench_arborescence.py --benchmark-only``.
Target (issue 6): sample + trace_log_prob + backward at n = 50, batch 128 in <= 10 ms on the
CPU (the authors' C++ takes about 300 ms). CLE is sequential in its contractions: ``levels``
in ``extra_info`` is the number of levels of the benchmarked batch (its slowest element),
which grows with n (about 0.4 n for normal logits) and bounds the cost from below.
The n = 500, batch 16 case records memory: the peak of live tensor bytes (CPU, from the
profiler) or of allocated CUDA memory, and the process's peak RSS.
"""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.bench_util import peak_rss_mib, sample_score_backward
from rgbench.distributions.arborescence import Arborescence

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def random_logits(n: int, batch: int, device: str = "cpu", seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return Arborescence.random_logits(n, (batch,), generator=generator).to(device)


def levels_of(dist: Arborescence, trace) -> int:
    """Levels of the run: 1 + the longest chain of nested contractions, read off the trace.
    Owners are laminar, so an earlier owner lies inside a later one iff its smallest node
    does; a contracted owner's level is one more than the deepest owner inside it."""
    n, members = dist.n, trace.members.flatten(0, -3)
    active = trace.edges.flatten(0, -3)[..., 0] >= 0
    smallest = members.long().argmax(-1)  # first member of each owner
    level = torch.zeros(members.shape[:2], dtype=torch.long, device=members.device)
    for d in range(n - 1, members.shape[1]):
        inside = members[:, d].gather(1, smallest[:, :d]) & active[:, :d]
        deeper = torch.where(inside, level[:, :d], -1).amax(1) + 1
        level[:, d] = torch.where(active[:, d], deeper, 0)
    return int(level.max()) + 1


def peak_tensor_bytes(fn) -> int:
    """Peak of live CPU tensor bytes while ``fn`` runs, from the profiler's allocation events
    (op granularity: temporaries freed inside one op are not seen)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda event: event.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


@pytest.mark.benchmark(group="cle")
@pytest.mark.parametrize("n", [10, 50])
def test_sample_trace_log_prob_backward(benchmark, n):
    logits = random_logits(n, 128)
    dist = Arborescence(logits)
    levels = levels_of(dist, dist.sample_with_trace(generator=torch.Generator().manual_seed(1)).trace)
    benchmark.extra_info.update(n=n, batch=128, dtype="float32", device="cpu", levels=levels)
    benchmark(sample_score_backward(Arborescence, logits))


@pytest.mark.benchmark(group="cle")
def test_sample_n50(benchmark):
    """Sampling alone: the reference for the noise_given_trace target."""
    dist = Arborescence(random_logits(50, 128))
    benchmark.extra_info.update(n=50, batch=128, dtype="float32", device="cpu")
    benchmark(dist.sample_with_trace)


@pytest.mark.benchmark(group="cle")
def test_noise_given_trace(benchmark):
    dist = Arborescence(random_logits(50, 128))
    trace = dist.sample_with_trace(generator=torch.Generator().manual_seed(1)).trace
    benchmark.extra_info.update(n=50, batch=128, dtype="float32", device="cpu", levels=levels_of(dist, trace))
    benchmark(dist.noise_given_trace, trace)


@pytest.mark.benchmark(group="cle")
def test_large_sample_trace_log_prob_backward(benchmark):
    n, batch = 500, 16
    logits = random_logits(n, batch, DEVICE)
    run = sample_score_backward(Arborescence, logits)
    info = dict(n=n, batch=batch, dtype="float32", device=DEVICE)
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
        run()
        info["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    else:
        info["peak_tensor_bytes"] = peak_tensor_bytes(run)
    info["peak_rss_mib"] = peak_rss_mib()
    dist = Arborescence(logits)
    info["levels"] = levels_of(dist, dist.sample_with_trace(generator=torch.Generator().manual_seed(1)).trace)
    benchmark.extra_info.update(info)
    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
