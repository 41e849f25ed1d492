"""Random spanning trees: Kruskal's algorithm on exponential edge utilities.

Every edge {i, j} of an undirected graph gets E_ij ~ Exp(exp(logits_ij)). Kruskal's
algorithm scans the edges by increasing E and keeps each edge that joins two different
components; the tree is the minimum spanning tree of E, i.e. the maximum spanning tree of
the Gumbel-perturbed logits. Each step is an Exponential-Min draw over the edges that still
cross components (docs/design.md §2.4), so a trace T = (t_1, ..., t_{n-1}) has

    log P(T) = sum_s [logits_{t_s} - logsumexp_{e crossing before step s} logits_e].

Fast kernels (batched, no Python loop over samples):

* :meth:`SpanningTree.solve` runs a dense Prim (n - 1 steps of O(n) vector operations, O(n^2)
  work per sample) and orders the tree's edges by E: the Kruskal trace is exactly the MST's
  edges sorted by utility. Ties are broken as in the reference recursion, by the flat edge
  index ``i * n + j``: both follow the strict order (E, index), whose MST is unique (the
  reference can differ only where subtracting a step's minimum rounds two distinct
  utilities into a tie, e.g. -3e-39 and 0 after subtracting -1.5). For
  float32 (and narrower) noise, E and the index are packed into one int64 key
  (:func:`prim_packed`); float64 compares the two keys separately (:func:`prim_two_keys`).
* The trace log-probability and E | T go through :mod:`rgbench.distributions.pool`, over the
  n(n-1)/2 edge slots i < j as a flat list: edge e leaves the pool at its *exit time* M_e,
  the step after which its endpoints share a component (a tree edge picked at step s has
  M_e = s + 1). M_e is the largest step on the tree path between the endpoints, found in
  O(n^2) from a dendrogram leaf order (see :func:`merge_times`), replayed from the trace
  itself every time (no facts are cached between ``solve`` and scoring: an edited trace is
  always checked).

The generic per-step candidate sets (:meth:`SpanningTree._draw_sets`, O(n^3)) remain for
the base class's reference paths and the tests.
"""

from __future__ import annotations

from functools import cached_property
from typing import Iterator

import torch

from rgbench.distributions import recursion as spec
from rgbench.distributions.base import DrawSet, StructuredDistribution, TraceSample, scale_exponential, unit_exponential
from rgbench.distributions.catalog import register
from rgbench.distributions.pool import PoolTrace, check_pool_trace, pool_log_prob, pool_noise_given_trace
from rgbench.distributions.relaxations import spanning_tree_marginals

_INT64_MAX = torch.iinfo(torch.int64).max


