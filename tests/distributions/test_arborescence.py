"""Arborescence (Chu-Liu-Edmonds) beyond the generic contract tests.

Oracles: networkx's minimum spanning arborescence, brute force over ``oracles.support_cle``,
hand-built instances with known answers, and the base class's generic (mask-per-draw) trace
probabilities and E | T. Statistical tests state their false-alarm rate and use fixed seeds.
"""

from __future__ import annotations

from collections import Counter

import networkx as nx
import pytest
import torch
from scipy import stats

from tests import oracles
from rgbench import distributions
from rgbench.distributions.arborescence import Arborescence, ArborescenceTrace, num_draws
from rgbench.distributions.base import StructuredDistribution

INF = float("inf")


# ---------------------------------------------------------------------- helpers (no rgbench)
def usable_mask(logits, root):
    n = logits.shape[-1]
    mask = torch.isfinite(logits) & ~torch.eye(n, dtype=torch.bool)
    mask[..., :, root] = False
    return mask


def random_logits(n, batch, seed, missing=0.3, root=0, dtype=torch.float64):
    """Normal logits with a share of -inf edges; a random path from the root stays finite,
    so every node is reachable."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, n, n, generator=generator, dtype=dtype)
    logits[torch.rand(batch, n, n, generator=generator) < missing] = -INF
    for b in range(batch):
        others = [v for v in torch.randperm(n, generator=generator).tolist() if v != root]
        path = [root] + others
        for tail, head in zip(path, path[1:]):
            logits[b, tail, head] = torch.randn((), generator=generator, dtype=dtype)
    return logits


def networkx_min_arborescence(weights, usable):
    """(parent list, total weight) of the minimum arborescence; the root has no in-edges."""
    n = weights.shape[-1]
    graph = nx.DiGraph()
    graph.add_nodes_from(range(n))
    for tail, head in usable.nonzero().tolist():
        graph.add_edge(tail, head, weight=float(weights[tail, head]))
    tree = nx.minimum_spanning_arborescence(graph, attr="weight")
    parent = [-1] * n
    for tail, head in tree.edges():
        parent[head] = tail
    return parent, tree.size(weight="weight")


def brute_force_best(weights, usable, root, sign=1.0):
    """The arborescence minimising sign * total weight, by enumeration (n <= 5)."""
    n = weights.shape[-1]
    best, best_value = None, INF
    for parents in oracles.support_cle(n, root):
        if any(v != root and not usable[parents[v], v] for v in range(n)):
            continue
        value = sign * sum(float(weights[parents[v], v]) for v in range(n) if v != root)
        if value < best_value:
            best, best_value = parents, value
    return list(best), best_value


def is_arborescence(parents, root):
    for start in range(len(parents)):
        node, steps = start, 0
        while node != root:
            node, steps = parents[node], steps + 1
            if node < 0 or steps > len(parents):
                return False
    return parents[root] == -1


def snowball(n, big=1000.0):
    """Noise on which CLE contracts {1,2}, then {1,2,3}, ..., {1..n-1}: one cycle inside the
    previous one per level. The unique minimum is the chain 0 -> 1 -> 2 -> ... -> n-1.

    Node k >= 2 is cheapest from k-1 and node 1 from 2 (weight 0), so {1, 2} is a cycle; the
    super-node {1..k} is cheapest from k+1 via column 1 (E[k+1, 1] = k+1); root edges cost
    big + j, so the root is picked only at the end, into node 1.
    """
    noise = torch.full((n, n), 10 * big, dtype=torch.float64)
    noise[2, 1] = 0.0
    for k in range(2, n):
        noise[k - 1, k] = 0.0
    for k in range(3, n):
        noise[k, 1] = float(k)
    noise[0, 1:] = big + torch.arange(1, n, dtype=torch.float64)
    return noise


# ---------------------------------------------------------------------- solve
@pytest.mark.parametrize("n, seed", [(3, 0), (6, 1), (12, 2), (30, 3)])
def test_solve_agrees_with_networkx(n, seed):
    logits = random_logits(n, 4, seed)
    dist = Arborescence(logits, root=0)
    noise = dist.sample_noise(generator=torch.Generator().manual_seed(seed))
    x, _ = dist.solve(noise)
    usable = usable_mask(logits, 0)
    for b in range(4):
        parent, weight = networkx_min_arborescence(noise[b], usable[b])
        assert x[b].tolist() == parent
        ours = sum(float(noise[b, x[b, v], v]) for v in range(1, n))
        assert ours == pytest.approx(weight, rel=1e-12)


@pytest.mark.parametrize("root", [0, 2, 4])
def test_solve_and_mode_agree_with_brute_force(root):
    logits = random_logits(5, 6, seed=10 + root, root=root)
    dist = Arborescence(logits, root=root)
    noise = dist.sample_noise(generator=torch.Generator().manual_seed(root))
    x = dist.solve(noise)[0]
    mode = dist.mode
    usable = usable_mask(logits, root)
    for b in range(6):
        assert x[b].tolist() == brute_force_best(noise[b], usable[b], root)[0]
        assert mode[b].tolist() == brute_force_best(logits[b], usable[b], root, sign=-1.0)[0]


def test_nested_contractions_give_the_right_tree_and_trace():
    """A cycle {1,2} inside {1,2,3} inside {1,2,3,4}, worked out by hand (module docstring)."""
    noise = torch.full((5, 5), 20.0, dtype=torch.float64)
    for (tail, head), value in {(2, 1): 1, (1, 2): 1, (1, 3): 1, (3, 4): 1, (3, 2): 2, (4, 1): 3, (0, 3): 5,
                                (0, 1): 10, (0, 2): 10}.items():
        noise[tail, head] = value
    dist = Arborescence(torch.zeros(5, 5, dtype=torch.float64))
    x, trace = dist.solve(noise)
    assert x.tolist() == [-1, 2, 3, 0, 3]
    assert x.tolist() == brute_force_best(noise, usable_mask(dist.logits, 0), 0)[0]
    assert trace.edges.tolist() == [[2, 1], [1, 2], [1, 3], [3, 4], [3, 2], [4, 1], [0, 3]]
    owners = [sorted(row.nonzero().squeeze(-1).tolist()) for row in trace.members]
    assert owners == [[1], [2], [3], [4], [1, 2], [1, 2, 3], [1, 2, 3, 4]]
    x_ref, trace_ref = dist.reference_solve(noise)
    assert torch.equal(x_ref, x) and torch.equal(trace_ref.edges, trace.edges)


def test_snowball_nesting_matches_networkx_and_reference():
    n = 12
    noise = snowball(n)
    dist = Arborescence(torch.zeros(n, n, dtype=torch.float64))
    x, trace = dist.solve(noise)
    assert x.tolist() == [-1] + list(range(n - 1))
    assert x.tolist() == networkx_min_arborescence(noise, usable_mask(dist.logits, 0))[0]
    x_ref, trace_ref = dist.reference_solve(noise)
    assert torch.equal(x_ref, x) and torch.equal(trace_ref.edges, trace.edges)
    assert torch.equal(trace_ref.members, trace.members)


def test_ties_go_to_the_smallest_flat_key_as_in_the_reference():
    """Integer noise makes ties everywhere; fast and reference kernels must still agree."""
    for seed in range(6):
        n = 4 + seed
        logits = random_logits(n, 3, seed, missing=0.3, root=seed % n)
        dist = Arborescence(logits, root=seed % n)
        noise = torch.randint(0, 3, (8,) + logits.shape, generator=torch.Generator().manual_seed(seed)).double()
        x, trace = dist.solve(noise)
        x_ref, trace_ref = dist.reference_solve(noise)
        assert torch.equal(x, x_ref) and torch.equal(trace.edges, trace_ref.edges)
        assert torch.equal(trace.members, trace_ref.members)


def test_infinite_noise_on_a_usable_edge_still_gives_a_valid_trace():
    """Node 2's only in-edge 1 -> 2 carries E = +inf (a logit far below -88 in float32)."""
    logits = torch.zeros(4, 4)
    logits[:, 2] = -INF
    logits[1, 2] = 0.0
    dist = Arborescence(logits)
    noise = dist.sample_noise((5,), generator=torch.Generator().manual_seed(0))
    noise[:, 1, 2] = INF
    x, trace = dist.solve(noise)
    assert (x[:, 2] == 1).all()
    assert torch.isfinite(dist.trace_log_prob(trace)).all()


