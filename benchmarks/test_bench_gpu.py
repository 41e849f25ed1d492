"""Issue 21 GPU targets: batch 1024, sample + trace log-prob + backward, CUDA vs this CPU.

Targets on an H100/H200: Kruskal, CLE and matching at n = 50 <= 5 ms, binary tree at n = 100
<= 10 ms, and at least 10x faster than the same machine's CPU on the same batch (top-k
n = 1000, k = 50 and permutation n = 100 are measured too). The CUDA cases skip without a
GPU; ``bash benchmarks/run_gpu.sh`` runs them with the CUDA tests. The CPU side runs with
``RGBENCH_BENCH_THREADS`` torch threads (default 2, see conftest.py).
"""

import pytest
import torch

from benchmarks.bench_util import sample_score_backward
from rgbench import distributions

CASES = [
    ("kruskal", 50, {}),
    ("cle", 50, {"root": 0}),
    ("matching", 50, {}),
    ("binary-tree", 100, {}),
    ("topk", 1000, {"k": 50}),
    ("permutation", 100, {}),
]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name, n, args", CASES, ids=[f"{name}-{n}" for name, n, _ in CASES])
def test_batch1024(benchmark, name, n, args, device):
    cls = distributions.get(name)
    generator = torch.Generator().manual_seed(0)
    logits = cls.random_logits(n, (1024,), generator=generator).to(device)
    benchmark.group = f"gpu-vs-cpu {name} n={n} batch=1024"
    benchmark.extra_info.update(name=name, n=n, batch=1024, device=device, threads=torch.get_num_threads(), **args)
    run = sample_score_backward(cls, logits, **args)
    run()  # warm-up: CUDA context, kernels
    benchmark.pedantic(run, rounds=20 if device == "cuda" else 3, iterations=1, warmup_rounds=1)
