"""Where the batch-1024 GPU time goes: kernel launches and the top CUDA/CPU operators.

Run by ``benchmarks/run_gpu.sh`` on a CUDA machine: for each case of test_bench_gpu.py, one
warm call of sample + trace log-prob + backward under the torch profiler.
"""

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.bench_util import sample_score_backward
from rgbench import distributions
from test_bench_gpu import CASES

for name, n, args in CASES:
    cls = distributions.get(name)
    logits = cls.random_logits(n, (1024,), generator=torch.Generator().manual_seed(0)).cuda()
    run = sample_score_backward(cls, logits, **args)
    run()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run()
    events = prof.key_averages()
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    syncs = sum(e.count for e in events if "Synchronize" in e.key or e.key == "cudaMemcpyAsync")
    print(f"\n##### {name} n={n} {args}: {launches} kernel launches, {syncs} memcpy/synchronize calls")
    print(events.table(sort_by="self_cuda_time_total", row_limit=12, max_name_column_width=50))
