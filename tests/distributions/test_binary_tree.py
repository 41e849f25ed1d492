"""BinaryTree: the batched kernels against plain recursive Python, exhaustive checks of
trace validation, and the O(n log n) helpers against brute force.

Oracles here never call rgbench. Statistical tests use fixed seeds and state their
false-alarm rates.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy import stats

from tests import oracles
from rgbench.distributions.base import StructuredDistribution
from rgbench.distributions.binary_tree import (
    BinaryTree,
    check_parent_array,
    nearest_smaller,
    path_sums,
    segment_logsumexp,
    subtree_logsumexp,
    subtree_sums,
)


def python_tree(values):
    """Divide and conquer on a list: the first minimum of each segment is its root."""
    parent = [None] * len(values)

    def build(lo, hi, up):
        if lo >= hi:
            return
        root = min(range(lo, hi), key=values.__getitem__)
        parent[root] = up
        build(lo, root, root)
        build(root + 1, hi, root)

    build(0, len(values), -1)
    return parent


def python_segments(parent):
    """(lo, hi) of every node's subtree, from the descendants of each node."""
    n = len(parent)
    lo, hi = list(range(n)), list(range(n))
    for v in range(n):
        u = parent[v]
        while u != -1:
            lo[u], hi[u] = min(lo[u], v), max(hi[u], v)
            u = parent[u]
    return lo, hi


def python_log_prob(logits, parent):
    lo, hi = python_segments(parent)
    total = 0.0
    for v in range(len(parent)):
        segment = logits[lo[v] : hi[v] + 1]
        peak = max(segment)
        total += logits[v] - (peak + math.log(sum(math.exp(x - peak) for x in segment)))
    return total


def random_dist(n, batch_shape=(), seed=0, dtype=torch.float64, scale=1.0, requires_grad=False):
    generator = torch.Generator().manual_seed(seed)
    logits = BinaryTree.random_logits(n, batch_shape, scale=scale, generator=generator, dtype=dtype)
    return BinaryTree(logits.requires_grad_(requires_grad))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 3, 10, 100])
def test_solve_matches_python_recursion(n, dtype):
    generator = torch.Generator().manual_seed(n)
    special = torch.randn(4, n, generator=generator, dtype=dtype)
    pick = torch.randint(0, 5, (4, n), generator=generator)
    special = torch.where(pick == 0, torch.inf, torch.where(pick == 1, -torch.inf, special))
    kinds = {
        "smooth": torch.rand(4, n, generator=generator, dtype=dtype),
        "tied": torch.randint(0, 3, (4, n), generator=generator).to(dtype),
        "special": special,
    }
    dist = BinaryTree(torch.zeros(n, dtype=dtype))
    for kind, noise in kinds.items():
        x, trace = dist.solve(noise)
        assert torch.equal(x, trace)
        for b in range(4):
            assert x[b].tolist() == python_tree(noise[b].tolist()), kind


def test_solve_shapes():
    dist = random_dist(6, batch_shape=(3,), dtype=torch.float32)
    x, _ = dist.solve(dist.sample_noise((2,)))
    assert x.shape == (2, 3, 6) and x.dtype == torch.long
    assert dist.solve(dist.sample_noise((0,)))[0].shape == (0, 3, 6)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_validation_accepts_exactly_the_binary_trees(n):
    """Every array in {-1..n-1}^n: valid iff it is one of the Catalan(n) trees, and then
    its segments are the spans of the subtrees."""
    arrays = torch.tensor(list(itertools.product(range(-1, n), repeat=n)))
    check = check_parent_array(arrays)
    support = oracles.support_binary_tree(n)
    expected = torch.tensor([tuple(a) in support for a in arrays.tolist()])
    assert torch.equal(check.valid, expected)
    assert int(check.valid.sum()) == oracles.catalan(n)
    for array, lo, hi in zip(arrays[check.valid].tolist(), check.lo[check.valid].tolist(), check.hi[check.valid].tolist()):
        assert (lo, hi) == tuple(map(list, python_segments(array)))


