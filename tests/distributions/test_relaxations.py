"""SST relaxations (``rgbench.distributions.relaxations``) against brute-force Gibbs marginals.

Oracles enumerate every structure with ``oracles.py`` (itertools, no rgbench code) and weight
it by exp(sum of its scores) in plain Python floats. No statistical tests here: everything is
deterministic given the fixed seeds, so the false-alarm rate is zero.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from tests.oracles import support_cle, support_kruskal, support_topk
from rgbench.distributions.relaxations import (
    arborescence_marginals,
    sinkhorn,
    spanning_tree_marginals,
    topk_marginals,
)

NEG_INF = float("-inf")
SEEDS = [0, 1, 2]


# ------------------------------------------------------------------ brute-force oracles


def gibbs_marginals(structures, score_of, edges_of, shape):
    """sum_X p(X) 1[e ∈ X] with p(X) ∝ exp(score(X)), over an explicit list of structures."""
    logs = [score_of(x) for x in structures]
    top = max(v for v in logs if v > NEG_INF)
    weights = [math.exp(v - top) if v > NEG_INF else 0.0 for v in logs]
    total = sum(weights)
    out = torch.zeros(shape, dtype=torch.float64)
    for x, w in zip(structures, weights):
        for e in edges_of(x):
            out[e] += w / total
    return out


def brute_topk(scores, k):
    s = scores.tolist()
    subsets = sorted(support_topk(len(s), k))
    return gibbs_marginals(subsets, lambda x: sum(s[i] for i in x), lambda x: x, (len(s),))


def brute_spanning_tree(scores):
    """Reads only the strict upper triangle, like the function under test."""
    n = scores.shape[-1]
    s = scores.tolist()
    trees = sorted(support_kruskal(n))  # each tree: its n-1 edges (u, v), u < v

    def edges(tree):
        return [e for u, v in tree for e in ((u, v), (v, u))]

    return gibbs_marginals(trees, lambda t: sum(s[u][v] for u, v in t), edges, (n, n))


def brute_arborescence(scores, root):
    n = scores.shape[-1]
    s = scores.tolist()
    trees = sorted(support_cle(n, root))  # each tree: parent of every node, -1 at the root

    def edges(parent):
        return [(p, v) for v, p in enumerate(parent) if v != root]

    return gibbs_marginals(trees, lambda t: sum(s[p][v] for p, v in edges(t)), edges, (n, n))


def random_scores(shape, seed, scale=1.5, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn(shape, generator=generator, dtype=dtype)


def drop_edges(scores, pairs, symmetric):
    scores = scores.clone()
    for i, j in pairs:
        scores[..., i, j] = NEG_INF
        if symmetric:
            scores[..., j, i] = NEG_INF
    return scores


# ------------------------------------------------------------------ top-k


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_topk_equals_enumeration(n, seed):
    scores = random_scores(n, seed)
    for k in range(1, n + 1):
        got = topk_marginals(scores, k)
        assert torch.allclose(got, brute_topk(scores, k), atol=1e-12), (n, k)
        assert torch.allclose(got.sum(), torch.tensor(float(k), dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_topk_with_excluded_items_equals_enumeration(seed):
    scores = random_scores(5, seed)
    scores[[1, 3]] = NEG_INF
    for k in (1, 2, 3):
        got = topk_marginals(scores, k)
        assert torch.allclose(got, brute_topk(scores, k), atol=1e-12)
        assert (got[[1, 3]] == 0).all()


def test_topk_batched_equals_one_by_one_and_sums_to_k():
    scores = random_scores((2, 3, 7), seed=4, scale=3.0)
    scores[0, 1, 2] = NEG_INF
    got = topk_marginals(scores, 3)
    for index in [(0, 0), (0, 1), (1, 2)]:
        assert torch.allclose(got[index], brute_topk(scores[index], 3), atol=1e-12)
    assert torch.allclose(got.sum(-1), torch.full((2, 3), 3.0, dtype=torch.float64), atol=1e-12)
    assert ((got >= 0) & (got <= 1 + 1e-12)).all()


def test_topk_large_scores_do_not_overflow():
    scores = torch.tensor([1000.0, 999.0, -1000.0, 0.0, NEG_INF], dtype=torch.float64)
    for k in (1, 2, 3, 4):
        assert torch.allclose(topk_marginals(scores, k), brute_topk(scores, k), atol=1e-12)


# ------------------------------------------------------------------ spanning trees


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_spanning_tree_equals_enumeration(n, seed):
    scores = random_scores((n, n), seed)  # not symmetric: only the upper triangle counts
    got = spanning_tree_marginals(scores)
    want = brute_spanning_tree(scores)
    assert torch.allclose(got, want, atol=1e-12)
    assert torch.equal(got, got.T)
    assert torch.allclose(got.sum(-1), want.sum(-1), atol=1e-12), "row sums are expected degrees"
    assert torch.allclose(got.sum(), torch.tensor(2.0 * (n - 1), dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_spanning_tree_with_missing_edges_equals_enumeration(seed):
    # Still connected: 0-1-2-3-4 path plus some chords survive.
    scores = drop_edges(random_scores((5, 5), seed), [(0, 2), (0, 3), (1, 4), (2, 4)], symmetric=False)
    got = spanning_tree_marginals(scores)
    assert torch.allclose(got, brute_spanning_tree(scores), atol=1e-12)
    assert got[0, 2] == 0 and got[2, 0] == 0


def test_spanning_tree_bridge_has_marginal_one():
    # Two triangles joined by the single edge 2-3: every spanning tree uses it.
    scores = torch.full((6, 6), NEG_INF, dtype=torch.float64)
    for i, j in [(0, 1), (0, 2), (1, 2), (2, 3), (3, 4), (3, 5), (4, 5)]:
        scores[i, j] = float(i - j)
    got = spanning_tree_marginals(scores)
    assert torch.allclose(got[2, 3], torch.tensor(1.0, dtype=torch.float64), atol=1e-12)


def test_spanning_tree_sums_at_larger_n_and_batch():
    scores = random_scores((3, 30, 30), seed=7, scale=4.0)
    got = spanning_tree_marginals(scores)
    assert torch.allclose(got.sum((-1, -2)), torch.full((3,), 58.0, dtype=torch.float64), atol=1e-8)
    assert ((got >= -1e-10) & (got <= 1 + 1e-10)).all()
    assert torch.allclose(got[1], spanning_tree_marginals(scores[1]), atol=1e-12)


def test_spanning_tree_ignores_lower_triangle_and_diagonal():
    scores = random_scores((5, 5), seed=3).requires_grad_()
    (spanning_tree_marginals(scores) * random_scores((5, 5), seed=4)).sum().backward()
    assert (scores.grad.tril() == 0).all()
    strict_upper = torch.ones(5, 5, dtype=torch.bool).triu(1)
    assert (scores.grad[strict_upper] != 0).all()


# ------------------------------------------------------------------ arborescences


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n, root", [(2, 0), (2, 1), (3, 0), (3, 2), (4, 0), (4, 2), (5, 0), (5, 2), (5, 4)])
def test_arborescence_equals_enumeration(n, root, seed):
    scores = random_scores((n, n), seed)
    got = arborescence_marginals(scores, root=root)
    assert torch.allclose(got, brute_arborescence(scores, root), atol=1e-12)
    columns = got.sum(-2)
    assert torch.allclose(columns[[v for v in range(n) if v != root]], torch.ones(n - 1, dtype=torch.float64))
    assert (got[:, root] == 0).all() and (got.diagonal() == 0).all()


@pytest.mark.parametrize("root", [0, 2])
@pytest.mark.parametrize("seed", SEEDS)
def test_arborescence_with_missing_edges_equals_enumeration(seed, root):
    # Node 4 only has the parent 3, and 1 -> 2, 2 -> 1 are missing.
    missing = [(0, 4), (1, 4), (2, 4), (1, 2), (2, 1)]
    scores = drop_edges(random_scores((5, 5), seed), missing, symmetric=False)
    got = arborescence_marginals(scores, root=root)
    assert torch.allclose(got, brute_arborescence(scores, root), atol=1e-12)
    assert torch.allclose(got[3, 4], torch.tensor(1.0, dtype=torch.float64), atol=1e-12)


def test_arborescence_batched_column_sums_at_larger_n():
    scores = random_scores((2, 3, 30, 30), seed=8, scale=4.0)
    got = arborescence_marginals(scores, root=5)
    want = torch.ones(2, 3, 30, dtype=torch.float64)
    want[..., 5] = 0
    assert torch.allclose(got.sum(-2), want, atol=1e-8)
    assert torch.allclose(got[1, 2], arborescence_marginals(scores[1, 2], root=5), atol=1e-12)


# ------------------------------------------------------------------ Sinkhorn


def assert_doubly_stochastic(matrix, atol):
    ones = torch.ones(matrix.shape[:-1], dtype=matrix.dtype)
    assert (matrix >= 0).all()
    assert torch.allclose(matrix.sum(-1), ones, atol=atol), (matrix.sum(-1) - 1).abs().max()
    assert torch.allclose(matrix.sum(-2), ones, atol=atol), (matrix.sum(-2) - 1).abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sinkhorn_doubly_stochastic_on_random_input(dtype):
    assert_doubly_stochastic(sinkhorn(random_scores((16, 10, 10), seed=1, dtype=dtype)), atol=1e-4)


def test_sinkhorn_large_magnitude_offsets_change_nothing():
    # Row/column offsets of size 1e4 overflow exp() in any precision, yet the Sinkhorn limit
    # is invariant to them; the float64 result must equal that of the plain input.
    base = random_scores((8, 6, 6), seed=2)
    offsets = 1e4 * (random_scores((8, 6, 1), seed=3) + random_scores((8, 1, 6), seed=4))
    plain = sinkhorn(base)
    shifted = sinkhorn(base + offsets)
    assert_doubly_stochastic(shifted, atol=1e-4)
    assert torch.allclose(shifted, plain, atol=1e-6)
    assert_doubly_stochastic(sinkhorn((base + offsets).float()), atol=1e-4)


@pytest.mark.slow
def test_sinkhorn_large_scale_converges_with_more_iterations():
    # High scale (low temperature) slows Sinkhorn down; with enough sweeps it still converges.
    log_alpha = random_scores((4, 5, 5), seed=5, scale=20.0)
    assert_doubly_stochastic(sinkhorn(log_alpha, iterations=20000, tol=1e-9), atol=1e-4)


def test_sinkhorn_is_a_diagonal_scaling_of_exp_log_alpha():
    # Doubly stochastic and of the form diag(u) exp(log_alpha) diag(v) pins down the Sinkhorn limit.
    log_alpha = random_scores((3, 6, 6), seed=6)
    residual = sinkhorn(log_alpha).log() - log_alpha
    centred = residual - residual.mean(-1, keepdim=True) - residual.mean(-2, keepdim=True)
    centred = centred + residual.mean((-1, -2), keepdim=True)
    assert centred.abs().max() < 1e-10


def test_sinkhorn_respects_forbidden_entries():
    log_alpha = random_scores((4, 5, 5), seed=7).diagonal_scatter(torch.full((4, 5), NEG_INF), dim1=-2, dim2=-1)
    got = sinkhorn(log_alpha, iterations=500)
    assert_doubly_stochastic(got, atol=1e-4)
    assert (got.diagonal(dim1=-2, dim2=-1) == 0).all()


# ------------------------------------------------------------------ gradients


def upper(p):
    return torch.triu(p, 1) + torch.triu(p, 1).mT


FUNCTIONS = {
    "topk": (lambda s: topk_marginals(s, 3), (2, 6)),
    "spanning_tree": (spanning_tree_marginals, (2, 5, 5)),
    "arborescence": (lambda s: arborescence_marginals(s, root=1), (2, 5, 5)),
    "sinkhorn": (lambda s: sinkhorn(s, iterations=10, tol=0.0), (2, 4, 4)),
}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_gradcheck(name):
    function, shape = FUNCTIONS[name]
    scores = random_scores(shape, seed=11).requires_grad_()
    assert gradcheck(function, (scores,))
    assert gradgradcheck(function, (scores,))


def test_log_cumsum_exp_helper_matches_torch_and_has_second_derivatives():
    # The top-k recursion's own log-cumsum-exp (torch's double backward is NaN at zero
    # upstream gradients, which the recursion produces).
    from rgbench.distributions.relaxations import _LogCumSumExp

    x = random_scores((3, 7), seed=21).requires_grad_()
    upstream = random_scores((3, 7), seed=22)
    upstream[:, -1] = 0.0
    assert torch.equal(_LogCumSumExp.apply(x), torch.logcumsumexp(x, -1))
    (mine,) = torch.autograd.grad(_LogCumSumExp.apply(x), x, upstream)
    (theirs,) = torch.autograd.grad(torch.logcumsumexp(x, -1), x, upstream)
    assert torch.allclose(mine, theirs, atol=1e-12)
    assert gradgradcheck(_LogCumSumExp.apply, (x,), grad_outputs=(upstream,))


def test_gradcheck_with_minus_inf_scores():
    scores = random_scores((2, 6), seed=12)
    scores[0, 1] = scores[1, 4] = NEG_INF
    assert gradcheck(lambda s: topk_marginals(s, 3), (scores.requires_grad_(),))
    assert gradgradcheck(lambda s: topk_marginals(s, 3), (scores,))
    edges = drop_edges(random_scores((5, 5), seed=13), [(0, 2), (1, 3)], symmetric=True)
    assert gradcheck(spanning_tree_marginals, (edges.requires_grad_(),))
    arcs = drop_edges(random_scores((5, 5), seed=14), [(0, 2), (1, 3), (4, 1)], symmetric=False)
    assert gradcheck(lambda s: arborescence_marginals(s, root=0), (arcs.requires_grad_(),))


@pytest.mark.parametrize("name", FUNCTIONS)
def test_float32_gradients_finite_at_n50_scale10(name):
    function = {
        "topk": lambda s: topk_marginals(s[..., 0, :], 10),
        "spanning_tree": spanning_tree_marginals,
        "arborescence": lambda s: arborescence_marginals(s, root=0),
        "sinkhorn": sinkhorn,
    }[name]
    scores = random_scores((2, 50, 50), seed=15, scale=10.0, dtype=torch.float32).requires_grad_()
    out = function(scores)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    (out * random_scores(out.shape, seed=16, dtype=torch.float32)).sum().backward()
    assert torch.isfinite(scores.grad).all() and scores.grad.abs().sum() > 0


def test_float32_agrees_with_float64():
    scores = random_scores((3, 20, 20), seed=17, scale=3.0)
    for function in (spanning_tree_marginals, arborescence_marginals, lambda s: topk_marginals(s[..., 0, :], 5)):
        assert torch.allclose(function(scores.float()).double(), function(scores), atol=1e-4)


@pytest.mark.parametrize("gap", [20.0, 30.0, 60.0])
def test_float32_sharp_scores_still_match_enumeration(gap):
    # A group of nodes bound by edges `gap` above those entering it: in float32 1 - softmax
    # rounds to 0 and the minor is exactly singular (the ListOps SST crash); with the LU in
    # float64 the error grows like 1e-16 exp(gap), so such elements take the exact route.
    arcs = torch.zeros(4, 4, dtype=torch.float64)
    arcs[1, 2] = arcs[2, 3] = arcs[3, 1] = gap  # a directed 3-cycle away from the root
    got = arborescence_marginals(arcs.float(), root=0)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), brute_arborescence(arcs, 0), atol=1e-6)
    edges = torch.zeros(4, 4, dtype=torch.float64)
    edges[1, 2] = edges[2, 3] = edges[1, 3] = gap  # a triangle hanging off node 0
    got = spanning_tree_marginals(edges.float())
    assert torch.allclose(got.double(), brute_spanning_tree(edges), atol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_sharp_random_scores_match_enumeration(seed):
    # Scale 30: gaps far past what an LU in float64 resolves (it was off by 0.8 here).
    scores = random_scores((6, 6), seed=40 + seed, scale=30.0)
    for root in (0, 3):
        assert torch.allclose(arborescence_marginals(scores, root), brute_arborescence(scores, root), atol=1e-7)
    assert torch.allclose(spanning_tree_marginals(scores), brute_spanning_tree(scores), atol=1e-7)


def test_exact_fallback_has_correct_gradients_and_works_without_grad():
    # A group {2, 3, 4} bound 40 nats tighter sends every element to the elimination route:
    # its double-backward graph must give the derivative of the marginals, and no_grad must
    # still return them.
    group = torch.tensor([0, 0, 1, 1, 1], dtype=torch.float64)
    bound = 40.0 * (group.unsqueeze(-1) * group.unsqueeze(-2) - torch.diag(group))
    scores = random_scores((2, 5, 5), seed=45) + bound
    assert gradcheck(lambda s: arborescence_marginals(s, root=1), (scores.clone().requires_grad_(),))
    assert gradcheck(spanning_tree_marginals, (scores.clone().requires_grad_(),))
    with torch.no_grad():
        assert torch.allclose(arborescence_marginals(scores, 1)[0], brute_arborescence(scores[0], 1), atol=1e-7)


@pytest.mark.parametrize("name", ["arborescence", "spanning_tree"])
def test_singular_element_leaks_no_nan_into_the_gradient(name):
    # Element 1 is bound 60 nats tighter inside {1, 2, 3}: a directed 3-cycle makes the
    # arborescence minor exactly singular in float64 (LU info 4, inverse inf), the triangle
    # makes the spanning tree's LU marginals wrong. Either way element 1 takes the exact
    # route; its LU backward (inf * 0) must not reach the gradient, and both elements'
    # gradients must equal those computed one element at a time.
    function = {"arborescence": arborescence_marginals, "spanning_tree": spanning_tree_marginals}[name]
    bound = torch.zeros(4, 4, dtype=torch.float64)
    bound[1, 2] = bound[2, 3] = 60.0
    if name == "arborescence":
        bound[3, 1] = 60.0  # closes the directed cycle 1 -> 2 -> 3 -> 1
    else:
        bound[1, 3] = 60.0  # the triangle's third edge, in the upper triangle that is read
    scores = torch.stack([random_scores((4, 4), seed=46), bound]).requires_grad_()
    weights = random_scores((2, 4, 4), seed=47)
    (function(scores) * weights).sum().backward()
    assert torch.isfinite(scores.grad).all()
    for i in range(2):
        one = scores[i].detach().clone().requires_grad_()
        (function(one) * weights[i]).sum().backward()
        assert torch.allclose(scores.grad[i], one.grad, atol=1e-12)


def test_planted_clusters_at_n50_keep_their_sums():
    # Eight groups of nodes whose internal edges outscore the rest by 40 to 80 nats: without
    # the exact fallback the float64 marginals were off by orders of magnitude (1e22 measured).
    generator = torch.Generator().manual_seed(44)
    scores = torch.randn(8, 50, 50, generator=generator, dtype=torch.float64)
    group = torch.randint(0, 8, (8, 50), generator=generator)
    gap = torch.linspace(40.0, 80.0, 8, dtype=torch.float64).view(8, 1, 1)
    scores = scores + gap * (group.unsqueeze(-1) == group.unsqueeze(-2))
    arcs = arborescence_marginals(scores, root=0)
    assert torch.allclose(arcs[..., 1:].sum(-2), torch.ones(8, 49, dtype=torch.float64), atol=1e-7)
    edges = spanning_tree_marginals(scores)
    assert torch.allclose(edges.sum((-2, -1)), torch.full((8,), 98.0, dtype=torch.float64), atol=1e-6)


def test_no_grad_context_and_plain_inputs_work():
    scores = random_scores((5, 5), seed=18)
    with torch.no_grad():
        assert torch.allclose(spanning_tree_marginals(scores), brute_spanning_tree(scores), atol=1e-12)
        assert torch.allclose(topk_marginals(scores[0], 2), brute_topk(scores[0], 2), atol=1e-12)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: topk_marginals(torch.zeros(4), 0), "k=0"),
        (lambda: topk_marginals(torch.zeros(4), 5), "k=5"),
        (lambda: topk_marginals(torch.zeros(4), True), "k must be an int"),
        (lambda: topk_marginals(torch.zeros(()), 1), "at least 1 dimension"),
        (lambda: topk_marginals(torch.zeros(4, dtype=torch.long), 1), "floating-point"),
        (lambda: topk_marginals(torch.tensor([0.0, NEG_INF, NEG_INF]), 2), "fewer than k=2"),
        (lambda: topk_marginals(torch.tensor([0.0, float("nan"), 1.0]), 2), "NaN"),
        (lambda: spanning_tree_marginals(torch.zeros(4)), "at least 2 dimension"),
        (lambda: spanning_tree_marginals(torch.zeros(3, 4)), "square"),
        (lambda: spanning_tree_marginals(torch.zeros(3, 3, dtype=torch.float16)), "float32 or float64"),
        (lambda: spanning_tree_marginals(drop_edges(torch.zeros(4, 4), [(0, 3), (1, 3), (2, 3)], True)), "no incident"),
        (lambda: spanning_tree_marginals(drop_edges(torch.zeros(4, 4), [(0, 2), (0, 3), (1, 2), (1, 3)], True)), "singular"),
        (lambda: spanning_tree_marginals(torch.zeros(3, 3).index_put((torch.tensor(0), torch.tensor(1)), torch.tensor(float("inf")))), "\\+inf"),
        (lambda: arborescence_marginals(torch.zeros(3, 3), root=3), "root=3"),
        (lambda: arborescence_marginals(torch.zeros(3, 3), root=-1), "root=-1"),
        (lambda: arborescence_marginals(torch.zeros(2, 3)), "square"),
        (lambda: arborescence_marginals(drop_edges(torch.zeros(3, 3), [(0, 2), (1, 2)], False)), "no incoming"),
        (lambda: arborescence_marginals(drop_edges(torch.zeros(4, 4), [(0, 2), (0, 3), (1, 2), (1, 3)], False)), "singular"),
        (lambda: sinkhorn(torch.zeros(3, 4)), "square"),
        (lambda: sinkhorn(torch.zeros(3, 3), iterations=0), "iterations=0"),
        (lambda: sinkhorn(torch.zeros(3, 3), tol=-1.0), "tol"),
        (lambda: sinkhorn(torch.zeros(3, 3).index_fill(0, torch.tensor([1]), NEG_INF)), "no entry above -inf"),
    ],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_ignored_entries_may_hold_anything():
    scores = random_scores((4, 4), seed=19)
    messy = scores.clone()
    messy[2, 0] = messy[3, 3] = float("nan")  # lower triangle / diagonal: not read
    assert torch.equal(spanning_tree_marginals(messy), spanning_tree_marginals(scores))
    messy = scores.clone()
    messy[:, 1] = float("inf")  # the root's column
    assert torch.equal(arborescence_marginals(messy, root=1), arborescence_marginals(scores, root=1))


# ------------------------------------------------------------------ device


@pytest.mark.cuda
def test_cuda_matches_cpu():
    scores = random_scores((3, 12, 12), seed=20)
    for function in (
        spanning_tree_marginals,
        lambda s: arborescence_marginals(s, root=2),
        lambda s: topk_marginals(s[..., 0, :], 4),
        lambda s: sinkhorn(s, iterations=50, tol=0.0),  # no data-dependent early stop
    ):
        leaf = scores.cuda().requires_grad_()
        out = function(leaf)
        out.square().sum().backward()
        assert out.is_cuda and leaf.grad.is_cuda
        assert torch.allclose(out.cpu(), function(scores), atol=1e-10)
