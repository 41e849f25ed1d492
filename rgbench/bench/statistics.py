"""Bias, variance, SNR and cosine of a gradient estimator from R independent replicates.

Inputs: estimates g_1..g_R (each flattened to d coordinates), the reference gradient
r (exact, or a Monte Carlo reference with per-coordinate standard error s^ref_i) and
d_free, the number of coordinates the structure can move. With g_bar the replicate mean and
s_i^2 the unbiased per-coordinate sample variance:

* bias = ||g_bar - r||. Interval (analytic, simultaneous): each coordinate's bias lies in
  delta_i +- h_i with delta = g_bar - r, h_i = z * sqrt(s_i^2 / R + (s^ref_i)^2) and
  z = Phi^-1(1 - alpha / (2 m)), Bonferroni over the m coordinates that vary (a coordinate
  equal to the reference in every replicate is not random). The norm over that box spans
  [sqrt(sum max(0, |delta_i| - h_i)^2), sqrt(sum (|delta_i| + h_i)^2)]; it contains 0 exactly
  when every coordinate's z-test accepts zero bias. Each h_i also gets a rounding allowance
  of 64 ulps (of the computation's dtype) times the largest |coordinate|, since two exact
  computations summed in different orders differ at that level.
* degenerate coordinates: when all R replicates agree on a coordinate and the reference is
  exact, s_i = 0 and the z-interval has zero width, yet an unbiased estimator can still miss
  an event of small probability q there: R replicates all miss it with probability
  (1 - q)^R >= alpha' as long as q <= ln(1 / alpha') / R. Such a coordinate's h_i therefore
  adds ln(1 / alpha') / R x L_scale (the objective's scale, max |L| over the support, standing
  for the size of one estimate on the missed event), with alpha' the interval's own rate.
  Example: topk n=4 at logit scale 60 has an exact gradient of 2.5e-13 from a trace of
  probability 1.3e-13 that no sample draws; every replicate is 0 and the box [3.6e-13, 3.6e-13]
  would exclude 0 without this term.
* bias flag (unbiased estimators): the same box at the flag's per-cell false-alarm rate
  alpha_flag = 1e-3 (:data:`FLAG_FALSE_ALARM_RATE`, Bonferroni over the m coordinates, as
  ``rgbench check`` does), independent of ``level`` so a sweep of c unbiased cells raises a
  false flag with probability <= c x 1e-3. Flagged when the box excludes 0, i.e. some
  |delta_i| > z_flag sqrt(s_i^2 / R + (s^ref_i)^2) + rounding (+ the degenerate term).
  bias_z = max_i |delta_i| / sqrt(s_i^2 / R + (s^ref_i)^2) over the num_tests coordinates
  that vary. num_fixed_biased counts the coordinates that do not vary (every replicate agrees,
  exact reference) yet differ from the reference by more than the rounding and degenerate
  allowances at the flag's rate: a bias no z-test sees (its z is infinite).
* total_var_se: the CLT standard error of V, se(V) = sd_r(D_r) / sqrt(R) * R / (R - 1) with
  D_r = ||g_r - g_bar||^2 (V = mean_r D_r * R / (R - 1)), from the summary's deviation
  moments (kept for d <= :data:`SE_MAX_COORDS`: they cost O(d^2) memory; NaN beyond).
* total variance V = sum_i s_i^2 (trace of the covariance); mean per-coordinate variance
  V / d_free. Interval: percentile bootstrap over replicates, stratified by the chunks the
  replicates are drawn in (``rgbench.bench.streaming``).
* SNR = ||g_bar|| / sqrt(V) (the signal of one estimate against its spread; inf when
  V = 0). Interval: percentile bootstrap.
* cosine = mean over replicates of cos(g_r, r) (how well one estimate points along the
  reference). Interval: analytic, mean +- z * sd / sqrt(R) with z = Phi^-1(1 - alpha / 2).

Normal approximations need R large enough for the replicate means to be near-normal; heavy
tails (rare large objective values) make them optimistic. Everything is computed from a
:class:`~rgbench.bench.streaming.ReplicateSummary`, folded in chunk by chunk, so memory does
not grow with R. Against a one-shot computation on the same replicates, the point
estimates and the analytic intervals agree to float rounding; the bootstrap is the plain
percentile bootstrap (same random draws) when R fits in one chunk and, with J chunks,
resamples within each chunk, which narrows the bootstrap spread by the factor
(1 - J / R) (below 0.4%) and changes the interval ends by bootstrap noise. Cost:
O(B R d) time, O(B chunk + B d) memory.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch

from rgbench.bench.streaming import ReplicateSummary, chunk_sizes

#: per-cell false-alarm rate of the "biased" flag (Bonferroni over the coordinates)
FLAG_FALSE_ALARM_RATE = 1e-3
#: the most coordinates for which the deviation moments of ``total_var_se`` are kept
#: (O(d^2) memory: 128 MiB at the limit)
SE_MAX_COORDS = 4096

METHODS = {
    "bias": "analytic: Bonferroni box of per-coordinate normal intervals (z-test) plus 64 ulps "
    "(plus ln(1/alpha)/R x max|L| on coordinates where every replicate agrees), normed",
    "bias_flag": "bias box at per-cell false-alarm rate 1e-3 (Bonferroni over coordinates); "
    "an unbiased estimator whose box excludes 0 is flagged biased",
    "total_var": "percentile bootstrap over replicates",
    "total_var_se": "CLT standard error sd_r(||g_r - mean g||^2) / sqrt(R) * R/(R-1)",
    "coord_var": "percentile bootstrap over replicates (total_var / num_free_coords)",
    "snr": "percentile bootstrap over replicates",
    "cosine": "analytic: normal interval of the mean over replicates",
    "time": "distribution-free order-statistic interval for the median",
    "work_var": "Bonferroni product of the bootstrap interval of total_var and the median-time interval, "
    "each at level 1 - (1 - level) / 2",
}


def _z(two_sided_alpha: float) -> float:
    return NormalDist().inv_cdf(1.0 - two_sided_alpha / 2.0)


def bootstrap_total_variance(
    estimates: torch.Tensor, resamples: int, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(V_b, ||mean_b||) for B bootstrap resamples of the rows of ``estimates`` [R, d],
    stratified by the chunks of :func:`rgbench.bench.streaming.chunk_sizes`."""
    return summarise(estimates, resamples=resamples, generator=generator).bootstrap()