def test_n200_batch2_runs_and_replays():
    """The planted snowball (n - 2 nested levels) and a random instance, side by side."""
    n = 200
    logits = torch.zeros(2, n, n, dtype=torch.float64)
    dist = Arborescence(logits)
    noise = torch.stack([snowball(n), dist.sample_noise(generator=torch.Generator().manual_seed(0))[1]])
    x, trace = dist.solve(noise)
    assert trace.edges.shape == (2, num_draws(n), 2) and trace.members.shape == (2, num_draws(n), n)
    assert x[0].tolist() == [-1] + list(range(n - 1))
    expected = [[2, 1], [1, 2]] + [[k - 1, k] for k in range(3, n)] + [[k + 1, 1] for k in range(2, n - 1)] + [[0, 1]]
    assert trace.edges[0].tolist() == expected
    assert trace.members[0, n - 1 :].sum(-1).tolist() == list(range(2, n))
    assert is_arborescence(x[1].tolist(), 0)
    weight = noise[1].gather(0, x[1].clamp(min=0).unsqueeze(0)).squeeze(0)[1:].sum()
    greedy_parents = [-1] + [0] * (n - 1)  # any arborescence is an upper bound
    assert weight <= sum(float(noise[1, p, v]) for v, p in enumerate(greedy_parents) if v)
    assert torch.isfinite(dist.trace_log_prob(trace)).all()
    replay = dist.noise_given_trace(trace, generator=torch.Generator().manual_seed(1))
    assert torch.equal(dist.solve(replay)[1].edges, trace.edges)