@pytest.mark.parametrize(
    "parent, match",
    [
        ([1, -1, 1, 5], "outside"),
        ([1, -1, 2], "own parent"),
        ([-1, -1, 1], "exactly one root"),
        ([1, 2, 0], "exactly one root"),
        ([2, 2, -1], "two left"),
        ([-1, 0, 0], "two left or two right"),
        ([2, -1, 1], "does not belong"),  # 0 under 2: subtree of 2 is {0, 2}, not contiguous
        ([1, 2, 1, -1], "does not belong"),  # a cycle 1 -> 2 -> 1 beside the root
    ],
)
def test_invalid_traces_raise_with_the_reason(parent, match):
    dist = random_dist(len(parent))
    with pytest.raises(ValueError, match=match):
        dist.trace_log_prob(torch.tensor(parent))


@pytest.mark.parametrize("bad", [torch.zeros(4), torch.zeros(5, dtype=torch.long), [0, 1, -1, 2]])
def test_trace_type_and_shape_are_checked(bad):
    with pytest.raises(ValueError, match="LongTensor of shape"):
        random_dist(4).trace_log_prob(bad)


def test_trace_batch_must_broadcast():
    dist = random_dist(4, batch_shape=(2,))
    with pytest.raises(ValueError, match="broadcast"):
        dist.trace_log_prob(torch.tensor([1, -1, 3, 1]).expand(3, 4))


def test_unbatched_trace_broadcasts_over_the_batch():
    dist = random_dist(5, batch_shape=(3,), seed=6)
    trace = torch.tensor([1, -1, 3, 1, 3])
    assert torch.allclose(dist.trace_log_prob(trace), dist.trace_log_prob(trace.expand(3, 5)))
    assert dist.noise_given_trace(trace).shape == (3, 5)


def test_trace_log_prob_matches_python_formula():
    dist = random_dist(20, batch_shape=(3,), seed=1, scale=3.0)
    trace = dist.sample_with_trace((4,), generator=torch.Generator().manual_seed(0)).trace
    fast = dist.trace_log_prob(trace)
    for s in range(4):
        for b in range(3):
            expected = python_log_prob(dist.logits[b].tolist(), trace[s, b].tolist())
            assert fast[s, b].item() == pytest.approx(expected, abs=1e-10)
    assert torch.equal(dist.log_prob(trace), fast)


