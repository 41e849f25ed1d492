"""Runs that survive interruption: chunked statistics, atomic files, --out checks, progress,
--resume, signals, --threads and one-line errors (issue 13), on tiny real grids."""

from __future__ import annotations

import math

import pytest
import torch

from rgbench.harness import streaming
from rgbench.harness.check import replicate_statistics
from rgbench.harness.statistics import gradient_statistics
from rgbench.harness.streaming import ReplicateSummary, chunk_sizes


# ---------------------------------------------------------------------------- streaming statistics
def _draws(r: int, d: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    g = 3.0 + torch.randn(r, d, generator=gen, dtype=torch.float64) * torch.linspace(0.5, 2.0, d, dtype=torch.float64)
    g[:, 0] = 0.25  # a coordinate every replicate agrees on
    return g


def test_chunk_size_depends_on_the_coordinates_only():
    assert streaming.chunk_size(3) == streaming.MAX_CHUNK
    assert streaming.chunk_size(10**6) == streaming.MIN_CHUNK
    assert streaming.chunk_size(100) == streaming.CHUNK_ELEMENTS // 100
    assert chunk_sizes(20000, 3) == [8192, 8192, 3616] and sum(chunk_sizes(12345, 40)) == 12345


@pytest.mark.parametrize("sizes", [[700], [1, 1, 698], [256, 300, 144], [2] * 350])
def test_chunk_combined_moments_equal_a_direct_computation(sizes):
    """Chan's combination over any chunking gives the one-shot mean, variance, cosine and
    the sums of D_r = ||g_r - g_bar||^2 up to float rounding."""
    g = _draws(700, 5)
    reference = torch.tensor([0.3, -1.0, 2.0, 0.5, 1.5], dtype=torch.float64)
    summary = ReplicateSummary(reference, deviation_moments=True)
    for chunk in torch.split(g, sizes):
        summary.add(chunk)
    assert summary.count == 700
    torch.testing.assert_close(summary.replicate_mean, g.mean(0), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(summary.variance, g.var(0), rtol=1e-11, atol=0)
    assert summary.variance[0] == 0  # exactly, whatever the chunking
    cos = torch.nn.functional.cosine_similarity(g, reference.expand_as(g), dim=-1)
    assert summary.cosine_mean == pytest.approx(float(cos.mean()), rel=1e-13)
    assert summary.cosine_sd == pytest.approx(float(cos.std()), rel=1e-10)
    deviations = (g - g.mean(0)).square().sum(1)
    first, second = summary.deviation_sums()
    assert first == pytest.approx(float(deviations.sum()), rel=1e-11)
    assert second == pytest.approx(float(deviations.square().sum()), rel=1e-10)


def _plain_bootstrap(g: torch.Tensor, resamples: int, gen: torch.Generator):
    """The one-shot percentile bootstrap (the implementation before chunking), as an oracle."""
    r = g.shape[0]
    mean = g.mean(0)
    centred = g - mean
    rows = torch.randint(r, (resamples, r), generator=gen)
    counts = torch.zeros(resamples, r, dtype=g.dtype).scatter_add_(1, rows, torch.ones(resamples, r, dtype=g.dtype))
    first, second = counts @ centred / r, counts @ centred.square() / r
    return ((second - first.square()) * (r / (r - 1))).sum(-1).clamp(min=0.0), (mean + first).norm(dim=-1)


def test_single_chunk_bootstrap_is_the_plain_bootstrap():
    g = _draws(500, 4)
    summary = ReplicateSummary(resamples=300, generator=torch.Generator().manual_seed(7))
    summary.add(g)
    total, norm = summary.bootstrap()
    want_total, want_norm = _plain_bootstrap(g, 300, torch.Generator().manual_seed(7))
    torch.testing.assert_close(total, want_total, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(norm, want_norm, rtol=1e-12, atol=1e-12)


def test_chunked_bootstrap_resamples_within_each_chunk():
    """Stratified by chunk: resample b takes n_j replicates with replacement from chunk j; the
    oracle builds the same counts for the whole [R, d] tensor and computes directly."""
    g = _draws(600, 3)
    sizes = [256, 256, 88]
    summary = ReplicateSummary(resamples=200, generator=torch.Generator().manual_seed(3))
    for chunk in torch.split(g, sizes):
        summary.add(chunk)
    gen = torch.Generator().manual_seed(3)
    counts = torch.cat([torch.zeros(200, n, dtype=torch.float64).scatter_add_(
        1, torch.randint(n, (200, n), generator=gen), torch.ones(200, n, dtype=torch.float64)) for n in sizes], 1)
    r = 600
    mean_b = counts @ g / r
    total = ((counts @ g.square() / r - mean_b.square()) * (r / (r - 1))).sum(-1)
    got_total, got_norm = summary.bootstrap()
    torch.testing.assert_close(got_total, total, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_norm, mean_b.norm(dim=-1), rtol=1e-12, atol=1e-12)


def test_gradient_statistics_on_one_chunk_match_the_one_shot_formulas():
    g = _draws(400, 4, seed=1)
    reference = torch.tensor([0.25, 3.0, 3.0, 3.0], dtype=torch.float64)
    s = gradient_statistics(g, reference, resamples=100, generator=torch.Generator().manual_seed(0))
    assert s["total_var"] == pytest.approx(float(g.var(0).sum()), rel=1e-12)
    assert s["bias"] == pytest.approx(float((g.mean(0) - reference).norm()), rel=1e-12)
    boot, _ = _plain_bootstrap(g, 100, torch.Generator().manual_seed(0))
    assert s["total_var_lo"] == pytest.approx(float(torch.quantile(boot, 0.025)), rel=1e-10)
    assert s["num_tests"] == 3  # the constant coordinate does not vary


def test_check_statistics_do_not_depend_on_the_chunking():
    g = _draws(20000, 3, seed=2)  # 3 chunks of the check's drawing
    exact = torch.tensor([0.25, 3.0, 3.0], dtype=torch.float64)
    got = replicate_statistics(g, exact)
    deviations = (g - g.mean(0)).square().sum(1)
    r = g.shape[0]
    assert got["variance"] == pytest.approx(float(deviations.mean()) * r / (r - 1), rel=1e-11)
    assert got["variance_se"] == pytest.approx(float(deviations.std()) / math.sqrt(r) * r / (r - 1), rel=1e-8)
    assert got["bias_z"][0] is None and got["bias_tests"] == 2
