"""TopK and Permutation against plain-Python oracles, and their specific errors."""

from __future__ import annotations

import math
import random

import pytest
import torch

from rgbench import distributions
from rgbench.distributions import Permutation, TopK


@pytest.mark.parametrize("n", [1, 2, 7, 30])
def test_topk_solve_matches_sorting_oracle(n):
    rng = random.Random(n)
    k = rng.randint(1, n)
    logits = torch.randn(8, n, generator=torch.Generator().manual_seed(n))
    logits[0, : n - k] = -torch.inf  # exactly k usable items in one row
    dist = TopK(logits, k=k)
    noise = dist.sample_noise((3,), generator=torch.Generator().manual_seed(1))
    x, trace = dist.solve(noise)
    for index in range(3 * 8):
        values = noise.reshape(-1, n)[index].tolist()
        order = sorted(range(n), key=lambda i: values[i])[:k]
        assert trace.reshape(-1, k)[index].tolist() == order
        assert x.reshape(-1, k)[index].tolist() == sorted(order)


@pytest.mark.parametrize("n", [1, 3, 30])
def test_permutation_solve_matches_sorting_oracle(n):
    dist = Permutation(torch.randn(4, n, generator=torch.Generator().manual_seed(n)))
    noise = dist.sample_noise((2,), generator=torch.Generator().manual_seed(2))
    x, trace = dist.solve(noise)
    assert torch.equal(x, trace)
    for values, perm in zip(noise.reshape(-1, n).tolist(), x.reshape(-1, n).tolist()):
        assert perm == sorted(range(n), key=lambda i: values[i])


def test_permutation_indicator_is_item_by_rank():
    dist = Permutation(torch.zeros(3))
    ind = dist.indicator(torch.tensor([2, 0, 1]))
    assert ind.tolist() == [[0, 1, 0], [0, 0, 1], [1, 0, 0]]


def test_topk_log_prob_matches_brute_force_over_orderings():
    """P(S) = sum over the k! orderings of the Plackett-Luce prefix probability."""
    from itertools import permutations

    logits = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    dist = TopK(logits, k=3)
    subset = [1, 4, 5]
    total = 0.0
    for order in permutations(subset):
        p, left = 1.0, logits.exp().tolist()
        for i in order:
            p *= left[i] / sum(left)
            left[i] = 0.0
        total += p
    assert dist.log_prob(torch.tensor(subset)).exp().item() == pytest.approx(total, rel=1e-12)


def test_topk_errors():
    with pytest.raises(ValueError, match="k=7 must be between 1 and the 5 items"):
        TopK(torch.zeros(5), k=7)
    with pytest.raises(ValueError, match="k=0"):
        TopK(torch.zeros(5), k=0)
    with pytest.raises(ValueError, match="k must be an int"):
        TopK(torch.zeros(5), k=2.0)
    with pytest.raises(ValueError, match="finite logits"):
        TopK(torch.tensor([0.0, -torch.inf, -torch.inf]), k=2)
    with pytest.raises(ValueError, match="supports k <= 10"):
        TopK(torch.zeros(12), k=11).log_prob(torch.arange(11))
    with pytest.raises(ValueError, match="trace must be a LongTensor"):
        TopK(torch.zeros(5), k=2).trace_log_prob(torch.zeros(2))
    with pytest.raises(ValueError, match="outside"):
        TopK(torch.zeros(5), k=2).trace_log_prob(torch.tensor([0, 5]))


def test_permutation_errors():
    with pytest.raises(ValueError, match="finite"):
        Permutation(torch.tensor([0.0, -torch.inf]))
    with pytest.raises(ValueError, match="repeated"):
        Permutation(torch.zeros(3)).log_prob(torch.tensor([0, 0, 1]))


def test_registry_lists_valid_names_for_unknown():
    with pytest.raises(ValueError, match="unknown distribution 'tree'.*valid names: .*topk"):
        distributions.get("tree")
    assert distributions.get("topk") is TopK


def test_zero_unit_draw_gives_zero_noise_not_nan():
    """-log1p(-U) is exactly 0 when U = 0 (probability 2^-24 per float32 draw): the noise is
    0 there on both the in-place and the differentiable path, never 0 * inf = NaN; the
    low-level scale_exponential caps what would overflow."""
    from rgbench.distributions.base import scale_exponential

    log_rate = torch.tensor([-100.0, 0.0, 100.0])
    assert scale_exponential(torch.zeros(3), log_rate).tolist() == [0.0, 0.0, 0.0]
    capped = scale_exponential(torch.ones(1), torch.tensor([-100.0])).item()
    assert math.isfinite(capped) and capped > 0.9999 * torch.finfo(torch.float32).max
    for requires_grad in (False, True):  # the in-place and the differentiable paths
        logits = torch.tensor([-100.0, 0.0, -torch.inf, 3.0]).requires_grad_(requires_grad)
        noise = TopK(logits, k=2)._scale_unit_noise(torch.zeros(2, 4))
        assert noise[:, [0, 1, 3]].eq(0).all() and torch.isinf(noise[:, 2]).all()