def summarise(estimates: torch.Tensor, reference: torch.Tensor | None = None, **options) -> ReplicateSummary:
    """The :class:`ReplicateSummary` of ``estimates`` [R, ...], folded in chunk by chunk
    exactly as chunked drawing would (same chunk boundaries, same bootstrap stream)."""
    g = estimates.detach().reshape(estimates.shape[0], -1)
    summary = ReplicateSummary(reference, **options)
    start = 0
    for size in chunk_sizes(g.shape[0], g.shape[1]):
        summary.add(g[start:start + size])
        start += size
    return summary


def _quantiles(values: torch.Tensor, probabilities: list[float]) -> list[float]:
    probs = torch.tensor(probabilities, dtype=values.dtype, device=values.device)
    # A resample with zero variance has an infinite SNR; interpolating next to inf gives NaN.
    method = "linear" if bool(torch.isfinite(values).all()) else "nearest"
    return [float(v) for v in torch.quantile(values, probs, interpolation=method)]


def gradient_statistics(
    estimates: torch.Tensor,
    reference: torch.Tensor,
    reference_se: torch.Tensor | None = None,
    num_free_coords: int | None = None,
    *,
    level: float = 0.95,
    resamples: int = 1000,
    generator: torch.Generator | None = None,
    eps: float = torch.finfo(torch.float64).eps,
    objective_scale: float = 0.0,
    flag_alpha: float = FLAG_FALSE_ALARM_RATE,
) -> dict[str, float]:
    """The statistics of the module docstring with their intervals.

    Args:
        estimates: [R, ...] replicates (flattened to [R, d]); R >= 2.
        reference: [...] the reference gradient, d coordinates.
        reference_se: [...] its per-coordinate standard error (None or zeros: exact).
        num_free_coords: d_free for the mean per-coordinate variance (default d).
        eps: machine epsilon of the dtype the estimates were computed in.
        objective_scale: max |L| over the support (0 when unknown), for the degenerate
            coordinates.
        flag_alpha: per-cell false-alarm rate of ``bias_flagged``.
    Returns a dict with ``bias``, ``total_var``, ``coord_var``, ``snr``, ``cosine``, each
    with ``_lo`` / ``_hi`` (intervals at ``level``), plus ``total_var_lo_split`` /
    ``total_var_hi_split`` (at 1 - (1 - level) / 2, for the work-normalised interval),
    ``total_var_se`` (NaN unless the summary kept deviation moments), ``num_tests`` (m),
    ``bias_z``, ``num_fixed_biased``, ``bias_flag_lo`` / ``bias_flag_hi`` (the box at
    ``flag_alpha``) and ``bias_flagged`` (that box excludes 0).
    """
    r = estimates.shape[0]
    if r < 2:
        raise ValueError(f"gradient_statistics: need at least 2 replicates, got {r}")
    numel = estimates[0].numel()
    if reference.numel() != numel:
        raise ValueError(
            f"gradient_statistics: reference has {reference.numel()} coordinates, estimates have {numel}"
        )
    summary = summarise(estimates, reference, resamples=resamples, generator=generator,
                        deviation_moments=numel <= SE_MAX_COORDS)
    return summary_statistics(summary, reference, reference_se, num_free_coords, level=level, eps=eps,
                              objective_scale=objective_scale, flag_alpha=flag_alpha)


