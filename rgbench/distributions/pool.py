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


def rate_dtype(dtype: torch.dtype, span: float) -> torch.dtype | None:
    """The dtype in which to sum the rates exp(l - top) of logits of ``dtype`` that lie
    within ``span`` nats below ``top``: their own (at least float32) while exp(-span) stays
    a normal number in it (80 nats in float32, 600 in float64), float64 up to 600 nats, and
    None beyond, where the caller must work in log space."""
    if span > 600:
        return None
    exact = torch.promote_types(dtype, torch.float32)
    return exact if span <= (600 if exact == torch.float64 else 80) else torch.float64


def log_normalizers(
    logits: torch.Tensor,
    usable: torch.Tensor | None,
    pool: PoolTrace,
    bounds: tuple[float, float] | None = None,
) -> torch.Tensor:
    """log Z_s for s = 0..S-1, shape [..., S]; differentiable w.r.t. ``logits`` [..., K].

    ``usable`` [..., K] bool marks the variables that exist (``None``: all of them; callers
    that know this skip the masking passes over the K variables). ``bounds``: a lower and
    an upper bound on the usable logits (the extremes a distribution read at construction),
    which saves a pass over them; by default each row's own.

    Z_s sums the histogram of the rates over the exit-time bins t > s, taken relative to
    the upper bound in the dtype of :func:`rate_dtype`: sums of positive terms, accurate to
    the rounding of the summation. Z is the histogram's reversed cumulative sum in float64.
    Logits spread over more than 600 nats switch to log space: each bin summed relative to
    its own maximum, then a log-sum-exp scan.
    """
    bins, steps = pool.exit_time, pool.chosen.shape[-1]
    if steps == 0:
        return logits.new_zeros(bins.shape[:-1] + (0,))
    if usable is not None:
        bins = torch.where(usable, bins, torch.zeros_like(bins))
    if bounds is not None:
        bottom, top = bounds
        span = top - bottom
    else:
        values = logits.detach().expand(bins.shape)
        if usable is None:
            bottom, top = values.aminmax(dim=-1, keepdim=True)
        else:
            top = torch.where(usable, values, -torch.inf).amax(-1, keepdim=True)
            bottom = torch.where(usable, values, top).amin(-1, keepdim=True)
        span = float((top - bottom).nan_to_num(nan=0.0).amax())  # NaN: a row with no usable variable
        top = top.nan_to_num(neginf=0.0)  # there every rate is 0 anyway
    dtype = rate_dtype(logits.dtype, span)
    if dtype is None:
        return _log_normalizers_by_bin(logits, usable, bins, steps)
    shifted = (logits - top).to(dtype)
    if usable is not None:
        shifted = torch.where(usable, shifted, -torch.inf)
    mass = torch.zeros(bins.shape[:-1] + (steps + 1,), dtype=shifted.dtype, device=logits.device)
    mass = mass.scatter_add(-1, bins, shifted.exp().expand(bins.shape))
    # Z_s collects the bins t > s. Z_s holds the variable chosen at step s, so it is > 0.
    tails = mass[..., 1:].double().flip(-1).cumsum(-1).flip(-1)
    top = top.double() if isinstance(top, torch.Tensor) else top
    return (tails.log() + top).to(logits.dtype)


def _log_normalizers_by_bin(logits: torch.Tensor, usable: torch.Tensor | None, bins: torch.Tensor, steps: int):
    """:func:`log_normalizers` in log space, for logits too spread out for one shift: every
    bin of the histogram is summed relative to its own maximum (so none underflows), then
    the bins are combined by a log-sum-exp scan. ``bins``: exit times, 0 where unusable."""
    logits = logits.expand(bins.shape)
    if usable is not None:
        logits = torch.where(usable, logits, torch.full_like(logits, -torch.inf))
    hist_shape = bins.shape[:-1] + (steps + 1,)
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


def pool_log_prob(
    logits: torch.Tensor,
    usable: torch.Tensor | None,
    pool: PoolTrace,
    bounds: tuple[float, float] | None = None,
) -> torch.Tensor:
    """log P(T) = sum_s [logits_{t_s} - log Z_s], shape [...] (``bounds``: see
    :func:`log_normalizers`)."""
    chosen = logits.expand(pool.exit_time.shape).gather(-1, pool.chosen)
    return (chosen - log_normalizers(logits, usable, pool, bounds)).sum(-1)


def pool_noise_given_trace(
    logits: torch.Tensor,
    usable: torch.Tensor | None,
    pool: PoolTrace,
    shift: torch.Tensor,
    generator: torch.Generator | None = None,
    bounds: tuple[float, float] | None = None,
) -> torch.Tensor:
    """E | T, flat [..., K], reparameterised in ``logits``, in the noise frame of reference
    log-rates ``shift`` [..., 1] (rates exp(logits - shift)); +inf at unusable positions
    (``bounds``: see :func:`log_normalizers`)."""
    log_norm = log_normalizers(logits, usable, pool, bounds)
    unit = unit_exponential(log_norm.shape, logits, generator)
    steps = scale_exponential(unit, log_norm - shift)
    # offset[t] = sum_{q < t} d_q, t = 0..S
    offset = torch.cat([torch.zeros_like(steps[..., :1]), steps.cumsum(-1)], -1)
    total = offset.gather(-1, pool.exit_time)
    fresh_unit = unit_exponential(total.shape, logits, generator)
    relative = logits - shift
    safe = relative if usable is None else torch.where(usable, relative, torch.zeros_like(relative))
    # Everything gets fresh noise, then the chosen variables (S per row) are set back to
    # their total: far cheaper than a torch.where over all K variables on the CPU.
    noise = total + scale_exponential(fresh_unit, safe)
    noise.scatter_(-1, pool.chosen, total.gather(-1, pool.chosen))
    return noise if usable is None else noise.masked_fill(~usable, torch.inf)


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