@pytest.mark.slow
def test_n200_random_instance_agrees_with_networkx():
    n = 200
    dist = Arborescence(random_logits(n, 1, seed=5, missing=0.5)[0])
    noise = dist.sample_noise(generator=torch.Generator().manual_seed(5))
    x, _ = dist.solve(noise)
    assert x.tolist() == networkx_min_arborescence(noise, usable_mask(dist.logits, 0))[0]


def test_tiny_sizes():
    one = Arborescence(torch.zeros(1, 1))
    sample = one.sample_with_trace((3,))
    assert sample.x.tolist() == [[-1]] * 3 and sample.trace.edges.shape == (3, 0, 2)
    assert one.trace_log_prob(sample.trace).tolist() == [0.0] * 3
    two = Arborescence(torch.zeros(2, 2), root=1)
    sample = two.sample_with_trace((3,))
    assert sample.x.tolist() == [[1, -1]] * 3
    assert torch.allclose(two.trace_log_prob(sample.trace), torch.zeros(3))
    assert torch.equal(two.solve(two.noise_given_trace(sample.trace))[1].edges, sample.trace.edges)
    empty = Arborescence(torch.zeros(3, 5, 5)).sample_with_trace((0,))
    assert empty.x.shape == (0, 3, 5) and empty.trace.members.shape == (0, 3, 7, 5)
    assert Arborescence(torch.zeros(3, 5, 5)).trace_log_prob(empty.trace).shape == (0, 3)


def test_indicator_and_registry():
    dist = Arborescence(random_logits(7, 3, seed=4), root=0)
    x = dist.sample((5,))
    ind = dist.indicator(x)
    assert ind.shape == (5, 3, 7, 7) and dist.indicator_event_shape == (7, 7)
    assert torch.equal(ind.sum(-2)[..., 1:], torch.ones(5, 3, 6, dtype=ind.dtype))
    assert ind[..., 0].sum() == 0
    assert (ind.argmax(-2)[..., 1:] == x[..., 1:]).all()  # column v holds v's parent
    assert distributions.get("arborescence") is Arborescence is distributions.get("cle")
    assert Arborescence.default_args(9) == {"root": 0}
    with pytest.raises(NotImplementedError, match="trace_log_prob"):
        dist.log_prob(x)