def summary_statistics(
    summary: ReplicateSummary,
    reference: torch.Tensor,
    reference_se: torch.Tensor | None = None,
    num_free_coords: int | None = None,
    *,
    level: float = 0.95,
    eps: float = torch.finfo(torch.float64).eps,
    objective_scale: float = 0.0,
    flag_alpha: float = FLAG_FALSE_ALARM_RATE,
) -> dict[str, float]:
    """:func:`gradient_statistics` from a chunk-combined summary (made with the reference
    for the cosine, and with bootstrap resamples)."""
    r = summary.count
    if r < 2:
        raise ValueError(f"gradient_statistics: need at least 2 replicates, got {r}")
    ref = reference.detach().reshape(-1).to(torch.float64)
    ref_se = torch.zeros_like(ref) if reference_se is None else reference_se.detach().reshape(-1).to(ref)
    d_free = ref.shape[0] if num_free_coords is None else num_free_coords
    alpha = 1.0 - level

    mean = summary.replicate_mean
    var = summary.variance
    delta = mean - ref
    spread = torch.sqrt(var / r + ref_se.square())
    varies = (var > 0) | (ref_se > 0)
    m = int(varies.sum())
    rounding = 64 * eps * float(torch.maximum(ref.abs().max(), mean.abs().max()))

    def box(rate: float) -> tuple[torch.Tensor, torch.Tensor]:
        # Coordinates with no spread at all: allow for an event R replicates missed (docstring).
        unseen = torch.where(varies, 0.0, math.log(1 / rate) / r * objective_scale)
        half = _z(rate / max(m, 1)) * spread + rounding + unseen
        return torch.clamp(delta.abs() - half, min=0.0).norm(), (delta.abs() + half).norm()

    bias_lo, bias_hi = box(alpha)
    flag_lo, flag_hi = box(flag_alpha)
    z = delta.abs()[varies] / spread[varies]
    bias_z = float(z.max()) if m else 0.0
    fixed_allowance = rounding + math.log(1 / flag_alpha) / r * objective_scale
    num_fixed_biased = int(((~varies) & (delta.abs() > fixed_allowance)).sum())
    if summary.deviation_moments:
        sum_d, sum_dd = summary.deviation_sums()  # D_r = ||g_r - mean||^2
        total_se = math.sqrt(max(sum_dd - sum_d**2 / r, 0.0) / (r - 1)) / math.sqrt(r) * r / (r - 1)
    else:
        total_se = float("nan")

    total = var.sum()
    boot_total, boot_norm = summary.bootstrap()
    lo, hi, lo_split, hi_split = _quantiles(boot_total, [alpha / 2, 1 - alpha / 2, alpha / 4, 1 - alpha / 4])
    snr = float(mean.norm() / total.sqrt()) if total > 0 else float("inf")
    boot_snr = torch.where(boot_total > 0, boot_norm / boot_total.sqrt(), torch.full_like(boot_norm, float("inf")))
    snr_lo, snr_hi = _quantiles(boot_snr, [alpha / 2, 1 - alpha / 2])

    if ref.norm() == 0:
        cosine = cos_lo = cos_hi = float("nan")
    else:
        cosine = summary.cosine_mean
        half_cos = _z(alpha) * summary.cosine_sd / r**0.5
        cos_lo, cos_hi = cosine - half_cos, cosine + half_cos

    return {
        "bias": float(delta.norm()),
        "bias_lo": float(bias_lo),
        "bias_hi": float(bias_hi),
        "total_var": float(total),
        "total_var_se": total_se,
        "total_var_lo": lo,
        "total_var_hi": hi,
        "total_var_lo_split": lo_split,
        "total_var_hi_split": hi_split,
        "coord_var": float(total) / d_free,
        "coord_var_lo": lo / d_free,
        "coord_var_hi": hi / d_free,
        "snr": snr,
        "snr_lo": snr_lo,
        "snr_hi": snr_hi,
        "cosine": cosine,
        "cosine_lo": cos_lo,
        "cosine_hi": cos_hi,
        "num_tests": m,
        "bias_z": bias_z,
        "num_fixed_biased": num_fixed_biased,
        "bias_flag_lo": float(flag_lo),
        "bias_flag_hi": float(flag_hi),
        "bias_flagged": bool(flag_lo > 0),
    }
