"""SpanningTree (Kruskal) against networkx, brute force and plain-Python oracles.

The generic checks (enumeration, chi-square, E | T by rejection, gradcheck, ...) run from
``test_distribution_contract.py``; this file covers what is specific to spanning trees.
Statistical tests use fixed seeds and state their false-alarm rate.
"""

from __future__ import annotations

import math
import random
from itertools import combinations

import networkx as nx
import pytest
import torch
from scipy import stats

from rgbench import distributions
from rgbench.distributions import StructuredDistribution
from rgbench.distributions import spanning_tree
from rgbench.distributions.spanning_tree import SpanningTree, merge_times


# ---------------------------------------------------------------------- oracles (no rgbench)
def random_graph_logits(n, batch, seed, drop=0.3, dtype=torch.float64):
    """Symmetric logits with about ``drop`` of the edges missing, connected by a random path."""
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, n, n, generator=generator, dtype=dtype)
    logits = logits.triu(1) + logits.triu(1).transpose(-1, -2)
    for b in range(batch):
        order = rng.sample(range(n), n)
        path = {tuple(sorted(pair)) for pair in zip(order, order[1:])}
        for i, j in combinations(range(n), 2):
            if (i, j) not in path and rng.random() < drop:
                logits[b, i, j] = logits[b, j, i] = -math.inf
    return logits


def networkx_mst(noise, logits):
    """The minimum spanning tree of the finite edges (i < j) under weights noise[i, j]."""
    n = len(noise)
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    for i, j in combinations(range(n), 2):
        if math.isfinite(logits[i][j]):
            graph.add_edge(i, j, weight=noise[i][j])
    return sorted(tuple(sorted(e)) for e in nx.minimum_spanning_tree(graph).edges())


def python_kruskal(noise):
    """Kruskal's trace on a complete graph, edges (i < j) scanned by (noise[i][j], i * n + j)."""
    n = len(noise)
    component = list(range(n))
    trace = []
    for _, _, (i, j) in sorted((noise[i][j], i * n + j, (i, j)) for i, j in combinations(range(n), 2)):
        if component[i] != component[j]:
            old = component[j]
            component = [component[i] if c == old else c for c in component]
            trace.append([i, j])
    return trace


def python_trace_log_prob(logits, trace):
    """log P(T) from its definition: a union-find and the edges crossing it at each step."""
    n = len(logits)
    component = list(range(n))

    def find(a):
        while component[a] != a:
            a = component[a]
        return a

    total = 0.0
    for u, v in trace:
        crossing = [
            logits[i][j] for i, j in combinations(range(n), 2) if math.isfinite(logits[i][j]) and find(i) != find(j)
        ]
        top = max(crossing)
        total += logits[u][v] - (top + math.log(sum(math.exp(x - top) for x in crossing)))
        component[find(v)] = find(u)
    return total


def python_merge_times(trace, n):
    times = [[0] * n for _ in range(n)]
    groups = [{i} for i in range(n)]
    for step, (u, v) in enumerate(trace, start=1):
        a = next(g for g in groups if u in g)
        b = next(g for g in groups if v in g)
        for i in a:
            for j in b:
                times[i][j] = times[j][i] = step
        groups.remove(b)
        a |= b
    return times


# ---------------------------------------------------------------------- solve
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["packed-float32", "two-key-float64"])
@pytest.mark.parametrize("n", [2, 3, 7, 16, 30])
def test_solve_matches_networkx(n, dtype):
    logits = random_graph_logits(n, batch=4, seed=n, dtype=dtype)
    dist = SpanningTree(logits)
    noise = dist.sample_noise((3,), generator=torch.Generator().manual_seed(n))
    x, trace = dist.solve(noise)
    assert x.shape == trace.shape == (3, 4, n - 1, 2)
    for s in range(3):
        for b in range(4):
            values = noise[s, b].tolist()
            expected = networkx_mst(values, logits[b].tolist())
            assert [tuple(e) for e in x[s, b].tolist()] == expected
            # The trace: the same edges, by increasing utility.
            assert sorted(tuple(e) for e in trace[s, b].tolist()) == expected
            picked = [values[u][v] for u, v in trace[s, b].tolist()]
            assert picked == sorted(picked)