# ---------------------------------------------------------------------- trace probabilities
def test_fast_trace_scores_equal_the_generic_ones():
    """Loop-free log P(T) (and its gradient) versus the base class's mask-per-draw path."""
    logits = random_logits(9, 3, seed=6).requires_grad_()
    dist = Arborescence(logits)
    trace = dist.sample_with_trace((40,), generator=torch.Generator().manual_seed(0)).trace
    fast = dist.trace_log_prob(trace)
    generic = StructuredDistribution.trace_log_prob(dist, trace)
    assert fast.shape == (40, 3)
    assert torch.allclose(fast, generic, atol=1e-10)
    (grad_fast,) = torch.autograd.grad(fast.sum(), logits)
    (grad_generic,) = torch.autograd.grad(generic.sum(), logits)
    assert torch.allclose(grad_fast, grad_generic, atol=1e-9)
    assert torch.isfinite(grad_fast).all()


def test_copied_traces_are_validated_and_score_the_same():
    """A trace not produced by solve goes through the replay check; same value."""
    dist = Arborescence(random_logits(8, 2, seed=7))
    trace = dist.sample_with_trace((30,), generator=torch.Generator().manual_seed(1)).trace
    copy = ArborescenceTrace(trace.edges.clone(), trace.members.clone())
    assert torch.equal(dist.trace_log_prob(copy), dist.trace_log_prob(trace))
    other = Arborescence(dist.logits.clone())  # another instance scores the same trace
    assert torch.equal(other.trace_log_prob(trace), dist.trace_log_prob(trace))


def test_a_solved_trace_edited_in_place_is_checked_again():
    """After an edit that makes a level-0 draw own a second node, the row checks refuse a
    trace that was scored before."""
    dist = Arborescence(random_logits(6, 2, seed=8))
    trace = dist.sample_with_trace((4,), generator=torch.Generator().manual_seed(1)).trace
    dist.trace_log_prob(trace)
    trace.members[..., 0, :] = True
    with pytest.raises(ValueError, match="does not belong"):
        dist.trace_log_prob(trace)


def test_underflowing_normalisers_fall_back_to_exact():
    """Cycle edges 1000 nats above the rest underflow the float64 product; the exact
    fallback must agree with the generic path, and forcing it everywhere changes nothing."""
    logits = torch.zeros(6, 6, dtype=torch.float64)
    logits[1, 2] = logits[2, 1] = 1000.0
    logits[3, 4] = logits[4, 3] = -1000.0
    # Traces from the same graph at a tenth of the scale (noise cannot span 2000 nats).
    trace = Arborescence(logits / 10).sample_with_trace((300,), generator=torch.Generator().manual_seed(2)).trace
    logits.requires_grad_()
    dist = Arborescence(logits)
    assert (trace.edges[:, 5, 0] >= 0).any(), "the instance should contract a cycle"
    fast = dist.trace_log_prob(trace)
    assert torch.isfinite(fast).all()
    assert torch.allclose(fast, StructuredDistribution.trace_log_prob(dist, trace), atol=1e-9)
    assert torch.isfinite(torch.autograd.grad(fast.sum(), logits)[0]).all()
    random = Arborescence(random_logits(7, 2, seed=3))
    trace = random.sample_with_trace((50,), generator=torch.Generator().manual_seed(3)).trace
    certified = random.trace_log_prob(trace)
    random.certified_gap = -INF  # every contracted draw takes the exact path
    assert torch.allclose(random.trace_log_prob(trace), certified, atol=1e-12)


def test_noise_given_trace_replays_and_matches_the_generic_law():
    """Both E | T samplers reproduce T; their means agree (two-sample z-tests, Bonferroni
    over the usable edges, family-wise false-alarm rate 1e-3)."""
    dist = Arborescence(random_logits(6, 1, seed=8)[0])
    trace = dist.sample_with_trace(generator=torch.Generator().manual_seed(4)).trace
    draws = 20_000
    expanded = ArborescenceTrace(*(t.expand((draws,) + t.shape) for t in trace))
    fast = dist.noise_given_trace(expanded, generator=torch.Generator().manual_seed(5))
    generic = StructuredDistribution.noise_given_trace(dist, expanded, generator=torch.Generator().manual_seed(6))
    for noise in (fast[:500], generic[:500]):
        assert torch.equal(dist.solve(noise)[1].edges, expanded.edges[:500])
    usable = usable_mask(dist.logits, 0)
    a, b = fast[:, usable], generic[:, usable]
    z = (a.mean(0) - b.mean(0)) / (a.var(0) / draws + b.var(0) / draws).sqrt()
    assert (z.abs() < stats.norm.isf(1e-3 / 2 / z.numel())).all(), z


