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
        key = key.double()  # the blocks stick out with NaN padding; exact below 2^53
    left = right = torch.arange(n, device=key.device).expand(key.shape)  # ends of the skipped stretches
    # Steps are added as alpha * mask: on the CPU torch.where is several times slower than
    # an add on tensors of more than about 8,000 elements.
    for level, (before, after) in reversed(list(enumerate(_block_minima(key)))):
        block = before.gather(-1, left)
        clear = block > key if left_ties else block >= key
        left = torch.add(left, clear, alpha=-(2**level))
        right = torch.add(right, after.gather(-1, right) >= key, alpha=2**level)
    return left - 1, right + 1


def cartesian_parent(key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Parent array [..., n] of the Cartesian tree (min at the root) of ``key`` [..., n] in
    the order of (key, index): ties go to the lower index, as in the reference argmin; and
    every node's segment lo..hi ([..., n] each).

    Node v's parent is whichever of its nearest smaller neighbours on the left and on the
    right is the larger; -1 at the root. Its segment lies strictly between the two. O(n log n)
    per row.
    """
    left, right = nearest_smaller(key, left_ties=True)
    return _larger_neighbour(key, left, right), left + 1, right - 1


def _larger_neighbour(key: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """The larger of each node's two neighbours, the one that exists, or -1 for neither."""
    n = key.shape[-1]
    has_left, has_right = left >= 0, right < n
    key_left = key.gather(-1, left.clamp(min=0))
    key_right = key.gather(-1, right.clamp(max=n - 1))
    # (key_left, left) > (key_right, right) iff key_left > key_right, since left < right.
    # Selections by arithmetic on masks (cheaper than torch.where on the CPU): take the left
    # neighbour where it exists and either beats the right one or that one is missing, the
    # right one where it exists otherwise, and -1 = right - (n + 1) where neither does.
    take_left = has_left & ((key_left > key_right) | ~has_right)
    parent = torch.add(right, take_left * (left - right))
    return torch.add(parent, ~(has_left | has_right), alpha=-(n + 1))


def ancestor_jumps(parent: torch.Tensor) -> list[torch.Tensor]:
    """Pointer-doubling tables of a parent array [..., n] (-1 at roots): ``jumps[k]``
    [..., n + 1] holds the 2^k-th ancestor of every node, for k = 0..K.

    Slot n is a sink that roots (and jumps past a root) point to and that points to itself.
    The tables stop at the first K whose jumps all land in the sink (K = ceil(log2(d + 1))
    for depth d: about log2 log2 n rounds for a random tree instead of log2 n), or at
    K = ceil(log2 n): every node of a forest reaches the sink within 2^K >= n hops, so the
    array is acyclic iff ``jumps[-1]`` is the sink everywhere. O(n log n).
    """
    n = parent.shape[-1]
    sink = parent.new_full(parent.shape[:-1] + (1,), n)
    jump = torch.cat([torch.add(parent, parent < 0, alpha=n + 1), sink], -1)  # -1 -> n
    jumps = [jump]
    for _ in range(math.ceil(math.log2(n)) if n > 1 else 0):
        if bool((jump == n).all()):
            break
        jump = jump.gather(-1, jump)
        jumps.append(jump)
    return jumps


def _with_sink(values: torch.Tensor, jumps: list[torch.Tensor]) -> torch.Tensor:
    """``values`` [..., n] with a zero appended for the sink, broadcast to the tables' batch."""
    n = values.shape[-1]
    shape = torch.broadcast_shapes(values.shape[:-1], jumps[0].shape[:-1]) + (n + 1,)
    return torch.cat([values, values.new_zeros(values.shape[:-1] + (1,))], -1).expand(shape)


def path_sums(values: torch.Tensor, parent: torch.Tensor, jumps: list[torch.Tensor] | None = None) -> torch.Tensor:
    """For every node v, the sum of ``values`` over v and all its ancestors, [..., n].

    Pointer jumping: after round k, total[v] sums the 2^(k+1) nodes from v upwards, O(n log n).
    ``jumps``: the tables of :func:`ancestor_jumps` if the caller has them. Differentiable
    in ``values``; finite garbage on cyclic input.
    """
    jumps = ancestor_jumps(parent) if jumps is None else jumps
    total = _with_sink(values, jumps)
    for jump in jumps[:-1]:
        total = total + total.gather(-1, jump.expand(total.shape))
    return total[..., :-1]


def subtree_sums(values: torch.Tensor, jumps: list[torch.Tensor]) -> torch.Tensor:
    """For every node v, the sum of ``values`` [..., n] over v's subtree, [..., n].

    The transpose of :func:`path_sums`: with S_k[x] the sum over the descendants of x less
    than 2^k below it, S_{k+1}[x] = S_k[x] + sum of S_k[y] over the y whose 2^k-th ancestor
    is x (those descendants exactly 2^k below x cover the next 2^k levels once each): one
    scatter-add per round, O(n log n), differentiable. Finite garbage on cyclic input.
    """
    total = _with_sink(values, jumps)
    for jump in jumps[:-1]:
        total = total.scatter_add(-1, jump.expand(total.shape), total)
    return total[..., :-1]


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
    """Whether each parent array is a binary tree with in-order 0..n-1 (``valid`` [...]),
    every node's segment lo..hi ([..., n] each, meaningful where valid) and the array's
    :func:`ancestor_jumps` tables."""

    valid: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    jumps: list[torch.Tensor]


def check_parent_array(parent: torch.Tensor) -> TreeCheck:
    """Validity of a parent array [..., n] as a binary tree with in-order 0..n-1.

    A child below its parent's index is a left child, above it a right child. With
    lo_v = v - (sizes of v's left children's subtrees) and hi_v = v + (same on the right),
    the array is valid iff its parents lie in -1..n-1, it is acyclic, every left child c of
    p has hi_c = p - 1, every right child lo_c = p + 1, and every root lo = 0. By induction
    from the leaves every subtree is then the segment lo_v..hi_v around v; so two children
    on one side, or two roots, would share a node, and cannot occur (the converse is
    immediate). O(n log n) per instance: the sizes are :func:`subtree_sums` of ones.
    """
    n = parent.shape[-1]
    index = torch.arange(n, device=parent.device)
    outside = (parent < -1) | (parent >= n)
    safe = torch.add(parent, outside * (-1 - parent))
    jumps = ancestor_jumps(safe)
    size = subtree_sums(torch.ones_like(safe), jumps)
    # The subtree sizes per (parent, side); roots land in slots 0-1, which are ignored.
    right = index > safe
    sides = torch.zeros(parent.shape[:-1] + (2 * (n + 1),), dtype=torch.long, device=parent.device)
    sides = sides.scatter_add(-1, 2 * (safe + 1) + right.long(), size)[..., 2:].unflatten(-1, (n, 2))
    lo, hi = index - sides[..., 0], index + sides[..., 1]
    # A root has parent -1, so it counts as a right child: lo - 1 == -1.
    fits = torch.add(hi + 1, right * (lo - hi - 2)) == safe
    valid = (fits & (jumps[-1][..., :n] == n) & ~outside).all(-1)
    return TreeCheck(valid, lo, hi, jumps)


def subtree_logsumexp(logits: torch.Tensor, check: TreeCheck) -> torch.Tensor:
    """logsumexp of ``logits`` [..., n] over every node's subtree (its segment), [..., n],
    for the parent arrays that ``check`` found valid.

    Subtree sums of exp(logits - row max) in float64: sums of positive terms, so the
    relative error stays within a few float64 ulps, and nothing underflows while a row's
    logits span less than 600 nats. Wider rows use the sparse table of
    :func:`segment_logsumexp` (log space throughout, several times slower).
    """
    bottom, top = logits.detach().aminmax(dim=-1, keepdim=True)
    if bool(((top - bottom) > 600).any()):
        return segment_logsumexp(logits, check.lo, check.hi)
    mass = subtree_sums(torch.exp((logits - top).double()), check.jumps)
    return (mass.log() + top.double()).to(logits.dtype)


def describe_invalid(parent: torch.Tensor) -> str:
    """Why some parent array [..., n] in the batch is not a binary tree with in-order
    0..n-1 (for the error message; :func:`check_parent_array` decides validity)."""
    n = parent.shape[-1]
    index = torch.arange(n, device=parent.device)
    if bool(((parent < -1) | (parent >= n) | (parent == index)).any()):
        return f"trace holds parents outside -1..{n - 1} or a node that is its own parent"
    roots = (parent < 0).sum(-1)
    if bool((roots != 1).any()):
        return f"trace must have exactly one root (parent -1), found {int(roots[roots != 1][0])}"
    slot = 2 * (parent + 1) + (index > parent).long()
    counts = torch.zeros(parent.shape[:-1] + (2 * (n + 1),), dtype=torch.long, device=parent.device)
    if bool((counts.scatter_add(-1, slot, torch.ones_like(parent)) > 1).any()):
        return "trace gives a node two left or two right children"
    return (
        "trace does not belong to this distribution (a cycle, or a subtree that is not a "
        "contiguous segment of 0..n-1 around its root)"
    )


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
    no_relaxation_reason = (
        "binary trees from divide and conquer have no linear-program (regularised argmax) form, "
        "so there is no stochastic softmax trick for them"
    )

    def _check_structure(self):
        if not self._all_finite:  # NaN and +inf were rejected by _check_logits
            raise ValueError("BinaryTree: logits must be finite (every node is placed), found -inf")

    def _x_event_shape(self):
        return torch.Size([self.n])

    # ------------------------------------------------------------------ kernels
    def _solve(self, noise):
        parent, _, _ = cartesian_parent(noise)
        return parent, parent

    def indicator(self, x):
        child_to_parent = torch.nn.functional.one_hot(x.clamp(min=0), self.n).to(self.logits.dtype)
        child_to_parent = child_to_parent * (x >= 0).unsqueeze(-1)
        return child_to_parent.transpose(-1, -2)

    # ------------------------------------------------------------------ traces
    def _checked(self, trace) -> TreeCheck:
        """Validate ``trace``; its check holds node v's segment lo_v..hi_v and the jump tables."""
        name, n = type(self).__name__, self.n
        lead = self._trace_lead_shape(trace, (n,))
        trace = trace.expand(lead + (n,))
        check = check_parent_array(trace)
        if not bool(check.valid.all()):
            raise ValueError(f"{name}: {describe_invalid(trace)}")
        return check

    def trace_log_prob(self, trace):
        return (self.logits - subtree_logsumexp(self.logits, self._checked(trace))).sum(-1)

    def log_prob(self, x):
        return self.trace_log_prob(x)

    def noise_given_trace(self, trace, generator=None):
        """E | T: E_v = sum of d_u over the segments S(u) that contain v (those of v and of
        its ancestors), with independent d_u ~ Exp(sum_{j in S(u)} lambda_j). Every node is
        chosen, so none gets fresh noise."""
        self._check_frame()
        check = self._checked(trace)
        log_norm = subtree_logsumexp(self.logits, check)
        step = scale_exponential(unit_exponential(log_norm.shape, log_norm, generator), log_norm - self.noise_shift)
        return path_sums(step, trace, check.jumps)

    def _draw_sets(self, trace) -> Iterator[DrawSet]:
        """n draws, one per node: node v is chosen from its segment (the order of the draws
        does not change the sums). O(n^2) memory per sample; the paths above avoid it."""
        check = self._checked(trace)
        lo, hi = check.lo, check.hi
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
