"""GreedyMatching: the batched kernels against plain Python, the pool trace against the
generic per-step draws, and the validation of traces.

Oracles here never call rgbench: plain loops over one instance at a time. Statistical
tests use fixed seeds and state their false-alarm rates.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from scipy import stats

from rgbench.distributions import matching
from rgbench.distributions.base import StructuredDistribution
from rgbench.distributions.matching import GreedyMatching


def python_greedy(values):
    """The greedy run on one n x n list of lists: its (row, col) picks in order. Ties go
    to the lowest flat index (rows, then columns, scanned in increasing order)."""
    n = len(values)
    rows, cols, picks = list(range(n)), list(range(n)), []
    for _ in range(n):
        best = None
        for r in rows:
            for c in cols:
                if best is None or values[r][c] < values[best[0]][best[1]]:
                    best = (r, c)
        picks.append(best)
        rows.remove(best[0])
        cols.remove(best[1])
    return picks


def python_trace_log_prob(logits, picks):
    """sum_s logits[r_s, c_s] - log sum over free rows x free cols of exp(logits)."""
    n = len(logits)
    rows, cols, total = set(range(n)), set(range(n)), 0.0
    for r, c in picks:
        pool = [logits[i][j] for i in rows for j in cols]
        peak = max(pool)
        total += logits[r][c] - (peak + math.log(sum(math.exp(v - peak) for v in pool)))
        rows.remove(r)
        cols.remove(c)
    return total


def random_dist(n, batch_shape=(), seed=0, dtype=torch.float64, scale=1.0, requires_grad=False):
    generator = torch.Generator().manual_seed(seed)
    logits = GreedyMatching.random_logits(n, batch_shape, scale=scale, generator=generator, dtype=dtype)
    return GreedyMatching(logits.requires_grad_(requires_grad))


def noise_kinds(n, dtype, generator):
    """Continuous noise, heavily tied noise, and noise with +-inf, -0.0 and negative values."""
    smooth = torch.rand(4, n, n, generator=generator, dtype=dtype)
    tied = torch.randint(0, 3, (4, n, n), generator=generator).to(dtype)
    special = torch.randn(4, n, n, generator=generator, dtype=dtype)
    pick = torch.randint(0, 5, (4, n, n), generator=generator)
    special = torch.where(pick == 0, torch.inf, special)
    special = torch.where(pick == 1, -torch.inf, special)
    special = torch.where(pick == 2, torch.tensor(-0.0, dtype=dtype), special)
    return {"smooth": smooth, "tied": tied, "special": special}


@pytest.mark.parametrize("packed", [True, False], ids=["packed-keys", "argmin"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 3, 8, 30])
def test_solve_matches_python_loop(n, dtype, packed, monkeypatch):
    if not packed:  # force the argmin path for every dtype
        monkeypatch.setattr(matching, "_PACK_MAX_ENTRIES", 0)
    dist = GreedyMatching(torch.zeros(n, n, dtype=dtype))
    generator = torch.Generator().manual_seed(n)
    for kind, noise in noise_kinds(n, dtype, generator).items():
        x, trace = dist.solve(noise)
        for b in range(noise.shape[0]):
            picks = python_greedy(noise[b].tolist())
            assert [tuple(p) for p in trace[b].tolist()] == picks, kind
            expected_x = [c for _, c in sorted(picks)]
            assert x[b].tolist() == expected_x, kind


@pytest.mark.parametrize("n", [2, 8, 30])
def test_nonnegative_keys_match_the_general_ones(n):
    # The sampling path packs keys without sign handling: on finite noise >= 0 (ties and
    # zeros included) it must pick exactly what the general path and the Python loop pick.
    generator = torch.Generator().manual_seed(10 + n)
    kinds = noise_kinds(n, torch.float32, generator)
    zeros = torch.where(torch.rand(4, n, n, generator=generator) < 0.3, 0.0, kinds["smooth"])
    for noise in (kinds["smooth"], kinds["tied"], zeros):
        fast = matching.greedy_match(noise, nonnegative=True)
        assert all(torch.equal(a, b) for a, b in zip(fast, matching.greedy_match(noise)))
        for b in range(noise.shape[0]):
            picks = list(zip(fast[0][b].tolist(), fast[1][b].tolist()))
            assert picks == python_greedy(noise[b].tolist())


def test_solve_needs_n_rounds_on_rank_one_utilities():
    """E = a_r + b_c: only one entry is a row and column minimum per round (worst case)."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 20, 1, generator=generator), torch.rand(3, 1, 20, generator=generator)
    noise = a + b
    _, trace = GreedyMatching(torch.zeros(20, 20)).solve(noise)
    for i in range(3):
        assert [tuple(p) for p in trace[i].tolist()] == python_greedy(noise[i].tolist())