def test_sampled_parents_match_enumeration_with_missing_edges():
    """Chi-square of 20,000 sampled X at n = 5 with -inf edges against P(X) summed over the
    enumerated traces; rare cells pooled; false-alarm rate 1e-3."""
    logits = random_logits(5, 1, seed=9, missing=0.25)[0] * 0.7
    dist = Arborescence(logits, root=0)
    enum = dist.enumerate_traces()
    by_x = Counter()
    for x, p in zip(map(tuple, enum.x.tolist()), enum.log_probs.exp().tolist()):
        by_x[x] += p
    usable = usable_mask(logits, 0)
    support = {x for x in oracles.support_cle(5, 0) if all(v == 0 or bool(usable[x[v], v]) for v in range(5))}
    assert set(by_x) == support
    draws = 20_000
    sampled = Counter(map(tuple, dist.sample((draws,), generator=torch.Generator().manual_seed(7)).tolist()))
    keys = sorted(by_x)
    expected = torch.tensor([draws * by_x[k] for k in keys], dtype=torch.float64)
    observed = torch.tensor([sampled.get(k, 0) for k in keys], dtype=torch.float64)
    big = expected >= 5
    obs, exp = observed[big], expected[big]
    if expected[~big].sum() >= 5:
        obs = torch.cat([obs, observed[~big].sum().reshape(1)])
        exp = torch.cat([exp, expected[~big].sum().reshape(1)])
    exp = exp * obs.sum() / exp.sum()
    assert stats.chisquare(obs.numpy(), exp.numpy()).pvalue > 1e-3


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("root, match", [(-1, "root=-1"), (4, "root=4"), (1.0, "root must be an int"),
                                         (True, "root must be an int"), ("0", "root must be an int")])
def test_bad_root(root, match):
    with pytest.raises(ValueError, match=match):
        Arborescence(torch.zeros(4, 4), root=root)


def test_unreachable_node():
    logits = torch.zeros(2, 5, 5)
    logits[1, :, 3] = -INF  # node 3 only from 4, node 4 only from 3: a closed pair
    logits[1, :, 4] = -INF
    logits[1, 4, 3] = logits[1, 3, 4] = 0.0
    with pytest.raises(ValueError, match=r"node 3 is unreachable from root 0 in batch element \(1,\)"):
        Arborescence(logits)
    ignored = torch.zeros(4, 4)
    ignored[:, 0] = -INF  # the root's column and the diagonal are ignored
    ignored.fill_diagonal_(-INF)
    Arborescence(ignored).sample()


def _sample_with_contraction(n=6, seed=11):
    dist = Arborescence(random_logits(n, 1, seed=seed, missing=0.0)[0])
    sample = dist.sample_with_trace((200,), generator=torch.Generator().manual_seed(seed))
    active = (sample.trace.edges[..., 0] >= 0).sum(-1)
    wanted = (active > n) & (active < dist.num_draws)  # >= 2 contractions and a free slot
    assert wanted.any(), "need a trace with at least two contractions and padding"
    pick = int(wanted.nonzero()[0])
    return dist, ArborescenceTrace(sample.trace.edges[pick].clone(), sample.trace.members[pick].clone())


@pytest.mark.parametrize("score", ["trace_log_prob", "noise_given_trace"])
def test_every_single_member_flip_is_rejected(score):
    dist, trace = _sample_with_contraction()
    getattr(dist, score)(trace)
    rows, n = trace.members.shape
    for row in range(rows):
        for node in range(n):
            members = trace.members.clone()
            members[row, node] ^= True
            with pytest.raises(ValueError, match="trace"):
                getattr(dist, score)(ArborescenceTrace(trace.edges, members))


