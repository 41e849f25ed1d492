"""Trace probabilities for structures whose draws share one shrinking candidate pool.

In top-k, insertion sort, greedy matching and Kruskal every step draws from one pool, and
a variable that leaves the pool (chosen, or made infeasible) never returns. Such a trace is
summarised by each variable's *exit time* M_e: e is a candidate at steps s < M_e (the chosen
variable of step s has M_e = s + 1). Then, with Z_s = sum_{e: M_e > s} lambda_e,

    log P(T) = sum_s [logits_{t_s} - log Z_s],

and E | T is E_e = sum_{q < M_e} d_q (+ a fresh Exp(lambda_e) unless e was chosen) with
independent d_q ~ Exp(Z_q). All log Z_s come from one histogram of the logits over exit
times and a reversed cumulative log-sum-exp: O(K) time and memory per sample for K
variables, instead of materialising one K-sized candidate mask per step.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from rgbench.distributions.base import scale_exponential, unit_exponential


class PoolTrace(NamedTuple):
    """A pool trace in flat form: ``exit_time`` [..., K] long in 0..S (0 for variables that
    are never candidates), ``chosen`` [..., S] long flat indices, one per step."""

    exit_time: torch.Tensor
    chosen: torch.Tensor


def reverse_logcumsumexp(x: torch.Tensor) -> torch.Tensor:
    """y_r = log sum_{s >= r} exp(x_s) along the last axis; ``-inf`` entries allowed.

    A float64 cumulative sum shifted by the row maximum. Exact unless the finite entries of
    a row span more than ~600 nats (exp would underflow), where ``torch.logcumsumexp`` is
    used instead. Preferred to it because torch's CPU kernel is an order of magnitude
    slower, and its backward has a NaN second derivative wherever the incoming gradient is
    exactly 0 (RELAX differentiates the estimate's square through it).
    """
    if x.numel() == 0:
        return x.clone()
    values = x.detach()
    top = values.amax(-1, keepdim=True)
    bottom = torch.where(values > -torch.inf, values, top).amin(-1, keepdim=True)
    if bool(((top - bottom) > 600).any()):
        return torch.logcumsumexp(x.flip(-1), -1).flip(-1)
    top = top.nan_to_num(neginf=0.0)  # an all -inf row stays -inf
    shifted = torch.exp((x - top).double())
    tails = torch.log(shifted.flip(-1).cumsum(-1).flip(-1))
    return (tails + top.double()).to(x.dtype)


def log_normalizers(logits: torch.Tensor, usable: torch.Tensor | None, pool: PoolTrace) -> torch.Tensor:
    """log Z_s for s = 0..S-1, shape [..., S]; differentiable w.r.t. ``logits`` [..., K].

    ``usable`` [..., K] bool marks the variables that exist (``None``: all of them; callers
    that know this skip two masking passes over the K variables).
    Exact and underflow-safe: each bin of the histogram is summed relative to its own
    maximum, then the bins are combined by a log-sum-exp scan.
    """
    steps = pool.chosen.shape[-1]
    bins = pool.exit_time
    if usable is None:
        logits = logits.expand(bins.shape)
    else:
        bins = torch.where(usable, bins, torch.zeros_like(bins))
        logits = logits.expand(bins.shape)
        logits = torch.where(usable, logits, torch.full_like(logits, -torch.inf))
    hist_shape = bins.shape[:-1] + (steps + 1,)
    # Per-bin log-sum-exp, shifted by the bin's own maximum so no bin underflows.
    peak = torch.full(hist_shape, -torch.inf, dtype=logits.dtype, device=logits.device)
    peak = peak.scatter_reduce(-1, bins, logits.detach(), "amax").nan_to_num(neginf=0.0)
    # exp_ in place: the subtraction's backward does not need its output (one K-sized
    # buffer fewer, which matters on the CPU where every fresh buffer costs page faults).
    weights = (logits - peak.gather(-1, bins)).exp_()
    mass = torch.zeros(hist_shape, dtype=logits.dtype, device=logits.device).scatter_add(-1, bins, weights)
    empty = mass <= 0
    log_bin = torch.where(empty, -torch.inf, torch.log(torch.where(empty, 1.0, mass)) + peak)
    # Z_s collects the bins t > s: a reversed cumulative log-sum-exp over bins 1..S.
    return reverse_logcumsumexp(log_bin[..., 1:])


def pool_log_prob(logits: torch.Tensor, usable: torch.Tensor | None, pool: PoolTrace) -> torch.Tensor:
    """log P(T) = sum_s [logits_{t_s} - log Z_s], shape [...]."""
    chosen = logits.expand(pool.exit_time.shape).gather(-1, pool.chosen)
    return (chosen - log_normalizers(logits, usable, pool)).sum(-1)


def pool_noise_given_trace(
    logits: torch.Tensor,
    usable: torch.Tensor | None,
    pool: PoolTrace,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """E | T, flat [..., K], reparameterised in ``logits``; +inf at unusable positions."""
    log_norm = log_normalizers(logits, usable, pool)
    unit = unit_exponential(log_norm.shape, logits, generator)
    steps = scale_exponential(unit, log_norm)
    # offset[t] = sum_{q < t} d_q, t = 0..S
    offset = torch.cat([torch.zeros_like(steps[..., :1]), steps.cumsum(-1)], -1)
    total = offset.gather(-1, pool.exit_time)
    chosen = torch.zeros(total.shape, dtype=torch.bool, device=total.device).scatter(-1, pool.chosen, True)
    fresh_unit = unit_exponential(total.shape, logits, generator)
    if usable is None:
        fresh = scale_exponential(fresh_unit, logits)
        return torch.where(chosen, total, total + fresh)
    safe = torch.where(usable, logits, torch.zeros_like(logits))
    fresh = scale_exponential(fresh_unit, safe)
    noise = torch.where(chosen, total, total + fresh)
    return torch.where(usable, noise, torch.full_like(noise, torch.inf))


def check_pool_trace(pool: PoolTrace, usable: torch.Tensor | None, name: str) -> None:
    """Every step's chosen variable must be usable and leave the pool at that very step."""
    steps = pool.chosen.shape[-1]
    expected = torch.arange(1, steps + 1, device=pool.chosen.device)
    ok = pool.exit_time.gather(-1, pool.chosen) == expected
    if usable is not None:
        ok = ok & usable.expand(pool.exit_time.shape).gather(-1, pool.chosen)
    if not bool(ok.all()):
        raise ValueError(
            f"{name}: trace does not belong to this distribution (a step picks a variable outside its pool)"
        )