def test_topk_gradient_is_finite_when_a_row_has_exactly_k_usable_items():
    # Nothing is left over after the k picks in row 0: its log-sum-exp of the rest is over
    # an empty set, whose derivative must come out 0, not NaN.
    logits = torch.randn(3, 6, generator=torch.Generator().manual_seed(5))
    logits[0, :3] = -torch.inf
    logits.requires_grad_()
    dist = TopK(logits, k=3)
    trace = dist.sample_with_trace((2,), generator=torch.Generator().manual_seed(6)).trace
    dist.trace_log_prob(trace).sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert torch.equal(logits.grad[0, :3], torch.zeros(3))
    # Row 0 is a plain Plackett-Luce order of its 3 items.
    picked = logits[0].detach()[trace[:, 0]]
    expected = (picked - picked.flip(-1).logcumsumexp(-1).flip(-1)).sum(-1)
    assert torch.allclose(dist.trace_log_prob(trace)[:, 0].detach(), expected)


def test_wide_float32_spans_sample_finite_noise_with_finite_gradients():
    # A logit 105 nats below the others: absolute rates exp(logits) would overflow the draw
    # (float32 holds e^88.7); in the noise frame every draw stays finite, the reparameterised
    # gradient stays finite, and the far item (probability about e^-100) is never picked.
    logits = torch.tensor([-100.0, 0.0, 5.0, -torch.inf], requires_grad=True)
    dist = TopK(logits, k=2)
    noise = dist.sample_noise((500,), generator=torch.Generator().manual_seed(7))
    assert torch.isfinite(noise[:, :3]).all() and (noise[:, :3] > 0).all() and torch.isinf(noise[:, 3]).all()
    (-torch.log(noise[:, :3])).sum().backward()  # the perturbed logits, as SST computes them
    assert torch.isfinite(logits.grad).all() and torch.allclose(logits.grad[:3], torch.full((3,), 500.0))
    with torch.no_grad():
        trace = dist.sample_with_trace((500,), generator=torch.Generator().manual_seed(8)).trace
    assert sorted(set(trace.flatten().tolist())) == [1, 2]


@pytest.mark.parametrize("dtype, span", [(torch.float32, 160.0), (torch.float64, 1400.0)])
def test_spans_the_noise_cannot_hold_are_refused(dtype, span):
    """Beyond H + G nats (152 in float32, 1,374 in float64) distinct draws would round to
    ties: sampling and E | T raise a ValueError naming the dtype; scoring still works."""
    dist = Permutation(torch.tensor([0.0, -span, 1.0], dtype=dtype))
    with pytest.raises(ValueError, match=f"logits span {span + 1:.1f} nats.*{dtype}"):
        dist.sample()
    trace = torch.tensor([2, 0, 1])
    with pytest.raises(ValueError, match="nats"):
        dist.noise_given_trace(trace)
    assert math.isfinite(dist.trace_log_prob(trace).item())


def test_noise_log_prob_stays_finite_for_large_logits():
    # exp(100) overflows float32, but exp(logits - s) * E is about Exp(1): the E-REINFORCE
    # score 1 - lambda E must come out finite (a ListOps e-loo run died on inf * 0 = NaN).
    logits = torch.tensor([100.0, 0.0, -40.0, -torch.inf], requires_grad=True)
    dist = TopK(logits, k=2)
    noise = dist.sample_noise((200,), generator=torch.Generator().manual_seed(9))
    noise[0, 0] = 0.0  # a zero draw (U = 0) gives lambda * E = 0 exactly
    dist.noise_log_prob(noise).sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[3] == 0
    rates = (logits.detach()[:3] - dist.noise_shift).double().exp()
    rate_noise = (rates * noise[:, :3].double()).sum(0)
    assert torch.allclose(logits.grad[:3].double(), 200 - rate_noise, rtol=1e-5)


@pytest.mark.parametrize("cls, args", [(TopK, {"k": 7}), (Permutation, {})])
def test_sampled_picks_edited_to_repeat_an_item_are_refused(cls, args):
    """log P(T) of sampled picks equals that of a copy; after an in-place edit that repeats
    an item the distinctness check refuses them."""
    dist = cls(torch.randn(3, 20, generator=torch.Generator().manual_seed(5)), **args)
    trace = dist.sample_with_trace((2,), generator=torch.Generator().manual_seed(6)).trace
    assert torch.equal(dist.trace_log_prob(trace), dist.trace_log_prob(trace.clone()))
    trace[..., 1] = trace[..., 0]
    with pytest.raises(ValueError, match="repeated"):
        dist.trace_log_prob(trace)


@pytest.mark.parametrize("scale", [1.0, 40.0, 400.0])  # float32 logits spanning ~5, ~200, ~2000 nats
def test_float32_log_prob_matches_float64_on_every_path(scale):
    """float32 logits within 80 nats use float32 rates relative to the largest logit, up to
    600 nats float64 rates, wider ones a log-sum-exp; each agrees with float64."""
    logits = scale * torch.randn(4, 60, generator=torch.Generator().manual_seed(8))
    # Traces of the unit-scale instance (same support): noise cannot span 2000 nats.
    trace = TopK(logits / scale, k=10).sample_with_trace((3,), generator=torch.Generator().manual_seed(9)).trace
    single = TopK(logits, k=10).trace_log_prob(trace)
    double = TopK(logits.double(), k=10).trace_log_prob(trace)
    assert torch.allclose(single.double(), double, rtol=1e-6, atol=1e-4)