@pytest.mark.parametrize("n", [6, 7])
def test_enumeration_has_catalan_many_trees(n):
    dist = random_dist(n, seed=n)
    enum = dist.enumerate_traces()
    assert len(enum.log_probs) == oracles.catalan(n)
    assert torch.allclose(enum.log_probs.exp().sum(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.allclose(dist.trace_log_prob(enum.traces), enum.log_probs, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_noise_given_trace_replays_the_trace(dtype):
    dist = random_dist(100, batch_shape=(4,), seed=3, dtype=dtype)
    trace = dist.sample_with_trace((8,), generator=torch.Generator().manual_seed(2)).trace
    noise = dist.noise_given_trace(trace, generator=torch.Generator().manual_seed(3))
    assert noise.shape == (8, 4, 100) and noise.dtype == dtype
    assert torch.equal(dist.solve(noise)[1], trace)
    generic = StructuredDistribution.noise_given_trace(dist, trace, generator=torch.Generator().manual_seed(4))
    assert torch.equal(dist.solve(generic)[1], trace)


def test_noise_given_trace_increments_are_exponential():
    """Given T, E_v - E_parent(v) ~ Exp(sum of the rates over v's segment) (E_root itself for
    the root). z-test of each increment's mean against 1 / rate over 20,000 draws,
    Bonferroni-corrected to a family-wise false-alarm rate of 1e-3."""
    dist = random_dist(6, seed=5, scale=1.5)
    parent = torch.tensor([1, 3, 1, -1, 5, 3])
    draws = 20_000
    noise = dist.noise_given_trace(parent.expand(draws, 6), generator=torch.Generator().manual_seed(6))
    up = torch.where(parent < 0, torch.zeros_like(noise), noise[:, parent.clamp(min=0)])
    increments = noise - up
    lo, hi = python_segments(parent.tolist())
    relative = dist.logits - dist.noise_shift  # the noise frame: rates exp(logits - s)
    rates = torch.stack([relative[l : h + 1].exp().sum() for l, h in zip(lo, hi)])
    z = (increments.mean(0) - 1 / rates) / (1 / rates / math.sqrt(draws))  # sd of Exp = its mean
    assert (z.abs() < stats.norm.isf(1e-3 / 2 / 6)).all(), z


def test_noise_given_trace_is_reparameterised():
    dist = random_dist(8, seed=4, requires_grad=True)
    trace = dist.sample_with_trace((3,), generator=torch.Generator().manual_seed(5)).trace
    noise = dist.noise_given_trace(trace, generator=torch.Generator().manual_seed(6))
    (grad,) = torch.autograd.grad(noise.sum(), dist.logits)
    assert torch.isfinite(grad).all() and (grad != 0).any()


def test_indicator_links_parent_to_child():
    dist = random_dist(7, batch_shape=(3,), dtype=torch.float32)
    x = dist.sample((2,))
    ind = dist.indicator(x)
    assert ind.shape == (2, 3, 7, 7) and ind.dtype == torch.float32
    expected = (x.unsqueeze(-2) == torch.arange(7).unsqueeze(-1)).float()  # [p, c]: x[c] == p
    assert torch.equal(ind, expected)
    assert ind.sum((-1, -2)).eq(6).all()  # n - 1 links; the root has no parent


def test_mode_puts_the_largest_logit_at_the_root():
    dist = BinaryTree(torch.tensor([1.0, 4.0, 2.0, 3.0, 0.0]))
    assert dist.mode.tolist() == [1, -1, 3, 1, 3]


def test_logits_must_be_finite():
    with pytest.raises(ValueError, match="finite"):
        BinaryTree(torch.tensor([0.0, -torch.inf, 1.0]))


@pytest.mark.parametrize("left_ties", [False, True])
def test_nearest_smaller_matches_brute_force(left_ties):
    generator = torch.Generator().manual_seed(7)
    for n in (1, 2, 5, 33, 64, 65):
        key = torch.randint(0, 6, (5, n), generator=generator)
        left, right = nearest_smaller(key, left_ties=left_ties)
        for b in range(5):
            k = key[b].tolist()
            for v in range(n):
                smaller_left = [j for j in range(v) if (k[j] <= k[v] if left_ties else k[j] < k[v])]
                smaller_right = [j for j in range(v + 1, n) if k[j] < k[v]]
                assert left[b, v] == (smaller_left[-1] if smaller_left else -1)
                assert right[b, v] == (smaller_right[0] if smaller_right else n)


def test_path_sums_match_python():
    dist = random_dist(40, seed=8)
    parent = dist.sample((3,))
    values = torch.randn(3, 40, dtype=torch.float64)
    sums = path_sums(values, parent)
    for b in range(3):
        for v in range(40):
            expected, u = 0.0, v
            while u != -1:
                expected, u = expected + values[b, u].item(), parent[b, u].item()
            assert sums[b, v].item() == pytest.approx(expected, abs=1e-12)


def test_segment_logsumexp_is_exact_and_stable():
    """Against a masked logsumexp, with logits spread over +-300 (prefix sums would fail),
    and with gradcheck in float64."""
    generator = torch.Generator().manual_seed(9)
    n = 37
    logits = 300 * torch.randn(4, n, generator=generator, dtype=torch.float64)
    parent = random_dist(n, batch_shape=(4,), seed=9).sample()
    check = check_parent_array(parent)
    index = torch.arange(n)
    mask = (index >= check.lo.unsqueeze(-1)) & (index <= check.hi.unsqueeze(-1))
    expected = torch.logsumexp(torch.where(mask, logits.unsqueeze(-2), -torch.inf), -1)
    assert torch.allclose(segment_logsumexp(logits, check.lo, check.hi), expected, rtol=1e-12, atol=1e-9)
    small = logits[:3, :9].clone().div_(100).requires_grad_()
    check = check_parent_array(random_dist(9, batch_shape=(3,), seed=10).sample())
    assert torch.autograd.gradcheck(lambda l: segment_logsumexp(l, check.lo, check.hi), (small,))


def test_subtree_sums_match_python():
    dist = random_dist(40, seed=8)
    parent = dist.sample((3,))
    values = torch.randn(3, 40, dtype=torch.float64)
    sums = subtree_sums(values, check_parent_array(parent).jumps)
    for b in range(3):
        expected = [0.0] * 40
        for v in range(40):
            u = v
            while u != -1:  # v's value counts in the subtree of every node on its path up
                expected[u] += values[b, v].item()
                u = parent[b, u].item()
        assert sums[b].tolist() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("scale", [3.0, 300.0])  # within 600 nats: subtree sums; wider: sparse table
def test_subtree_logsumexp_matches_masked_logsumexp(scale):
    generator = torch.Generator().manual_seed(11)
    n = 37
    logits = scale * torch.randn(4, n, generator=generator, dtype=torch.float64)
    parent = random_dist(n, batch_shape=(4,), seed=11).sample()
    lo, hi = torch.tensor([python_segments(array) for array in parent.tolist()]).unbind(1)
    index = torch.arange(n)
    mask = (index >= lo.unsqueeze(-1)) & (index <= hi.unsqueeze(-1))
    expected = torch.logsumexp(torch.where(mask, logits.unsqueeze(-2), -torch.inf), -1)
    check = check_parent_array(parent)
    assert check.valid.all() and torch.allclose(subtree_logsumexp(logits, check), expected, rtol=1e-13, atol=0)
    small = logits[:3, :9].clone().requires_grad_()
    check = check_parent_array(random_dist(9, batch_shape=(3,), seed=12).sample())
    assert torch.autograd.gradcheck(lambda l: subtree_logsumexp(l, check), (small,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_solved_trees_score_exactly_like_copies(dtype):
    """log P(T), its gradient, E | T and the segments of a tree that solve returned equal
    those of a copy of the tree (nothing is remembered between solve and scoring)."""
    dist = random_dist(40, batch_shape=(4,), seed=13, dtype=dtype, requires_grad=True)
    trace = dist.sample_with_trace((3,), generator=torch.Generator().manual_seed(1)).trace
    copy = trace.clone()
    solved, checked = dist._checked(trace), dist._checked(copy)
    assert torch.equal(solved.lo, checked.lo) and torch.equal(solved.hi, checked.hi)
    scores = dist.trace_log_prob(trace), dist.trace_log_prob(copy)
    assert torch.equal(*scores)
    grads = [torch.autograd.grad(score.sum(), dist.logits)[0] for score in scores]
    assert torch.equal(*grads)
    noise = [dist.noise_given_trace(t, torch.Generator().manual_seed(2)) for t in (trace, copy)]
    assert torch.equal(*noise)


def test_a_solved_tree_edited_in_place_is_validated_again():
    dist = random_dist(6, seed=14)
    trace = dist.sample()
    trace[trace == -1] = 0 if trace[0] != -1 else 1  # the root gets a parent: no root left
    with pytest.raises(ValueError, match="exactly one root|own parent"):
        dist.trace_log_prob(trace)


def test_large_instance_runs():
    dist = random_dist(1000, batch_shape=(2,), dtype=torch.float32, requires_grad=True)
    trace = dist.sample_with_trace().trace
    dist.trace_log_prob(trace).sum().backward()
    assert torch.isfinite(dist.logits.grad).all()
    assert torch.equal(dist.solve(dist.noise_given_trace(trace))[1], trace)


@pytest.mark.cuda
def test_cuda_solve_equals_cpu_solve():
    dist = random_dist(100, batch_shape=(16,), dtype=torch.float32)
    noise = dist.sample_noise(generator=torch.Generator().manual_seed(0))
    x, _ = dist.solve(noise)
    cuda = BinaryTree(dist.logits.cuda())
    x_cuda, _ = cuda.solve(noise.cuda())
    assert torch.equal(x_cuda.cpu(), x)
    assert torch.allclose(cuda.trace_log_prob(x_cuda).cpu(), dist.trace_log_prob(x), atol=1e-4)