def _edit(trace, row, edge=None, owner=None):
    edges, members = trace.edges.clone(), trace.members.clone()
    if edge is not None:
        edges[row] = torch.tensor(edge)
    if owner is not None:
        members[row] = owner
    return ArborescenceTrace(edges, members)


def _swap_rows(trace, a, b):
    order = list(range(trace.edges.shape[0]))
    order[a], order[b] = b, a
    return ArborescenceTrace(trace.edges[order], trace.members[order])


def _last_active(trace):
    return int((trace.edges[:, 0] >= 0).sum()) - 1


# Each corruption maps (n, trace) of a trace with >= 2 contractions (root 0) to a foreign trace.
CORRUPTIONS = {
    "level-0 self loop": lambda n, t: _edit(t, 0, edge=(1, 1)),
    "edge into the root": lambda n, t: _edit(t, 0, edge=(1, 0)),
    "contracted edge from inside": lambda n, t: _edit(t, n - 1, edge=(int(t.edges[n - 1, 1]),) * 2),
    "head outside its owner": lambda n, t: _edit(
        t, n - 1, edge=(int(t.edges[n - 1, 0]), int((~t.members[n - 1]).nonzero()[-1]))
    ),
    "swapped level-0 rows": lambda n, t: _swap_rows(t, 0, 1),
    "swapped contracted rows": lambda n, t: _swap_rows(t, n - 1, n),
    "truncated": lambda n, t: _edit(t, _last_active(t), edge=(-1, -1), owner=False),
    "extra draw": lambda n, t: _edit(
        t, _last_active(t) + 1, edge=tuple(t.edges[n - 1].tolist()), owner=t.members[n - 1]
    ),
    "half padded": lambda n, t: _edit(t, _last_active(t), edge=(int(t.edges[_last_active(t), 0]), -1)),
}


@pytest.mark.parametrize("score", ["trace_log_prob", "noise_given_trace"])
@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupted_traces_are_rejected(score, corruption):
    dist, trace = _sample_with_contraction()
    with pytest.raises(ValueError, match="trace"):
        getattr(dist, score)(CORRUPTIONS[corruption](dist.n, trace))


def test_in_place_edit_of_a_sampled_trace_is_caught():
    dist, _ = _sample_with_contraction()
    trace = dist.sample_with_trace((50,), generator=torch.Generator().manual_seed(3)).trace
    dist.trace_log_prob(trace)
    row = int((trace.edges[:, dist.n - 1, 0] >= 0).nonzero()[0])
    trace.members[row, dist.n - 1, :] ^= True  # the solve memo must not vouch for this
    with pytest.raises(ValueError, match="trace"):
        dist.trace_log_prob(trace)


def test_trace_with_a_missing_edge_of_another_instance_is_rejected():
    full = Arborescence(torch.zeros(5, 5))
    trace = full.sample_with_trace((200,), generator=torch.Generator().manual_seed(0)).trace
    logits = torch.zeros(5, 5)
    logits[2, 1] = -INF
    sparse = Arborescence(logits)
    uses = (trace.edges == torch.tensor([2, 1])).all(-1).any(-1)
    with pytest.raises(ValueError, match="trace"):
        sparse.trace_log_prob(ArborescenceTrace(trace.edges[uses], trace.members[uses]))
    ok = ArborescenceTrace(trace.edges[~uses], trace.members[~uses])
    assert torch.isfinite(sparse.trace_log_prob(ok)).all()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda e, m: e, "ArborescenceTrace"),
        (lambda e, m: (e,), "ArborescenceTrace"),
        (lambda e, m: (e.int(), m), "edges must be a LongTensor"),
        (lambda e, m: (e[..., :-1, :], m), "edges must be a LongTensor of shape"),
        (lambda e, m: (e, m.float()), "members must be a BoolTensor"),
        (lambda e, m: (e, m[..., :-1]), r"members must be a BoolTensor of shape \(\.\.\., 7, 5\)"),
        (lambda e, m: (e[:2], m[:2]), "do not broadcast with batch_shape"),
        (lambda e, m: (e.clamp(min=0) + 5, m), r"outside -1\.\.4"),
    ],
    ids=["tensor", "one-tuple", "int32", "rows", "float-members", "columns", "lead", "range"],
)
@pytest.mark.parametrize("path", ["fast", "generic"])
def test_malformed_traces(make, match, path):
    dist = Arborescence(torch.zeros(3, 5, 5))
    trace = dist.sample_with_trace()
    bad = make(*trace.trace)
    score = dist.trace_log_prob if path == "fast" else lambda t: StructuredDistribution.trace_log_prob(dist, t)
    with pytest.raises(ValueError, match=match):
        score(bad)