class KruskalRecursion(spec.Recursion):
    """Kruskal as Algorithm 2: pick the argmin over all usable edges that cross components.

    Keys are flat edge indices i * n + j with i < j. State: (component label of each node,
    edges picked so far). X is the sorted tuple of (u, v) edges.
    """

    def __init__(self, usable, n: int):
        super().__init__(usable)
        self.n = n
        self.edges = sorted(self.usable)

    def initial(self):
        return tuple(range(self.n)), ()

    def stop(self, state):
        return len(state[1]) == self.n - 1

    def split(self, state):
        labels, n = state[0], self.n
        return [tuple(key for key in self.edges if labels[key // n] != labels[key % n])]

    def map(self, state, picks):
        (pick,) = picks
        labels, edges = state
        u, v = divmod(pick, self.n)
        old, new = labels[v], labels[u]
        return tuple(new if label == old else label for label in labels), edges + (pick,)

    def finish(self, state):
        return tuple(sorted(divmod(key, self.n) for key in state[1]))


# ---------------------------------------------------------------------- Prim kernels
def _edge_ids(n: int, device) -> torch.Tensor:
    """[n, n] long: the flat index min(i, j) * n + max(i, j) of the edge {i, j}."""
    i = torch.arange(n, device=device)
    low, high = torch.minimum(i[:, None], i[None, :]), torch.maximum(i[:, None], i[None, :])
    return low * n + high


def prim_packed(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense Prim from node 0 on int64 edge keys ``[..., n, n]`` (symmetric, all distinct
    among edges; ``_INT64_MAX`` marks a missing edge). Returns the keys of the n - 1 tree
    edges and the nodes they add, each ``[..., n-1]``, in the order Prim adds them (not
    Kruskal's).

    Cost: n - 1 steps of six O(n) vector operations per sample.
    """
    n = keys.shape[-1]
    lead = keys.shape[:-2]
    if n <= 1 or keys.numel() == 0:
        empty = torch.zeros(lead + (max(n - 1, 0),), dtype=torch.long, device=keys.device)
        return empty, empty.clone()
    # Rows of all samples stacked: the new node's row is one index_select of contiguous rows
    # (several times cheaper than a batched gather).
    rows = keys.reshape(-1, n)
    batch = rows.shape[0] // n
    base = torch.arange(0, batch * n, n, device=keys.device)
    # best[u]: the smallest key joining u to the tree, MAX once u is in it. `floor` is MAX
    # for tree nodes and MIN elsewhere, so one elementwise max re-masks them after each
    # update (cheaper than masked_fill, or than blanking u's column of `keys`).
    floor = torch.full((batch, n), torch.iinfo(torch.int64).min, dtype=torch.long, device=keys.device)
    floor[:, 0] = _INT64_MAX
    best = torch.maximum(rows[::n], floor)
    picks, nodes = [], []
    for _ in range(n - 1):
        key, node = best.min(-1)
        picks.append(key)
        nodes.append(node)
        floor.scatter_(-1, node.unsqueeze(-1), _INT64_MAX)
        row = rows.index_select(0, node + base)
        torch.minimum(best, row, out=best)
        torch.maximum(best, floor, out=best)
    return torch.stack(picks, -1).reshape(lead + (n - 1,)), torch.stack(nodes, -1).reshape(lead + (n - 1,))


def prim_two_keys(weights: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense Prim on the strict order (weight, id), for dtypes too wide to pack (float64).

    ``weights`` [..., n, n] symmetric (+inf for missing edges), ``ids`` [..., n, n] long,
    distinct per edge and larger for missing edges than for real ones. Returns the tree edges'
    (weights, ids) and the nodes they add, each ``[..., n-1]``, in the order Prim adds them.
    Cost: as :func:`prim_packed`, with about three times as many vector operations per step.
    """
    n = weights.shape[-1]
    lead = torch.broadcast_shapes(weights.shape[:-2], ids.shape[:-2])
    weights, ids = weights.expand(lead + (n, n)), ids.expand(lead + (n, n))
    best_w, best_id = weights[..., 0, :], ids[..., 0, :]
    done = torch.zeros(lead + (n,), dtype=torch.bool, device=weights.device)
    done[..., 0] = True
    picked_w, picked_id, nodes = [], [], []
    for _ in range(n - 1):
        masked = best_w.masked_fill(done, torch.inf)
        low = masked.amin(-1, keepdim=True)
        tied = (masked == low) & ~done
        edge, node = torch.where(tied, best_id, _INT64_MAX).min(-1, keepdim=True)
        picked_w.append(low)
        picked_id.append(edge)
        nodes.append(node)
        done.scatter_(-1, node, True)
        index = node.unsqueeze(-1).expand(lead + (1, n))
        row_w, row_id = weights.gather(-2, index).squeeze(-2), ids.gather(-2, index).squeeze(-2)
        better = (row_w < best_w) | ((row_w == best_w) & (row_id < best_id))
        best_w, best_id = torch.where(better, row_w, best_w), torch.where(better, row_id, best_id)
    if not picked_w:
        empty = torch.zeros(lead + (0,), dtype=torch.long, device=weights.device)
        return empty.to(weights.dtype), empty, empty.clone()
    return torch.cat(picked_w, -1), torch.cat(picked_id, -1), torch.cat(nodes, -1)


def _ordered_bits(values: torch.Tensor) -> torch.Tensor:
    """float32 -> int32 with the same order, -0.0 and +0.0 equal (NaN-free input).

    Non-negative floats order like their IEEE bits; negative ones (sign bit set, bits < 0
    as int32) order in reverse, which -2^31 - bits undoes (it maps -0.0 to 0 and stays in
    int32).
    """
    bits = values.view(torch.int32)
    return torch.where(bits < 0, -(2**31) - bits, bits)


# ---------------------------------------------------------------------- merge times
def merge_times(trace: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For every edge slot (i, j), i < j, the step after which Kruskal's trace joined i and j.

    ``trace`` [..., n-1, 2] long with valid node indices. Returns ``(times, joins)``:
    ``times`` [..., n(n-1)/2] long over the pairs i < j in row-major order
    (``torch.triu_indices(n, n, 1)``), ``times = s + 1`` if the tree edge picked at step s
    first connects i and j; ``joins`` [...] bool, whether every step joined two different
    components (``times`` is meaningless where it is False).

    Method (a dendrogram leaf order): every component is a contiguous block of a final node
    order. Step s appends the block B of v behind the block A of u, which links A's last
    node to B's first node and puts a boundary of time s + 1 in front of B's first node.
    Labels are kept as each component's first node, so the loop costs five O(n) vector
    operations per step. Pointer jumping along the links then gives every node's position
    (log2 n rounds), and the time of a pair is the largest boundary time between the two
    positions: a range maximum, read from a sparse table (:func:`_range_max`).
    Cost: O(n^2) time and memory per sample.
    """
    position, gap, joins = dendrogram_order(trace, n)
    return _range_max(gap, position, n), joins


def dendrogram_order(trace: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A leaf order of Kruskal's dendrogram for ``trace`` [..., n-1, 2]: ``position``
    [..., n] of every node, ``gap`` [..., n] with gap[p] the step + 1 that joined the
    nodes at positions p - 1 and p (gap[0] = 0), so that the merge time of two nodes is the
    largest gap between their positions; and ``joins`` [...] (see :func:`merge_times`).
    O(n) vector operations of size O(n) per step, then log2 n pointer-jumping rounds.
    """
    lead = trace.shape[:-2]
    device = trace.device
    nodes = torch.arange(n, device=device).expand(lead + (n,))
    label, last = nodes.clone(), nodes.clone()  # first node of i's block; last node of a block
    firsts, lasts_a = [], []
    for pair in trace.unbind(-2):
        first = label.gather(-1, pair)  # [..., 2]: the first nodes of A and B
        end = last.gather(-1, first)
        first_a = first[..., :1]
        last.scatter_(-1, first_a, end[..., 1:])
        label = torch.where(label == first[..., 1:], first_a, label)
        firsts.append(first)
        lasts_a.append(end[..., :1])
    if not firsts:  # a single node
        zero = torch.zeros(lead + (n,), dtype=torch.long, device=device)
        return zero, zero, torch.ones(lead, dtype=torch.bool, device=device)
    first = torch.stack(firsts, -2)  # [..., n-1, 2]
    first_a, first_b = first.unbind(-1)
    joins = (first_a != first_b).all(-1)
    steps = torch.arange(1, n, device=device).expand(first_b.shape)
    boundary = torch.zeros_like(nodes).scatter(-1, first_b, steps)
    # Each node is the last of A at most once; the final order's tail links to itself.
    follow = nodes.clone().scatter_(-1, torch.cat(lasts_a, -1), first_b)
    to_tail = (follow != nodes).long()
    for _ in range((n - 1).bit_length()):
        to_tail = to_tail + to_tail.gather(-1, follow)
        follow = follow.gather(-1, follow)
    # Where a step did not join the links may form cycles; clamp so that the caller can
    # still raise a clean error after looking at `joins`.
    position = (n - 1 - to_tail).clamp(0, n - 1)
    at = torch.zeros_like(position).scatter_(-1, position, nodes)
    gap = boundary.gather(-1, at)  # gap[p]: time of the boundary between positions p - 1 and p
    return position, gap, joins


def _range_max(gap: torch.Tensor, position: torch.Tensor, n: int) -> torch.Tensor:
    """For every pair i < j (row-major), max of ``gap`` [..., n] over the positions
    (min(p_i, p_j), max(p_i, p_j)], with p = ``position`` [..., n] (in 0..n-1).

    A sparse table: level k holds the maximum of each window of 2^k gaps (log2 n levels of
    O(n)), and a range of length L >= 1 is covered by two windows of 2^floor(log2 L), so
    each pair costs a few O(1) lookups: O(n^2) per sample, without an n x n scan.
    """
    lead, device = gap.shape[:-1], gap.device
    upper = torch.triu_indices(n, n, 1, device=device)
    levels = [gap]
    while 2 ** len(levels) <= n - 1:
        half = 2 ** (len(levels) - 1)
        below = levels[-1]
        shifted = torch.cat([below[..., half:], torch.zeros_like(below[..., :half])], -1)
        levels.append(torch.maximum(below, shifted))
    table = torch.cat(levels, -1)  # [..., K * n]: level k at offset k * n
    # For a range length L: the level k = floor(log2 L), and the offsets of the windows that
    # start after the low end and end at the high end. L = 0 (only where the trace did not
    # join two components) reads some in-range entry.
    length = torch.arange(n, device=device)
    level = torch.tensor([max(size.bit_length() - 1, 0) for size in range(n)], device=device)
    start = torch.where(length > 0, level * n + 1, 0)
    end = torch.where(length > 0, level * n - 2**level + 1, 0)
    pairs = lead + upper.shape[-1:]
    high = position.gather(-1, upper[0].expand(pairs))
    span = position.gather(-1, upper[1].expand(pairs))
    # In place where possible: on the CPU every fresh [..., n(n-1)/2] buffer costs page faults.
    low = torch.minimum(high, span)
    torch.maximum(high, span, out=high)
    torch.sub(high, low, out=span)
    first = start.expand(lead + (n,)).gather(-1, span).add_(low)
    second = end.expand(lead + (n,)).gather(-1, span).add_(high)
    first = table.gather(-1, first)
    return torch.maximum(first, table.gather(-1, second), out=first)


# ---------------------------------------------------------------------- distribution
@register("kruskal", aliases=("spanning-tree",))
class SpanningTree(StructuredDistribution):
    """Random spanning trees of an undirected graph: Kruskal on E_ij ~ Exp(exp(logits_ij)).

    The tree is the maximum spanning tree of the Gumbel-perturbed logits (docs/design.md §1).

    Args:
        logits: ``[..., n, n]`` symmetric edge log-rates; the diagonal is ignored and
            ``-inf`` marks a missing edge. Only the strict upper triangle is read, so
            gradients flow to ``logits[..., i, j]`` with i < j only: parameterise symmetric
            logits as ``triu(p, 1) + triu(p, 1).mT`` to share them. Symmetry is checked up
            to rounding (``torch.isclose``, rtol 1e-5, atol 1e-6); the finite edges of every
            batch element must connect the n nodes.

    Encodings:
      * sample ``x``: LongTensor ``[..., n-1, 2]``, the tree's edges (u, v) with u < v,
        sorted lexicographically; ``indicator(x)`` is the symmetric float adjacency
        ``[..., n, n]`` in the logits' dtype.
      * trace: LongTensor ``[..., n-1, 2]``, the same edges in the order Kruskal picks them
        (increasing E): log P(T) = sum_s [logits_{t_s} - logsumexp_{e crossing} logits_e],
        the sum over the edges whose endpoints are in different components before step s.
      * noise E: ``[..., n, n]`` like the logits, read on the strict upper triangle;
        :meth:`sample_noise` and :meth:`noise_given_trace` put +inf everywhere else.

    ``log_prob(x)`` is intractable (a sum over the (n-1)! orderings of x) and raises.
    Cost per sample: O(n^2) time and memory to sample, for the trace log-probability and
    for E | T.

    Example:
        >>> logits = SpanningTree.random_logits(4, generator=torch.Generator().manual_seed(0))
        >>> d = SpanningTree(logits)
        >>> d.indicator(d.sample()).sum().item()
        6.0
    """

    logits_event_dim = 2
    max_enumeration_size = 5
    symmetric_logits = True
    has_relaxation = True

    # ------------------------------------------------------------------ validation
    @classmethod
    def random_logits(cls, n, batch_shape=torch.Size(), scale=1.0, generator=None, dtype=torch.float32, device=None):
        """Symmetric logits with i.i.d. Normal(0, scale^2) edges and a zero diagonal."""
        shape = torch.Size(batch_shape) + (n, n)
        upper = (scale * torch.randn(shape, generator=generator, dtype=dtype, device=device)).triu(1)
        return upper + upper.transpose(-1, -2)

    def _structural_mask(self):
        n = self.n
        return torch.ones(n, n, dtype=torch.bool, device=self.logits.device).triu(1)

    def _x_event_shape(self):
        return torch.Size([self.n - 1, 2])

    def _check_structure(self):
        name = type(self).__name__
        logits, flipped = self.logits, self.logits.transpose(-1, -2)
        # Exact symmetry (the usual case) is one cheap comparison; isclose only when it fails.
        if not bool((logits == flipped).all()) and not bool(
            (close := torch.isclose(logits, flipped, rtol=1e-5, atol=1e-6)).all()
        ):
            gap = torch.where(close, 0.0, (logits - flipped).abs().nan_to_num(nan=torch.inf, posinf=torch.inf))
            where = tuple(torch.unravel_index(gap.argmax(), gap.shape))
            index = tuple(int(i) for i in where)
            i, j = index[-2:]
            raise ValueError(
                f"{name}: logits must be symmetric (an undirected graph); largest asymmetry "
                f"|logits[{i}, {j}] - logits[{j}, {i}]| = {float(gap[where]):.4g} at index {index}"
            )
        if self._complete:
            return  # a complete graph is connected
        edges = self._usable | self._usable.transpose(-1, -2)
        keys = torch.where(edges, _edge_ids(self.n, logits.device), _INT64_MAX)
        reached = (prim_packed(keys)[0] < _INT64_MAX).sum(-1) + 1
        if bool((reached < self.n).any()):
            first = tuple(int(i) for i in (reached < self.n).nonzero()[0])
            raise ValueError(
                f"{name}: no spanning tree: the graph of finite off-diagonal logits is disconnected "
                f"(batch element {first}: only {int(reached[first])} of {self.n} nodes reachable from node 0)"
            )

    def _check_trace(self, trace) -> torch.Tensor:
        """Shape, dtype and 0 <= u < v < n; returns the trace broadcast with the batch shape."""
        name, n = type(self).__name__, self.n
        lead = self._trace_lead_shape(trace, (n - 1, 2))
        u, v = trace[..., 0], trace[..., 1]
        if bool(((u < 0) | (u >= v) | (v >= n)).any()):
            raise ValueError(
                f"{name}: trace does not belong to this distribution: its edges must be (u, v) with 0 <= u < v < {n}"
            )
        return trace.expand(lead + (n - 1, 2))

    # ------------------------------------------------------------------ kernels
    @cached_property
    def _edge_keys(self) -> torch.Tensor:
        """[..., n, n] long: the flat index min(i, j) * n + max(i, j) of every pair, plus n^2
        where the pair is not an edge, so that a real edge wins every tie against a missing
        one (even where a caller's E is +inf)."""
        n = self.n
        edges = self._usable | self._usable.transpose(-1, -2)
        ids = _edge_ids(n, self.logits.device)
        return torch.where(edges, ids, ids + n * n)

    def _solve(self, noise):
        """Kruskal on ``noise`` [..., n, n] (only the strict upper triangle is read): dense
        Prim, then the tree's edges sorted by (E, flat index). O(n^2) per sample."""
        return self._solve_edges(self._edge_values(noise))

    def sample_with_trace(self, sample_shape=torch.Size(), generator=None):
        # Kruskal reads only the edge slots: solve on the drawn slot values directly instead
        # of re-validating and re-extracting the noise matrix that sample_noise just built.
        with torch.no_grad():
            values = self._edge_noise(sample_shape, generator)
            x, trace = self._solve_edges(values, nonnegative=True)  # E >= +0.0 (+inf allowed)
            return TraceSample(x, trace, self._edge_matrix(values))

    @cached_property
    def _slot_keys(self) -> torch.Tensor:
        """[..., E] long: :attr:`_edge_keys` on the edge slots (the flat index i * n + j,
        plus n^2 where the slot is not an edge)."""
        return torch.where(self._edge_usable, self._slots, self._slots + self.n**2)

    @cached_property
    def _symmetric_slots(self) -> torch.Tensor:
        """[n * n] long: the edge slot of {i, j} for every cell (i, j), and slot 0 on the
        diagonal (Prim never reads a node's own cell: the node is in the tree by then)."""
        n = self.n
        upper = torch.triu_indices(n, n, 1, device=self.logits.device)
        slot = torch.zeros(n, n, dtype=torch.long, device=self.logits.device)
        ids = torch.arange(upper.shape[1], device=self.logits.device)
        slot[upper[0], upper[1]] = ids
        slot[upper[1], upper[0]] = ids
        return slot.flatten()

    def _symmetric(self, values: torch.Tensor) -> torch.Tensor:
        """Edge-slot values [..., E] -> the symmetric [..., n, n] matrix (one gather: cheaper
        than two scatters into a filled matrix); the diagonal is arbitrary."""
        n, lead = self.n, values.shape[:-1]
        if values.shape[-1] == 0:
            return values.new_zeros(lead + (n, n))
        index = self._symmetric_slots.expand(lead + (n * n,))
        return values.gather(-1, index).unflatten(-1, (n, n))

    def _solve_edges(self, values: torch.Tensor, nonnegative: bool = False):
        """Kruskal on the edge-slot noise ``values`` [..., E] (+inf on unusable slots);
        ``nonnegative``: the caller vouches that no value is negative or -0.0, whose float
        bits already order like the values (two passes fewer)."""
        n = self.n
        if values.dtype == torch.float64:
            weights = self._symmetric(values)
            _, ids, _ = prim_two_keys(weights, self._edge_keys)
            # Kruskal's order: by E, ties by flat index (a stable sort after sorting the ids).
            key = ids.sort(-1).values
            w = weights.flatten(-2).gather(-1, key)
            key = key.gather(-1, w.sort(dim=-1, stable=True).indices)
        else:
            # Pack (E, index) into one int64 whose order is lexicographic: E's order-preserving
            # bits above, the index (< 2^32) below. float16/bfloat16 widen to float32 exactly.
            # torch.add computes in int64, so bits * 2^32 does not overflow.
            bits = values.float().view(torch.int32) if nonnegative else _ordered_bits(values.float())
            packed = torch.add(self._slot_keys, bits, alpha=2**32)
            keys, _ = prim_packed(self._symmetric(packed))
            key = keys.sort(-1).values & 0xFFFFFFFF
        trace = torch.stack([key // n, key % n], -1)
        ordered = key.sort(-1).values
        return torch.stack([ordered // n, ordered % n], -1), trace

    def indicator(self, x):
        n = self.n
        flat = torch.cat([x[..., 0] * n + x[..., 1], x[..., 1] * n + x[..., 0]], -1)
        zeros = torch.zeros(x.shape[:-2] + (n * n,), dtype=self.logits.dtype, device=x.device)
        return zeros.scatter(-1, flat, 1.0).unflatten(-1, (n, n))

    def relax(self, scores):
        """Edge marginals of p(T) ∝ exp(sum_{e∈T} scores_e) (matrix-tree theorem,
        ``spanning_tree_marginals``).

        One score per undirected edge, read on the strict upper triangle (the lower one lies
        outside the support, -inf); the marginals come back symmetric, the indicator's layout.
        """
        return spanning_tree_marginals(scores)

    # ------------------------------------------------------------------ traces
    # The pool functions see the E = n(n-1)/2 edges i < j as a flat list, in the row-major
    # order of the strict upper triangle: half the work of the full n x n matrix.
    @cached_property
    def _slots(self) -> torch.Tensor:
        """[E] long: the flat index i * n + j of every edge slot i < j."""
        upper = torch.triu_indices(self.n, self.n, 1, device=self.logits.device)
        return upper[0] * self.n + upper[1]

    def _edge_values(self, matrix: torch.Tensor) -> torch.Tensor:
        """[..., n, n] -> [..., E], the strict upper triangle (index_select: far cheaper on the
        CPU than advanced indexing, forward and backward)."""
        return matrix.flatten(-2).index_select(-1, self._slots)

    @cached_property
    def _edge_usable(self) -> torch.Tensor:
        """[..., E] bool: the edge slots with a finite logit (``_usable`` on the slots, computed
        on the slots alone; the logits hold no NaN or +inf, so finite means not -inf)."""
        if self._all_finite:
            shape = self.logits.shape[:-2] + self._slots.shape
            return torch.ones((), dtype=torch.bool, device=self.logits.device).expand(shape)
        return self._edge_values(self.logits.detach()) != -torch.inf

    @cached_property
    def _complete(self) -> bool:
        """Whether every edge slot of every batch element is usable (read once, at
        construction): the pool functions then skip their masking passes."""
        return self._all_finite or bool(self._edge_usable.all())

    @property
    def _pool_usable(self) -> torch.Tensor | None:
        return None if self._complete else self._edge_usable

    @property
    def _pool_bounds(self) -> tuple[float, float] | None:
        """Bounds on the edge logits for the pool functions: the extremes of the whole
        matrix (the diagonal included) when every edge is usable."""
        return None if self._pool_usable is not None else self._bounds

    def _edge_slot(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The position of edge (u, v), u < v, in the upper-triangle list."""
        return u * (2 * self.n - u - 1) // 2 + (v - u - 1)

    def _pool(self, trace) -> PoolTrace:
        """Exit times of all edges: M_e = merge time of e's endpoints (see :func:`merge_times`)."""
        name, n = type(self).__name__, self.n
        trace = self._check_trace(trace)
        chosen = self._edge_slot(trace[..., 0], trace[..., 1])
        usable = self._pool_usable
        on_graph = True
        if usable is not None:
            on_graph = usable.expand(chosen.shape[:-1] + usable.shape[-1:]).gather(-1, chosen).all()
        times, joins = merge_times(trace, n)
        joins = joins.all()
        if not bool(on_graph & joins):
            reason = "an edge inside one component (a repeat or a cycle)"
            if not bool(on_graph):
                reason = "an edge with a -inf logit"
            raise ValueError(f"{name}: trace does not belong to this distribution (a step picks {reason})")
        pool = PoolTrace(times, chosen)
        check_pool_trace(pool, usable, name)
        return pool

    def trace_log_prob(self, trace):
        pool = self._pool(trace)
        edge_logits = self._edge_values(self.logits)
        return pool_log_prob(edge_logits, self._pool_usable, pool, self._pool_bounds)

    def noise_given_trace(self, trace, generator=None):
        pool = self._pool(trace)
        edge_logits = self._edge_values(self.logits)
        self._check_frame()
        shift = self.noise_shift.flatten(-2)
        noise = pool_noise_given_trace(edge_logits, self._pool_usable, pool, shift, generator, self._pool_bounds)
        return self._edge_matrix(noise)

    def _spread_values(self):
        """The edge slots set the noise frame (the diagonal and lower triangle are never read)."""
        return self._edge_values(self.logits.detach()), self._pool_usable

    def sample_noise(self, sample_shape=torch.Size(), generator=None):
        """E ~ Exp(exp(logits - s)) (s = :attr:`noise_shift`) drawn for the edge slots i < j
        only (half the draws of the full matrix), shape ``sample_shape + logits.shape``; +inf
        elsewhere."""
        return self._edge_matrix(self._edge_noise(sample_shape, generator))

    def _edge_noise(self, sample_shape, generator) -> torch.Tensor:
        """E on the edge slots, ``sample_shape + batch_shape + (E,)``; +inf on unusable slots."""
        self._check_frame()
        relative = self._edge_values(self.logits) - self.noise_shift.flatten(-2)
        usable = self._edge_usable
        unit = unit_exponential(torch.Size(sample_shape) + usable.shape, relative.detach(), generator)
        if not (relative.requires_grad and torch.is_grad_enabled()):
            relative = relative.detach()
            if self._complete:
                return unit.mul_(relative.neg_().exp_())
            return unit.mul_(relative.masked_fill_(~usable, 0.0).neg_().exp_()).masked_fill_(~usable, torch.inf)
        if self._complete:
            return unit * torch.exp(-relative)
        # Rate 1 on the unusable slots before the exp (no inf * 0 in the backward pass).
        return (unit * torch.exp(-relative.masked_fill(~usable, 0.0))).masked_fill(~usable, torch.inf)

    @cached_property
    def _upper_cells(self) -> torch.Tensor:
        """[n * n] long: the edge slot of every upper-triangle cell, E (one past the last
        slot) everywhere else."""
        n = self.n
        cells = torch.full((n * n,), n * (n - 1) // 2, dtype=torch.long, device=self.logits.device)
        return cells.index_copy_(0, self._slots, torch.arange(self._slots.shape[0], device=cells.device))

    def _edge_matrix(self, values: torch.Tensor) -> torch.Tensor:
        """Edge-slot values [..., E] -> [..., n, n] with +inf outside the strict upper triangle
        (an index_select from the values plus one +inf slot: cheaper than a scatter)."""
        padded = torch.cat([values, values.new_full(values.shape[:-1] + (1,), torch.inf)], -1)
        return padded.index_select(-1, self._upper_cells).unflatten(-1, (self.n, self.n))

    def _draw_sets(self, trace) -> Iterator[DrawSet]:
        """Step s: candidates are the usable edges whose endpoints differ in component."""
        n = self.n
        trace = self._check_trace(trace)
        lead = trace.shape[:-2]
        usable = self._usable.flatten(-2)
        ends = torch.arange(n * n, device=trace.device)
        ends_u, ends_v = (ends // n).expand(lead + (n * n,)), (ends % n).expand(lead + (n * n,))
        label = torch.arange(n, device=trace.device).expand(lead + (n,))
        active = torch.ones(lead + (1,), dtype=torch.bool, device=trace.device)
        for s in range(n - 1):
            u, v = trace[..., s, 0:1], trace[..., s, 1:2]
            crossing = label.gather(-1, ends_u) != label.gather(-1, ends_v)
            yield DrawSet((usable & crossing).unsqueeze(-2), u * n + v, active)
            label = torch.where(label == label.gather(-1, v), label.gather(-1, u), label)

    # ------------------------------------------------------------------ enumeration
    def _recursion(self):
        return KruskalRecursion(self._usable_keys(), self.n)

    def _encode(self, draws, x):
        device, n = self.logits.device, self.n
        trace = torch.tensor([divmod(d.chosen, n) for d in draws], dtype=torch.long, device=device)
        return torch.tensor(x, dtype=torch.long, device=device).reshape(-1, 2), trace.reshape(-1, 2)