def test_solve_shapes_and_empty_sample():
    dist = random_dist(5, batch_shape=(3,), dtype=torch.float32)
    x, trace = dist.solve(dist.sample_noise((2,)))
    assert x.shape == (2, 3, 5) and trace.shape == (2, 3, 5, 2)
    x, trace = dist.solve(dist.sample_noise((0,)))
    assert x.shape == (0, 3, 5) and trace.shape == (0, 3, 5, 2)


def test_trace_log_prob_matches_python_formula():
    dist = random_dist(6, batch_shape=(3,), seed=1, scale=2.0)
    trace = dist.sample_with_trace((4,), generator=torch.Generator().manual_seed(0)).trace
    fast = dist.trace_log_prob(trace)
    for s in range(4):
        for b in range(3):
            picks = [tuple(p) for p in trace[s, b].tolist()]
            expected = python_trace_log_prob(dist.logits[b].tolist(), picks)
            assert fast[s, b].item() == pytest.approx(expected, abs=1e-10)


def test_exit_times_on_a_hand_example():
    """n = 2, picks (1, 0) then (0, 1): entry (0, 0) and (1, 1) leave with the first pick,
    so log P = l10 - logsumexp(all) + l01 - l01."""
    logits = torch.tensor([[0.3, -1.2], [2.0, 0.7]], dtype=torch.float64)
    dist = GreedyMatching(logits)
    trace = torch.tensor([[1, 0], [0, 1]])
    pool = dist._pool(trace)
    assert pool.exit_time.tolist() == [1, 2, 1, 1]
    assert pool.chosen.tolist() == [2, 1]
    expected = logits[1, 0] - torch.logsumexp(logits.flatten(), 0)
    assert torch.allclose(dist.trace_log_prob(trace), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_noise_given_trace_replays_the_trace(dtype):
    dist = random_dist(30, batch_shape=(4,), seed=3, dtype=dtype)
    trace = dist.sample_with_trace((8,), generator=torch.Generator().manual_seed(2)).trace
    noise = dist.noise_given_trace(trace, generator=torch.Generator().manual_seed(3))
    assert noise.shape == (8, 4, 30, 30) and noise.dtype == dtype
    assert torch.equal(dist.solve(noise)[1], trace)
    generic = StructuredDistribution.noise_given_trace(dist, trace, generator=torch.Generator().manual_seed(4))
    assert torch.equal(dist.solve(generic)[1], trace)


def test_noise_given_trace_is_reparameterised():
    dist = random_dist(6, seed=4, requires_grad=True)
    trace = dist.sample_with_trace((3,), generator=torch.Generator().manual_seed(5)).trace
    noise = dist.noise_given_trace(trace, generator=torch.Generator().manual_seed(6))
    (grad,) = torch.autograd.grad(noise.sum(), dist.logits)
    assert torch.isfinite(grad).all() and (grad != 0).any()


def test_noise_given_trace_matches_rejection_sampling():
    """Mean of E | T versus accepted unconditional draws with trace T, at n = 3 (the most
    likely trace has P ~ 8%). Per-coordinate two-sample z-tests, Bonferroni-corrected to a
    family-wise false-alarm rate of 1e-2."""
    dist = random_dist(3, seed=4, scale=0.5)
    enum = dist.enumerate_traces()
    target = enum.traces[enum.log_probs.argmax()]
    draws = 40_000
    sample = dist.sample_with_trace((draws,), generator=torch.Generator().manual_seed(5))
    accepted = sample.noise[(sample.trace == target).flatten(1).all(1)]
    conditional = dist.noise_given_trace(target.expand(draws, 3, 2), generator=torch.Generator().manual_seed(6))
    a, b = accepted.flatten(1), conditional.flatten(1)
    assert len(a) > 2000
    se = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
    z = ((a.mean(0) - b.mean(0)) / se).abs()
    assert (z < stats.norm.isf(1e-2 / 2 / z.numel())).all(), z


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_enumeration_lists_every_ordered_matching(n):
    """(n!)^2 traces: the matched pairs (n! matchings) in any of n! orders."""
    dist = random_dist(n, seed=n)
    enum = dist.enumerate_traces()
    assert len(enum.log_probs) == math.factorial(n) ** 2
    assert torch.allclose(enum.log_probs.exp().sum(), torch.tensor(1.0, dtype=torch.float64))
    per_x = Counter(tuple(x) for x in enum.x.tolist())
    assert set(per_x.values()) == {math.factorial(n)}


def test_indicator_is_the_permutation_matrix():
    dist = random_dist(6, batch_shape=(3,), dtype=torch.float32)
    x = dist.sample((2,))
    ind = dist.indicator(x)
    assert ind.shape == (2, 3, 6, 6) and ind.dtype == torch.float32
    assert (ind.sum(-1) == 1).all() and (ind.sum(-2) == 1).all()
    assert (ind.gather(-1, x.unsqueeze(-1)) == 1).all()


def test_mode_takes_the_largest_logits_greedily():
    logits = torch.tensor([[0.0, 9.0, 1.0], [8.0, 7.0, 2.0], [3.0, 6.0, 5.0]])
    dist = GreedyMatching(logits)
    assert dist.mode.tolist() == [1, 0, 2]  # 9 at (0, 1), then 8 at (1, 0), then 5 at (2, 2)


def test_log_prob_is_not_implemented():
    dist = random_dist(3)
    with pytest.raises(NotImplementedError, match="trace_log_prob"):
        dist.log_prob(dist.sample())


def test_logits_must_be_finite():
    logits = torch.zeros(3, 3)
    logits[1, 2] = -torch.inf
    with pytest.raises(ValueError, match="finite"):
        GreedyMatching(logits)


def _set(trace, index, value):
    bad = trace.clone()
    bad[index] = value
    return bad


@pytest.mark.parametrize(
    "make_bad, match",
    [
        (lambda t: t.float(), "LongTensor"),
        (lambda t: t[..., :1], "shape"),
        (lambda t: t[..., :-1, :], "shape"),
        (lambda t: _set(t, (0, 0, 0), 5), "outside"),
        (lambda t: _set(t, (1, 3, 1), -1), "outside"),
        (lambda t: _set(t, (0, 4), t[0, 0]), "used twice"),  # the first pick again
        (lambda t: _set(t, (1, 2, 1), t[1, 0, 1]), "used twice"),  # a column again
        (lambda t: t[:1].expand(3, 5, 2), "broadcast"),
    ],
    ids=["dtype", "width", "length", "too-large", "negative", "repeated-pick", "repeated-column", "batch"],
)
def test_foreign_traces_raise(make_bad, match):
    dist = random_dist(5, batch_shape=(2,), seed=5)
    trace = dist.sample_with_trace(generator=torch.Generator().manual_seed(0)).trace
    bad = make_bad(trace)
    with pytest.raises(ValueError, match=match):
        dist.trace_log_prob(bad)
    with pytest.raises(ValueError, match=match):
        dist.noise_given_trace(bad)


def test_repeated_column_is_rejected():
    dist = random_dist(3)
    with pytest.raises(ValueError, match="used twice"):
        dist.trace_log_prob(torch.tensor([[0, 1], [1, 1], [2, 0]]))


def test_unbatched_trace_broadcasts_over_the_batch():
    dist = random_dist(4, batch_shape=(3,), seed=6)
    trace = random_dist(4, seed=7).sample_with_trace().trace
    lp = dist.trace_log_prob(trace)
    assert lp.shape == (3,)
    assert torch.allclose(lp, dist.trace_log_prob(trace.expand(3, 4, 2)))


def test_large_instance_runs_in_quadratic_memory():
    """n = 300: the pool trace holds one exit time per entry (n^2), not a mask per step."""
    dist = random_dist(300, batch_shape=(2,), dtype=torch.float32, requires_grad=True)
    trace = dist.sample_with_trace().trace
    assert dist._pool(trace).exit_time.shape == (2, 300 * 300)
    dist.trace_log_prob(trace).sum().backward()
    assert torch.isfinite(dist.logits.grad).all()


@pytest.mark.cuda
def test_cuda_solve_equals_cpu_solve():
    dist = random_dist(50, batch_shape=(16,), dtype=torch.float32)
    noise = dist.sample_noise(generator=torch.Generator().manual_seed(0))
    x, trace = dist.solve(noise)
    cuda = GreedyMatching(dist.logits.cuda())
    x_cuda, trace_cuda = cuda.solve(noise.cuda())
    assert torch.equal(x_cuda.cpu(), x) and torch.equal(trace_cuda.cpu(), trace)
    assert torch.allclose(cuda.trace_log_prob(trace_cuda).cpu(), dist.trace_log_prob(trace), atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sample_with_trace_equals_solve_on_its_noise(dtype):
    """The sampling fast path (no re-validation of its own noise) agrees with the public
    sample_noise + solve on the same generator state, and with the base class's noise."""
    dist = random_dist(9, batch_shape=(4,), seed=5, dtype=dtype)
    sample = dist.sample_with_trace((3,), generator=torch.Generator().manual_seed(2))
    noise = dist.sample_noise((3,), generator=torch.Generator().manual_seed(2))
    base = StructuredDistribution.sample_noise(dist, (3,), generator=torch.Generator().manual_seed(2))
    assert torch.equal(sample.noise, noise) and torch.equal(noise, base)
    x, trace = dist.solve(noise)
    assert torch.equal(sample.x, x) and torch.equal(sample.trace, trace)
