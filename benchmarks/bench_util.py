"""Helpers shared by the benchmark files."""

from __future__ import annotations

import resource

import torch


def sample_score_backward(dist_cls, logits: torch.Tensor, **args):
    """One call of the benchmarked operation: sample, trace log-prob, backward."""

    def run():
        leaf = logits.detach().requires_grad_()
        dist = dist_cls(leaf, **args)
        trace = dist.sample_with_trace().trace
        dist.trace_log_prob(trace).sum().backward()
        if leaf.is_cuda:
            torch.cuda.synchronize()
        return leaf.grad

    return run


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
