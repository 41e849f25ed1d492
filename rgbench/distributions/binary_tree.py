"""Binary trees by divide and conquer: the argmin of E over a segment roots that segment.

The result is the Cartesian tree of E (min at the root) over the sequence 0..n-1: node v's
subtree is a contiguous segment S(v) of the sequence, v is the argmin of E over S(v), the
part of S(v) left of v is its left subtree and the part right of v its right subtree.
Every node is drawn exactly once, from its own segment, so the trace is the tree itself.
"""

from __future__ import annotations

import math
from typing import Iterator, NamedTuple

import torch

from rgbench.distributions import recursion as spec
from rgbench.distributions.base import DrawSet, StructuredDistribution, scale_exponential, unit_exponential
from rgbench.distributions.catalog import register


def _block_minima(key: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each level k with 2^k <= n, two tables [..., n + 1] of the minimum over a block
    of 2^k keys (floating point): ``before[j]`` over key[j - 2^k : j], ``after[j]`` over
    key[j + 1 : j + 1 + 2^k]. Blocks that stick out of the row hold NaN, which fails every
    comparison, so they are never skipped."""
    n = key.shape[-1]
    levels, block = [], key  # block[i] = min(key[i : i + 2^k])
    while True:
        width = 2 ** len(levels)
        pad = key.new_full(key.shape[:-1] + (width,), torch.nan)
        levels.append((torch.cat([pad, block], -1), torch.cat([block[..., 1:], pad, pad[..., :1]], -1)))
        if 2 * width > n:
            return levels
        block = torch.minimum(block[..., :-width], block[..., width:])


def nearest_smaller(key: torch.Tensor, left_ties: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """For each position v of ``key`` [..., n]: the nearest j < v with key[j] < key[v]
    (key[j] <= key[v] if ``left_ties``) and the nearest j > v with key[j] < key[v]; -1 and n
    where there is none.

    With ``left_ties`` this is "smaller" in the order of (key, index), which breaks ties
    towards the lower index. Binary lifting over tables of block minima: the blocks next to
    v that hold no smaller key are skipped, longest first, so it costs O(n log n) per row
    instead of comparing all pairs.
    """
    n = key.shape[-1]
    if not key.is_floating_point():
        key = key.double()  # exact for the small integers (depths) it is used on
    left = right = torch.arange(n, device=key.device).expand(key.shape)  # ends of the skipped stretches
    for level, (before, after) in reversed(list(enumerate(_block_minima(key)))):
        block = before.gather(-1, left)
        clear = block > key if left_ties else block >= key
        left = torch.where(clear, left - 2**level, left)
        right = torch.where(after.gather(-1, right) >= key, right + 2**level, right)
    return left - 1, right + 1


def cartesian_parent(key: torch.Tensor) -> torch.Tensor:
    """Parent array [..., n] of the Cartesian tree (min at the root) of ``key`` [..., n] in
    the order of (key, index): ties go to the lower index, as in the reference argmin.

    Node v's parent is whichever of its nearest smaller neighbours on the left and on the
    right is the larger; -1 at the root. O(n log n) per row.
    """
    left, right = nearest_smaller(key, left_ties=True)
    return _larger_neighbour(key, left, right, strict=False)


def _larger_neighbour(key: torch.Tensor, left: torch.Tensor, right: torch.Tensor, strict: bool) -> torch.Tensor:
    """The larger of each node's two neighbours, the one that exists, or -1 for neither.
    ``strict``: -2 where the two have equal keys (no Cartesian tree decides between them)."""
    n = key.shape[-1]
    has_left, has_right = left >= 0, right < n
    key_left = key.gather(-1, left.clamp(min=0))
    key_right = key.gather(-1, right.clamp(max=n - 1))
    # (key_left, left) > (key_right, right) iff key_left > key_right, since left < right.
    both = torch.where(key_left > key_right, left, right)
    if strict:
        both = torch.where(key_left == key_right, torch.full_like(left, -2), both)
    one = torch.where(has_left, left, torch.where(has_right, right, torch.full_like(left, -1)))
    return torch.where(has_left & has_right, both, one)


def path_sums(values: torch.Tensor, parent: torch.Tensor) -> torch.Tensor:
    """For every node v, the sum of ``values`` over v and all its ancestors, [..., n].

    Pointer jumping over the parent array [..., n] (-1 at roots): ceil(log2 n) rounds of
    gathers, O(n log n). Differentiable in ``values``; finite garbage on cyclic input.
    """
    n = parent.shape[-1]
    shape = torch.broadcast_shapes(values.shape[:-1], parent.shape[:-1]) + (n + 1,)
    # Slot n is a zero-valued sink that roots point to, so jumps past a root add nothing.
    sink = parent.new_full(parent.shape[:-1] + (1,), n)
    jump = torch.cat([torch.where(parent < 0, sink, parent), sink], -1).expand(shape)
    total = torch.cat([values, values.new_zeros(values.shape[:-1] + (1,))], -1).expand(shape)
    for _ in range(math.ceil(math.log2(n)) if n > 1 else 0):
        total = total + total.gather(-1, jump)
        jump = jump.gather(-1, jump)
    return total[..., :n]


def segment_logsumexp(logits: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """logsumexp of ``logits`` [..., n] over every segment lo_v..hi_v (which holds v), [..., n].

    The stretches lo_v..v-1 and v+1..hi_v split into power-of-two blocks along the binary
    digits of their lengths, and a sparse table holds each block's logsumexp: O(n log n) per
    row, differentiable, and stable (no prefix sums are subtracted).
    """
    n = logits.shape[-1]
    shape = torch.broadcast_shapes(logits.shape[:-1], lo.shape[:-1])
    tables = [logits]
    while 2 ** len(tables) <= n:
        half = 2 ** (len(tables) - 1)
        tables.append(torch.logaddexp(tables[-1][..., :-half], tables[-1][..., half:]))
    index = torch.arange(n, device=logits.device)
    level = torch.arange(len(tables), device=logits.device)
    last = n - 2**level  # the last block start of each table
    # Only finite values enter logaddexp: an infinite argument makes its gradient NaN (or
    # slow), and where() cannot mask a NaN gradient.
    total = logits.expand(shape + (n,))
    for start, length in ((lo, index - lo), (index + 1, hi - index)):
        length = length.expand(shape + (n,)).unsqueeze(-1)
        take = (length >> level) & 1 == 1  # [..., n, levels]
        # The block of a level starts after the (longer) blocks of the levels above it.
        starts = torch.minimum(start.unsqueeze(-1) + (length & -(2 << level)), last)
        for k in range(len(tables)):
            block = tables[k].expand(shape + tables[k].shape[-1:]).gather(-1, starts[..., k])
            total = torch.where(take[..., k], torch.logaddexp(total, block), total)
    return total


class TreeCheck(NamedTuple):
    """Per-instance problems of a parent array (bool or count [...] each) and, where the
    array is valid, every node's segment lo..hi ([..., n] each)."""

    out_of_range: torch.Tensor
    root_count: torch.Tensor
    shared_side: torch.Tensor
    not_in_order: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor

    @property
    def valid(self) -> torch.Tensor:
        return ~(self.out_of_range | self.shared_side | self.not_in_order) & (self.root_count == 1)


def check_parent_array(parent: torch.Tensor) -> TreeCheck:
    """Validity of a parent array [..., n] as a binary tree with in-order 0..n-1.

    Valid iff it has one root, no node has two children on the same side, and it equals
    the Cartesian tree of its own depths. (Parents are then strictly shallower, so there is
    no cycle; a segment whose minimum depth were not unique would give two nodes the same
    parent on the same side, or two roots; so every subtree is a contiguous segment with
    its root splitting it into the left and right subtrees.) For a valid tree, the nearest
    shallower nodes on either side of v bound its segment. O(n log n) per instance.
    """
    n = parent.shape[-1]
    index = torch.arange(n, device=parent.device)
    outside = (parent < -1) | (parent >= n)
    out_of_range = (outside | (parent == index)).any(-1)
    safe = torch.where(outside, torch.full_like(parent, -1), parent)
    root_count = (safe < 0).sum(-1)
    # Children per (parent, side); roots land in slots 0-1, which are ignored.
    side = (index > safe).long()  # 0: left child, 1: right child
    slots = torch.zeros(parent.shape[:-1] + (2 * (n + 1),), dtype=torch.long, device=parent.device)
    slots = slots.scatter_add(-1, 2 * (safe + 1) + side, torch.ones_like(safe))
    shared_side = (slots[..., 2:] > 1).any(-1)
    depth = path_sums(torch.ones_like(safe), safe) - 1
    left, right = nearest_smaller(depth)
    not_in_order = (_larger_neighbour(depth, left, right, strict=True) != safe).any(-1)
    return TreeCheck(out_of_range, root_count, shared_side, not_in_order, left + 1, right - 1)


class SegmentRecursion(spec.Recursion):
    """Reference recursion: every pending segment is one candidate set of the step.

    State: (pending segments as (lo, hi, parent) with lo <= key < hi, links (node, parent)).
    """

    def __init__(self, usable, n: int):
        super().__init__(usable)
        self.n = n

    def initial(self):
        return ((0, self.n, -1),), ()

    def stop(self, state):
        return not state[0]

    def split(self, state):
        return [tuple(key for key in range(lo, hi) if key in self.usable) for lo, hi, _ in state[0]]

    def map(self, state, picks):
        segments, links = state
        pending = []
        for (lo, hi, parent), root in zip(segments, picks):
            links = links + ((root, parent),)
            if lo < root:
                pending.append((lo, root, root))
            if root + 1 < hi:
                pending.append((root + 1, hi, root))
        return tuple(pending), links

    def finish(self, state):
        parent = dict(state[1])
        return tuple(parent[v] for v in range(self.n))


@register("binary-tree")
class BinaryTree(StructuredDistribution):
    """Random binary trees with in-order 0..n-1: the Cartesian tree of E_v ~ Exp(exp(logits_v)).

    The root is the argmin of E over 0..n-1; the nodes left of it form the left subtree and
    those right of it the right subtree, recursively. With S(v) the segment spanned by v's
    subtree (v's candidate set),

        log P(x) = log P(T) = sum_v [logits_v - logsumexp_{j in S(v)} logits_j].

    Encodings:
      * sample ``x`` = trace: LongTensor ``[..., n]``, ``x[v]`` is the parent of node v and
        ``-1`` at the root; ``indicator(x)`` is ``[..., n, n]`` with ``[parent, child] = 1``.

    Logits must be finite (every node is placed). Cost: O(n log n) time and memory per
    sample for sampling, validation, the log-probability and E | T (sparse tables, binary
    lifting and pointer jumping; no recursion in Python).

    Example:
        >>> d = BinaryTree(torch.tensor([0.0, 5.0, 0.0]))
        >>> d.mode.tolist()
        [1, -1, 1]
    """

    max_enumeration_size = 7

    def _check_structure(self):
        if not self._all_finite:  # NaN and +inf were rejected by _check_logits
            raise ValueError("BinaryTree: logits must be finite (every node is placed), found -inf")

    def _x_event_shape(self):
        return torch.Size([self.n])

    # ------------------------------------------------------------------ kernels
    def _solve(self, noise):
        parent = cartesian_parent(noise)
        return parent, parent

    def indicator(self, x):
        child_to_parent = torch.nn.functional.one_hot(x.clamp(min=0), self.n).to(self.logits.dtype)
        child_to_parent = child_to_parent * (x >= 0).unsqueeze(-1)
        return child_to_parent.transpose(-1, -2)

    # ------------------------------------------------------------------ traces
    def _segments(self, trace) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate ``trace``; return (lo, hi), each [..., n]: node v's segment is lo_v..hi_v."""
        name, n = type(self).__name__, self.n
        lead = self._trace_lead_shape(trace, (n,))
        check = check_parent_array(trace.expand(lead + (n,)))
        if check.out_of_range.any():
            raise ValueError(f"{name}: trace holds parents outside -1..{n - 1} or a node that is its own parent")
        if (check.root_count != 1).any():
            bad = int(check.root_count[check.root_count != 1][0])
            raise ValueError(f"{name}: trace must have exactly one root (parent -1), found {bad}")
        if check.shared_side.any():
            raise ValueError(f"{name}: trace gives a node two left or two right children")
        if check.not_in_order.any():
            raise ValueError(
                f"{name}: trace does not belong to this distribution (a cycle, or a subtree that is "
                "not a contiguous segment of 0..n-1 around its root)"
            )
        return check.lo, check.hi

    def trace_log_prob(self, trace):
        lo, hi = self._segments(trace)
        return (self.logits - segment_logsumexp(self.logits, lo, hi)).sum(-1)

    def log_prob(self, x):
        return self.trace_log_prob(x)

    def noise_given_trace(self, trace, generator=None):
        """E | T: E_v = sum of d_u over the segments S(u) that contain v (those of v and of
        its ancestors), with independent d_u ~ Exp(sum_{j in S(u)} lambda_j). Every node is
        chosen, so none gets fresh noise."""
        lo, hi = self._segments(trace)
        log_norm = segment_logsumexp(self.logits, lo, hi)
        step = scale_exponential(unit_exponential(log_norm.shape, log_norm, generator), log_norm)
        return path_sums(step, trace)

    def _draw_sets(self, trace) -> Iterator[DrawSet]:
        """n draws, one per node: node v is chosen from its segment (the order of the draws
        does not change the sums). O(n^2) memory per sample; the paths above avoid it."""
        lo, hi = self._segments(trace)
        index = torch.arange(self.n, device=lo.device)
        segment = (index >= lo.unsqueeze(-1)) & (index <= hi.unsqueeze(-1))
        chosen = index.expand(lo.shape)
        yield DrawSet(segment, chosen, torch.ones(lo.shape, dtype=torch.bool, device=lo.device))

    # ------------------------------------------------------------------ reference
    def _recursion(self):
        return SegmentRecursion(self._usable_keys(), self.n)

    def _encode(self, draws, x):
        x = torch.tensor(x, dtype=torch.long, device=self.logits.device)
        return x, x