def test_float32_and_float64_kernels_agree():
    logits = random_graph_logits(12, batch=8, seed=1)
    noise = SpanningTree(logits).sample_noise((16,), generator=torch.Generator().manual_seed(0)).float()
    x32, t32 = SpanningTree(logits.float()).solve(noise)
    x64, t64 = SpanningTree(logits).solve(noise.double())  # the same values, exactly
    assert torch.equal(x32, x64) and torch.equal(t32, t64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ties_are_broken_like_the_reference(dtype):
    """Repeated utilities: both kernels follow Kruskal's order (E, flat index)."""
    generator = torch.Generator().manual_seed(3)
    logits = torch.randint(0, 2, (6, 6, 6), generator=generator).to(dtype)
    logits = logits.triu(1) + logits.triu(1).transpose(-1, -2)
    dist = SpanningTree(logits)
    x, trace = dist.solve(-logits)
    x_ref, trace_ref = dist.reference_solve(-logits)
    assert torch.equal(x, x_ref) and torch.equal(trace, trace_ref)
    star = SpanningTree(torch.zeros(5, 5, dtype=dtype)).mode
    assert star.tolist() == [[0, 1], [0, 2], [0, 3], [0, 4]]


def test_signed_zeros_and_negative_utilities_follow_kruskal():
    """-0.0 ties with +0.0 (broken by flat index), negative values order below them.

    The oracle is a plain Kruskal on (E, i * n + j): the reference recursion subtracts each
    step's minimum, which rounds -3e-39 + 1.5 to a tie with 0 + 1.5 in float64.
    """
    n = 6
    choice = torch.randint(0, 5, (8, n, n), generator=torch.Generator().manual_seed(4))
    noise = torch.tensor([-0.0, 0.0, -1.5, 2.0, -3e-39])[choice]  # -3e-39: a float32 subnormal
    for dtype in (torch.float32, torch.float64):
        x, trace = SpanningTree(torch.zeros(8, n, n, dtype=dtype)).solve(noise.to(dtype))
        for b in range(8):
            assert trace[b].tolist() == python_kruskal(noise[b].tolist())
            assert x[b].tolist() == sorted(trace[b].tolist())


def test_nonnegative_packing_of_sampled_noise_follows_kruskal():
    """The sampling path packs E's float bits as they are (valid for E >= +0.0, +inf on
    missing edges); with ties, zeros and missing edges it must still follow (E, flat index)."""
    n = 6
    generator = torch.Generator().manual_seed(5)
    noise = torch.tensor([0.0, 1.5, 1.5])[torch.randint(0, 3, (8, n, n), generator=generator)].triu(1)
    missing = (torch.rand(8, n, n, generator=generator) < 0.3).triu(1)
    missing[:, 0, :] = False  # the star around node 0 keeps every graph connected
    logits = torch.zeros(8, n, n).masked_fill(missing | missing.mT, -torch.inf)
    noise = noise.masked_fill(missing, torch.inf)
    dist = SpanningTree(logits)
    values = dist._edge_values(noise)
    fast, general = dist._solve_edges(values, nonnegative=True), dist._solve_edges(values)
    assert all(torch.equal(a, b) for a, b in zip(fast, general))
    for b in range(8):  # the oracle never reaches an inf edge: the finite ones connect the graph
        assert fast[1][b].tolist() == python_kruskal(noise[b].tolist())


def test_solve_reads_only_the_upper_triangle_of_the_noise():
    dist = SpanningTree(SpanningTree.random_logits(6, (2,), generator=torch.Generator().manual_seed(0)))
    noise = dist.sample_noise((4,), generator=torch.Generator().manual_seed(1))
    scrambled = noise.triu(1) + torch.rand(noise.shape).tril()
    assert torch.equal(dist.solve(noise)[1], dist.solve(scrambled)[1])


def test_indicator_is_the_symmetric_adjacency():
    dist = SpanningTree(SpanningTree.random_logits(7, (3,), generator=torch.Generator().manual_seed(2)))
    x = dist.sample((5,), generator=torch.Generator().manual_seed(0))
    adjacency = dist.indicator(x)
    assert adjacency.shape == (5, 3, 7, 7) and adjacency.dtype == dist.logits.dtype
    assert torch.equal(adjacency, adjacency.transpose(-1, -2))
    assert (adjacency.sum((-1, -2)) == 2 * 6).all()
    u, v = x[0, 1].unbind(-1)
    assert (adjacency[0, 1][u, v] == 1).all()


# ---------------------------------------------------------------------- support and traces
@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_support_size_is_cayley(n):
    enum = SpanningTree(torch.zeros(n, n, dtype=torch.float64)).enumerate_traces()
    assert len({tuple(map(tuple, x.tolist())) for x in enum.x}) == n ** (n - 2)
    assert len(enum.log_probs) == n ** (n - 2) * math.factorial(n - 1)  # every order of every tree


def test_support_with_missing_edges_is_the_spanning_trees_of_the_graph():
    n = 5
    logits = random_graph_logits(n, batch=1, seed=4, drop=0.4)[0]
    graph = nx.Graph([(i, j) for i, j in combinations(range(n), 2) if math.isfinite(logits[i, j])])
    trees = {
        t for t in combinations(sorted(tuple(sorted(e)) for e in graph.edges()), n - 1) if nx.is_tree(nx.Graph(list(t)))
    }
    enum = SpanningTree(logits).enumerate_traces()
    assert {tuple(map(tuple, x.tolist())) for x in enum.x} == trees
    assert len(trees) == round(nx.number_of_spanning_trees(graph))
    assert torch.allclose(enum.log_probs.exp().sum(), torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.parametrize("n", [2, 6, 11])
def test_trace_log_prob_matches_python_oracle_and_generic_path(n):
    logits = random_graph_logits(n, batch=3, seed=30 + n)
    dist = SpanningTree(logits)
    trace = dist.sample_with_trace((4,), generator=torch.Generator().manual_seed(n)).trace
    fast = dist.trace_log_prob(trace)
    generic = StructuredDistribution.trace_log_prob(dist, trace)
    assert torch.allclose(fast, generic, atol=1e-10)
    for s in range(4):
        for b in range(3):
            expected = python_trace_log_prob(logits[b].tolist(), trace[s, b].tolist())
            assert fast[s, b].item() == pytest.approx(expected, abs=1e-10)


def test_fast_and_generic_gradients_agree_and_skip_the_lower_triangle():
    logits = random_graph_logits(8, batch=2, seed=5).requires_grad_()
    dist = SpanningTree(logits)
    trace = dist.sample_with_trace((3,), generator=torch.Generator().manual_seed(0)).trace
    (fast,) = torch.autograd.grad(dist.trace_log_prob(trace).sum(), logits)
    (generic,) = torch.autograd.grad(StructuredDistribution.trace_log_prob(dist, trace).sum(), logits)
    assert torch.allclose(fast, generic, atol=1e-12)
    lower = torch.ones(8, 8, dtype=torch.bool).tril()
    assert (fast[:, lower] == 0).all() and fast[:, ~lower].abs().sum() > 0


@pytest.mark.parametrize("n", [1, 2, 9])
def test_merge_times_match_union_find(n):
    rng = random.Random(n)
    traces = []
    for _ in range(5):  # random trees, edges in random order
        order = list(range(n))
        rng.shuffle(order)
        edges = [tuple(sorted((order[k], order[rng.randrange(k)]))) for k in range(1, n)]
        rng.shuffle(edges)
        traces.append(edges)
    tensor = torch.tensor(traces, dtype=torch.long).reshape(5, n - 1, 2)
    times, joins = merge_times(tensor, n)
    assert joins.all()
    expected = [[python_merge_times(t, n)[i][j] for i, j in combinations(range(n), 2)] for t in traces]
    assert times.tolist() == expected


def test_noise_given_trace_reproduces_traces_with_missing_edges():
    dist = SpanningTree(random_graph_logits(9, batch=4, seed=6))
    trace = dist.sample_with_trace((50,), generator=torch.Generator().manual_seed(1)).trace
    noise = dist.noise_given_trace(trace, generator=torch.Generator().manual_seed(2))
    assert torch.isinf(noise.masked_select(~dist.support_mask.expand(noise.shape))).all()
    assert torch.equal(dist.solve(noise)[1], trace)


def test_noise_given_trace_with_missing_edges_matches_rejection_sampling():
    """Means of E | T versus unconditional draws that produced T, on a 5-cycle plus one chord.

    Two-sample z-test per edge, Bonferroni-corrected to a family-wise false-alarm rate of 1e-2.
    """
    n = 5
    logits = torch.full((n, n), -math.inf, dtype=torch.float64)
    weights = torch.randn(6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    for (i, j), w in zip([(0, 1), (1, 2), (2, 3), (3, 4), (0, 4), (0, 2)], weights):
        logits[i, j] = logits[j, i] = w
    dist = SpanningTree(logits)
    enum = dist.enumerate_traces()
    target = enum.traces[int(enum.log_probs.argmax())]
    draws = 40_000
    sample = dist.sample_with_trace((draws,), generator=torch.Generator().manual_seed(8))
    keep = (sample.trace == target).flatten(-2).all(-1)
    accepted = sample.noise[keep][:, dist.support_mask]
    conditional = dist.noise_given_trace(target.expand(draws, n - 1, 2), generator=torch.Generator().manual_seed(9))
    conditional = conditional[:, dist.support_mask]
    assert len(accepted) > 1000
    se = (accepted.var(0) / len(accepted) + conditional.var(0) / draws).sqrt()
    z = ((accepted.mean(0) - conditional.mean(0)) / se).abs()
    assert (z < stats.norm.isf(1e-2 / 2 / z.numel())).all(), z


# ---------------------------------------------------------------------- shapes, edge cases
def test_registered_names_and_random_logits():
    assert distributions.get("kruskal") is SpanningTree
    assert distributions.get("spanning-tree") is SpanningTree
    logits = SpanningTree.random_logits(6, (2,), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(logits, logits.transpose(-1, -2)) and (logits.diagonal(dim1=-2, dim2=-1) == 0).all()


def test_single_node_has_the_empty_tree():
    dist = SpanningTree(torch.zeros(3, 1, 1))
    sample = dist.sample_with_trace((2,))
    assert sample.x.shape == sample.trace.shape == (2, 3, 0, 2)
    assert (dist.trace_log_prob(sample.trace) == 0).all()
    assert dist.indicator(sample.x).shape == (2, 3, 1, 1)


def test_small_asymmetry_is_tolerated_and_the_upper_triangle_is_used():
    logits = SpanningTree.random_logits(5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    nudged = logits.clone()
    nudged[3, 1] += 1e-9
    noise = SpanningTree(logits).sample_noise((4,), generator=torch.Generator().manual_seed(0))
    trace = SpanningTree(logits).solve(noise)[1]
    assert torch.equal(SpanningTree(nudged).trace_log_prob(trace), SpanningTree(logits).trace_log_prob(trace))


def test_large_instance_runs():
    n = 200
    logits = SpanningTree.random_logits(n, (2,), generator=torch.Generator().manual_seed(0)).requires_grad_()
    dist = SpanningTree(logits)
    sample = dist.sample_with_trace(generator=torch.Generator().manual_seed(1))
    assert [tuple(e) for e in sample.x[0].tolist()] == networkx_mst(sample.noise[0].tolist(), logits[0].tolist())
    log_prob = dist.trace_log_prob(sample.trace)
    assert log_prob.shape == (2,) and torch.isfinite(log_prob).all()
    log_prob.sum().backward()
    assert torch.isfinite(logits.grad).all()
    noise = dist.noise_given_trace(sample.trace, generator=torch.Generator().manual_seed(2))
    assert torch.equal(dist.solve(noise)[1], sample.trace)


# ---------------------------------------------------------------------- bad input
def test_asymmetric_logits_name_the_largest_asymmetry():
    logits = SpanningTree.random_logits(5, (2,), generator=torch.Generator().manual_seed(0))
    logits[1, 3, 2] += 0.5
    logits[0, 0, 4] -= 2.0
    with pytest.raises(ValueError, match=r"symmetric.*logits\[0, 4\] - logits\[4, 0\]\| = 2 at index \(0, 0, 4\)"):
        SpanningTree(logits)
    logits = SpanningTree.random_logits(4, generator=torch.Generator().manual_seed(0))
    logits[1, 2] = -math.inf
    with pytest.raises(ValueError, match=r"symmetric.*= inf at index \(1, 2\)"):
        SpanningTree(logits)


def test_disconnected_graph_is_rejected():
    logits = SpanningTree.random_logits(5, (3,), generator=torch.Generator().manual_seed(0))
    logits[2, :2, 2:] = -math.inf  # batch element 2: {0, 1} cut off from {2, 3, 4}
    logits[2, 2:, :2] = -math.inf
    with pytest.raises(ValueError, match=r"no spanning tree.*disconnected.*\(2,\): only 2 of 5"):
        SpanningTree(logits)
    logits = torch.full((3, 3), -math.inf)
    logits.diagonal().zero_()  # a finite diagonal is not an edge
    with pytest.raises(ValueError, match="disconnected"):
        SpanningTree(logits)


def test_nan_logits_are_rejected():
    logits = SpanningTree.random_logits(4)
    logits[0, 1] = logits[1, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        SpanningTree(logits)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda t: t.index_put_((torch.tensor(3),), t[0].clone()), "inside one component"),  # repeated edge
        (lambda t: t.copy_(torch.tensor([[0, 1], [1, 2], [0, 2], [3, 4]])), "inside one component"),  # cycle
        (lambda t: t.copy_(torch.tensor([[0, 1], [1, 2], [2, 3], [3, 4]])), "-inf logit"),
        (lambda t: t.copy_(torch.tensor([[1, 0], [1, 2], [2, 3], [2, 4]])), "0 <= u < v"),
        (lambda t: t.copy_(torch.tensor([[0, 1], [1, 2], [2, 3], [2, 5]])), "0 <= u < v"),
    ],
    ids=["repeat", "cycle", "missing-edge", "u-not-below-v", "out-of-range"],
)
def test_foreign_traces_are_rejected(edit, match):
    logits = SpanningTree.random_logits(5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    logits[2, 3] = logits[3, 2] = -math.inf
    dist = SpanningTree(logits)
    trace = dist.sample_with_trace(generator=torch.Generator().manual_seed(0)).trace.clone()
    edit(trace)
    for method in (dist.trace_log_prob, dist.noise_given_trace):
        with pytest.raises(ValueError, match="trace does not belong") as error:
            method(trace)
        assert match in str(error.value)
    with pytest.raises(ValueError, match="trace"):
        StructuredDistribution.trace_log_prob(dist, trace)


def test_malformed_traces_and_noise_are_rejected():
    dist = SpanningTree(SpanningTree.random_logits(5, (2,)))
    trace = dist.sample_with_trace().trace
    with pytest.raises(ValueError, match=r"LongTensor of shape \(\.\.\., 4, 2\)"):
        dist.trace_log_prob(trace.int())
    with pytest.raises(ValueError, match=r"LongTensor of shape \(\.\.\., 4, 2\)"):
        dist.trace_log_prob(trace[..., :3, :])
    with pytest.raises(ValueError, match="does not broadcast with batch_shape"):
        dist.trace_log_prob(torch.zeros(3, 4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="noise must have shape"):
        dist.solve(torch.rand(2, 5, 4))


# ---------------------------------------------------------------------- fast paths (issue 6)
def test_merge_times_match_union_find_at_n50():
    """Every level of the range-maximum table is used at n = 50 (spans up to 49)."""
    n, rng = 50, random.Random(50)
    traces = []
    for _ in range(3):
        order = list(range(n))
        rng.shuffle(order)
        edges = [tuple(sorted((order[k], order[rng.randrange(k)]))) for k in range(1, n)]
        rng.shuffle(edges)
        traces.append(edges)
    times, joins = merge_times(torch.tensor(traces, dtype=torch.long), n)
    assert joins.all()
    for b, trace in enumerate(traces):
        table = python_merge_times(trace, n)
        assert times[b].tolist() == [table[i][j] for i, j in combinations(range(n), 2)]


@pytest.mark.parametrize("n", [2, 3, 7, 50])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_solved_traces_score_exactly_like_copies(n, dtype):
    """The merge times of sampled traces equal the union-find ones, and log P(T), its
    gradient and E | T of a trace solve returned equal those of a copy of it."""
    logits = SpanningTree.random_logits(n, (4,), generator=torch.Generator().manual_seed(n), dtype=dtype)
    dist = SpanningTree(logits.requires_grad_())
    trace = dist.sample_with_trace((3,), generator=torch.Generator().manual_seed(1)).trace
    tables = [python_merge_times(t, n) for t in trace.reshape(-1, n - 1, 2).tolist()]
    expected = torch.tensor([[table[i][j] for i, j in combinations(range(n), 2)] for table in tables])
    times, joins = merge_times(trace, n)
    assert joins.all() and torch.equal(times.reshape(expected.shape), expected)
    solved, copied = dist.trace_log_prob(trace), dist.trace_log_prob(trace.clone())
    assert torch.equal(solved, copied)
    (grad_solved,) = torch.autograd.grad(solved.sum(), logits)
    (grad_copied,) = torch.autograd.grad(copied.sum(), logits)
    assert torch.equal(grad_solved, grad_copied)
    noise = [dist.noise_given_trace(t, torch.Generator().manual_seed(2)) for t in (trace, trace.clone())]
    assert torch.equal(*noise)


def test_a_solved_trace_edited_in_place_is_checked_again():
    dist = SpanningTree(SpanningTree.random_logits(6, generator=torch.Generator().manual_seed(0)))
    trace = dist.sample_with_trace().trace
    trace[1] = trace[0]  # the same edge twice: a cycle
    with pytest.raises(ValueError, match="inside one component"):
        dist.trace_log_prob(trace)


def test_merge_times_flag_a_cycle_without_failing():
    """A step inside one component: ``joins`` is False and the (meaningless) times stay in range."""
    trace = torch.tensor([[[0, 1], [1, 2], [0, 2], [3, 4]], [[0, 1], [1, 2], [2, 3], [3, 4]]])
    times, joins = merge_times(trace, 5)
    assert joins.tolist() == [False, True]
    assert times.shape == (2, 10) and bool(((times >= 0) & (times <= 4)).all())


@pytest.mark.parametrize("complete", [True, False], ids=["complete", "missing-edges"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sample_with_trace_equals_solve_on_its_noise(complete, dtype):
    """The sampling fast path (no matrix round trip, no re-validation) agrees with the
    public sample_noise + solve on the same generator state."""
    logits = random_graph_logits(12, batch=5, seed=3, drop=0.0 if complete else 0.4, dtype=dtype)
    dist = SpanningTree(logits)
    sample = dist.sample_with_trace((3,), generator=torch.Generator().manual_seed(7))
    noise = dist.sample_noise((3,), generator=torch.Generator().manual_seed(7))
    assert torch.equal(sample.noise, noise)
    x, trace = dist.solve(noise)
    assert torch.equal(sample.x, x) and torch.equal(sample.trace, trace)
    assert torch.equal(dist._edge_usable, dist.support_mask.flatten(-2)[..., dist._slots])