@pytest.mark.cuda
def test_cuda_matches_cpu():
    logits = random_logits(30, 4, seed=12, dtype=torch.float32)
    cpu = Arborescence(logits)
    cuda = Arborescence(logits.cuda().requires_grad_())
    noise = cpu.sample_noise((3,), generator=torch.Generator().manual_seed(0))
    x, trace = cuda.solve(noise.cuda())
    x_cpu, trace_cpu = cpu.solve(noise)
    assert torch.equal(x.cpu(), x_cpu) and torch.equal(trace.members.cpu(), trace_cpu.members)
    lp = cuda.trace_log_prob(trace)
    assert torch.allclose(lp.cpu(), cpu.trace_log_prob(trace_cpu), atol=1e-4)
    lp.sum().backward()
    assert torch.equal(cuda.solve(cuda.noise_given_trace(trace))[1].edges, trace.edges)


# ---------------------------------------------------------------------- fast kernel paths
def test_levels_with_several_cycles_per_row_match_the_reference():
    """Normal noise at n = 40 leaves several super-nodes drawing in one row at levels 1-3
    (the pointer-doubling branch of ``solve``) before the single-cycle levels; quantised
    noise adds ties. Every row must equal the plain reference run on the same noise."""
    n = 40
    logits = random_logits(n, 6, seed=21, missing=0.2)
    dist = Arborescence(logits)
    noise = dist.sample_noise((2,), generator=torch.Generator().manual_seed(21))
    noise[1] = (noise[1] * 4).round()
    x, trace = dist.solve(noise)
    x_ref, trace_ref = dist.reference_solve(noise)
    assert torch.equal(x, x_ref) and torch.equal(trace.edges, trace_ref.edges)
    assert torch.equal(trace.members, trace_ref.members)
    # Some row contracts two disjoint cycles at level 1: two owners of size >= 2, neither inside the other.
    owners = trace.members[..., n - 1 :, :].flatten(0, -3)
    sizes = owners.sum(-1)
    overlap = (owners.unsqueeze(-2) & owners.unsqueeze(-3)).any(-1)
    disjoint = (sizes.unsqueeze(-1) >= 2) & (sizes.unsqueeze(-2) >= 2) & ~overlap
    assert disjoint.any()


@pytest.mark.parametrize("value", [0.0, -100.0, 300.0])
def test_sampling_path_equals_solve_on_its_noise(value):
    """``sample_with_trace`` hands its own noise to the solver unchecked; at any offset of
    the logits (float32 holds no absolute rate at +-100) the noise stays finite on the
    usable edges and ``solve`` on it gives the same X and T."""
    logits = random_logits(8, 5, seed=3, missing=0.0, dtype=torch.float32) + value
    dist = Arborescence(logits)
    sample = dist.sample_with_trace((3,), generator=torch.Generator().manual_seed(4))
    n = logits.shape[-1]
    into_non_root = sample.noise[..., 1:].masked_fill(torch.eye(n, dtype=torch.bool)[:, 1:], 0.0)
    assert bool(torch.isfinite(into_non_root).all())
    assert bool(torch.isinf(sample.noise[..., 1:, 1:].diagonal(dim1=-2, dim2=-1)).all())
    x, trace = dist.solve(sample.noise)
    assert torch.equal(sample.x, x) and torch.equal(sample.trace.edges, trace.edges)
    assert torch.equal(sample.trace.members, trace.members)
