"""Rooted arborescences by Chu-Liu-Edmonds on exponential noise (docs/design.md §2.5).

The minimum arborescence of E under reduced costs is a recursion of Exponential-Min draws:

* level 0: every non-root node j draws its cheapest incoming edge, argmin_i E[i, j], and
  that minimum is subtracted from column j (reduced costs);
* while the picked edges contain cycles, each cycle is contracted into a super-node S and
  only the new super-nodes draw at the next level: argmin of the reduced values of the
  edges i -> j with j in S, i not in S, and that minimum is subtracted from all of them.
  Nodes outside every cycle keep their pick (reduced value 0: a re-pick with probability
  one, which adds nothing to log P(T) and draws no increment of E | T).

By memorylessness each draw is categorical over its candidates with the original rates, so

    log P(T) = sum over draws (S, u -> w) of  logits[u, w] - logsumexp_{i not in S, j in S} logits[i, j].

Expansion: walk the draws backwards; a draw owned by S with edge u -> w sets parent[w] = u
unless a later (enclosing) draw already landed inside S. A super-node's entering edge is
its parent cycle's entering edge when that lands inside it, else its own draw's edge.

The authors' C++ version (docs/design.md §7) reads a set's minimum while updating the same matrix
and groups vertices by their direct parent; here minima are taken before any update and
super-nodes are tracked by label (their smallest node), so the result is always minimal.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F

from rgbench.distributions import recursion as spec
from rgbench.distributions.base import DrawSet, StructuredDistribution, scale_exponential, unit_exponential
from rgbench.distributions.catalog import register
from rgbench.distributions.relaxations import arborescence_marginals


class ArborescenceTrace(NamedTuple):
    """The draws of one CLE run, m = 2n - 3 slots (n - 1 at level 0, at most n - 2 later).

    ``edges`` LongTensor ``[..., m, 2]``: (tail, head) of each draw's argmin edge.
    ``members`` BoolTensor ``[..., m, n]``: the owning (super-)node S of each draw.
    Draw order: the level-0 draws by head j (the root skipped), then one draw per contracted
    cycle in the order created, cycles of one level ordered by their smallest node. Unused
    slots are padding: edges -1, members all False.
    """

    edges: torch.Tensor
    members: torch.Tensor


def num_draws(n: int) -> int:
    """Slots of a trace: n - 1 level-0 draws plus at most n - 2 contractions."""
    return max(2 * n - 3, 0)


# ---------------------------------------------------------------------- reference recursion
class _CleState(NamedTuple):
    comp: tuple[int, ...]  # label (smallest member) of each node's super-node
    picks: tuple[int, ...]  # flat key i*n+j of each label's entering edge, -1 before its draw
    fresh: tuple[int, ...]  # labels that draw at the next step, ascending
    history: tuple[tuple[frozenset, int], ...]  # (owner S, chosen key) of every draw so far


def _cycles(step: dict[int, int]) -> list[list[int]]:
    """The cycles of the functional graph ``step`` (a key missing from ``step`` is a sink)."""
    state: dict[int, int] = {}  # 1 = on the current walk, 2 = finished
    cycles = []
    for start in sorted(step):
        path, node = [], start
        while node in step and node not in state:
            state[node] = 1
            path.append(node)
            node = step[node]
        if state.get(node) == 1:
            cycles.append(path[path.index(node) :])
        for visited in path:
            state[visited] = 2
    return cycles


class ChuLiuEdmondsRecursion(spec.Recursion):
    """Algorithm 2 for CLE on one instance, in plain Python (the executable specification).

    State: the super-node partition (a label per node), each super-node's current pick,
    the fresh super-nodes and the history of draws. ``split`` gives one candidate set per
    fresh super-node (flat keys i*n+j of the usable edges entering it), ``map`` contracts
    the cycles of the picks, ``finish`` expands the history into the parent tuple.
    """

    def __init__(self, usable, n: int, root: int):
        super().__init__(usable)
        self.n, self.root = n, root

    def initial(self):
        n = self.n
        return _CleState(tuple(range(n)), (-1,) * n, tuple(v for v in range(n) if v != self.root), ())

    def stop(self, state):
        return not state.fresh

    def owners(self, state) -> list[frozenset]:
        return [frozenset(v for v in range(self.n) if state.comp[v] == label) for label in state.fresh]

    def split(self, state):
        n = self.n
        return [
            tuple(sorted(i * n + j for j in owner for i in range(n) if i not in owner and i * n + j in self.usable))
            for owner in self.owners(state)
        ]

    def map(self, state, picks):
        picks_by_label = list(state.picks)
        history = list(state.history)
        for owner, label, key in zip(self.owners(state), state.fresh, picks):
            picks_by_label[label] = key
            history.append((owner, key))
        labels = set(state.comp) - {state.comp[self.root]}
        step = {label: state.comp[picks_by_label[label] // self.n] for label in labels}
        comp, fresh = list(state.comp), []
        for cycle in _cycles(step):
            label, inside = min(cycle), set(cycle)
            comp = [label if c in inside else c for c in comp]
            fresh.append(label)
        return _CleState(tuple(comp), tuple(picks_by_label), tuple(sorted(fresh)), tuple(history))

    def finish(self, state):
        parent, landed = [-1] * self.n, set()
        for owner, key in reversed(state.history):
            if landed.isdisjoint(owner):
                tail, head = divmod(key, self.n)
                parent[head] = tail
                landed.add(head)
        return tuple(parent)


# ---------------------------------------------------------------------- batched kernels
# Batched state lives in [B, N] tensors indexed by *label* (a super-node's smallest node);
# N = n + 1, and label n is a dump slot: padding writes land there and it never draws.


def _ascending(mask: torch.Tensor, width: int, labels: torch.Tensor) -> torch.Tensor:
    """[B, width]: the labels where ``mask`` [B, N] holds, ascending, padded with the dump
    label N - 1 (``width`` >= every row's count; ``labels`` is arange(N))."""
    return torch.where(mask, labels, mask.shape[1] - 1).sort(1).values[:, :width]


def _broadcast(*shapes: torch.Size) -> torch.Size | None:
    """The broadcast of ``shapes``, or None if they do not broadcast (``torch.broadcast_shapes``
    would import sympy on its first call, about a second)."""
    out: list[int] = []
    for dims in zip(*(reversed((1,) * (max(map(len, shapes)) - len(s)) + tuple(s)) for s in shapes)):
        sizes = {d for d in dims if d != 1}
        if len(sizes) > 1:
            return None
        out.append(sizes.pop() if sizes else 1)
    return torch.Size(reversed(out))


def _batched_cycles(comp: torch.Tensor, pick_tail: torch.Tensor, labels: torch.Tensor, doublings: int):
    """Cycles of the picks over labels by pointer doubling, O(N log N) per sample.

    ``step[c] = comp[pick_tail[c]]`` is the label holding the tail of c's pick; the root and
    the dump pick themselves (fixed points), and stale picks of absorbed labels do no harm
    since no label maps to them. After 2^k >= n steps every walk sits on its cycle, so the
    cycles are the image of step^(2^k) minus the fixed points; ``low`` tracks the smallest
    label seen, which over a whole cycle is the cycle's new label. ``labels`` is arange(N)
    expanded to [B, N]. Returns (on_cycle, new_label) [B, N].
    """
    step = comp.gather(1, pick_tail)
    jump, low = step, labels
    for _ in range(doublings):  # low[x] = min of x, step(x), ..., step^(2^k - 1)(x)
        low = torch.minimum(low, low.gather(1, jump))
        jump = jump.gather(1, jump)
    on_cycle = torch.zeros_like(comp, dtype=torch.bool).scatter_(1, jump, True) & (step != labels)
    return on_cycle, torch.where(on_cycle, low, labels)




class _Level(NamedTuple):
    """The draws of one level >= 1 of a ``solve`` run, one per drawing super-node, sorted by
    (batch row, label): batch ``row`` [p], the chosen edge's flat key ``pick`` [p] and the
    owner mask ``owner`` [p, n]."""

    row: torch.Tensor
    pick: torch.Tensor
    owner: torch.Tensor


def _merge(best: torch.Tensor, key: torch.Tensor, members: torch.Tensor, group: torch.Tensor, groups: int):
    """The columns of new super-nodes: the minimum over their members' columns.

    ``best`` / ``key`` [B*n, n] hold each label's column (row b*n + c: reduced values and flat
    keys of the edges i -> c); ``members`` [q] are flat labels b*n + c (repeats allowed),
    ``group`` [q] the index of each member's new super-node in 0..groups-1. Returns the
    merged values and keys [groups, n]; among tied members the smallest key wins (the
    reference's tie rule: the smallest head for a given tail).
    """
    n = best.shape[1]
    index = group.unsqueeze(1).expand(-1, n)
    merged = best.index_select(0, members)
    values = merged.new_full((groups, n), torch.inf).scatter_reduce_(0, index, merged, "amin")
    won = torch.where(merged == values.gather(0, index), key.index_select(0, members), n * n)
    keys = torch.full_like(values, n * n, dtype=key.dtype).scatter_reduce_(0, index, won, "amin")
    return values, keys


class _Draws(NamedTuple):
    """A checked trace flattened to B = prod(lead) rows: edges [B, m, 2], members [B, m, n],
    active [B, m]."""

    edges: torch.Tensor
    members: torch.Tensor
    active: torch.Tensor
    lead: torch.Size


# ---------------------------------------------------------------------- the distribution
@register("cle", aliases=("arborescence",))
class Arborescence(StructuredDistribution):
    """Random arborescences rooted at ``root``: the minimum arborescence of E ~ Exp(exp(logits))
    found by Chu-Liu-Edmonds, i.e. the max-weight arborescence of Gumbel-perturbed logits.

    Args:
        logits: ``[..., n, n]``; ``logits[i, j]`` scores the edge i -> j (i is j's parent).
            The diagonal and the root's column are ignored; ``-inf`` marks a missing edge.
            Every node must stay reachable from the root.
        root: int in 0..n-1.

    Encodings:
      * sample ``x``: LongTensor ``[..., n]``, ``x[v]`` the parent of v, ``x[root] = -1``;
        ``indicator(x)`` is float ``[..., n, n]`` with ``[parent, child] = 1``.
      * trace: :class:`ArborescenceTrace` ``(edges [..., m, 2], members [..., m, n])`` with
        m = 2n - 3 (see its docstring);
        log P(T) = sum_draws [logits[u, w] - logsumexp_{i not in S, j in S} logits[i, j]].

    ``log_prob(x)`` is intractable (a sum over the traces of x) and raises.

    Cost per sample. CLE is sequential in its contractions: the number of levels L is
    data-dependent and grows with n (about 0.4 n for i.i.d. normal logits: one super-node
    keeps absorbing a node per level), so ``solve`` loops over levels: O(n^2 log n) for
    level 0, then per level O(n) for each drawing super-node and each label its cycle
    absorbs, plus O(n) relabelling gathers over the batch; O(n^2) memory. After level 0 a
    level touches only the (row, super-node) pairs that draw, so its cost is a fixed number
    of small ops (plus two per step of the longest walk). ``trace_log_prob`` and
    ``noise_given_trace`` have no loop over levels: O(n^2 + a n^2) time (a batched matrix
    product over the a contracted draws) and O(n^2 + a n) memory. Every trace is first
    validated by an O(n log n)-per-level replay (nothing is remembered from ``solve``: an
    edited trace is always checked).

    Example:
        >>> d = Arborescence(torch.zeros(4, 4), root=0)
        >>> x = d.sample()
        >>> int(x[0]), int(d.indicator(x).sum())
        (-1, 3)
    """

    logits_event_dim = 2
    max_enumeration_size = 5
    has_relaxation = True
    #: How far (in nats) log Z of a contracted draw may fall below its owner's largest column
    #: maximum before the fast product is distrusted and the draw recomputed exactly; None:
    #: from the dtype, so that mass lost to underflow stays below one ulp (see _log_norms).
    certified_gap: float | None = None

    def __init__(self, logits: torch.Tensor, root: int = 0, validate_args: bool | None = None):
        self.root = root
        super().__init__(logits, validate_args)

    @classmethod
    def default_args(cls, n: int) -> dict:
        return {"root": 0}

    def _extra_args(self):
        return {"root": self.root}

    def _x_event_shape(self):
        return torch.Size([self.n])

    @property
    def num_draws(self) -> int:
        return num_draws(self.n)

    @property
    def _doublings(self) -> int:
        return max(1, math.ceil(math.log2(max(self.n, 2))))

    @cached_property
    def _others(self) -> torch.Tensor:
        """The non-root nodes in increasing order: the heads of the level-0 draws."""
        nodes = torch.arange(self.n, device=self.logits.device)
        return nodes[nodes != self.root]

    @cached_property
    def _level0_owners(self) -> torch.Tensor:
        """[n - 1, n] bool: the owners of the level-0 draws, {head} for each non-root head."""
        return F.one_hot(self._others, self.n).bool()

    def _structural_mask(self):
        n = self.n
        mask = ~torch.eye(n, dtype=torch.bool, device=self.logits.device)
        mask[:, self.root] = False
        return mask

    def _check_structure(self):
        name = type(self).__name__
        if isinstance(self.root, bool) or not isinstance(self.root, int):
            raise ValueError(f"{name}: root must be an int, got {self.root!r}")
        if not 0 <= self.root < self.n:
            raise ValueError(f"{name}: root={self.root} must be a node in 0..{self.n - 1}")
        if self._all_finite:  # the root reaches every node directly
            return
        # Breadth-first search from the root over usable edges, all instances at once.
        usable = self._usable
        reached = torch.zeros(usable.shape[:-1], dtype=torch.bool, device=usable.device)
        reached[..., self.root] = True
        for _ in range(self.n - 1):
            grown = reached | (reached.unsqueeze(-1) & usable).any(-2)
            if torch.equal(grown, reached):
                break
            reached = grown
        if not bool(reached.all()):
            where = (~reached).nonzero()[0].tolist()
            batch, node = tuple(where[:-1]), where[-1]
            at = f" in batch element {batch}" if batch else ""
            raise ValueError(
                f"{name}: node {node} is unreachable from root {self.root}{at} "
                "(-inf logits leave no path to it, so there is no arborescence)"
            )

    # ------------------------------------------------------------------ sampling
    def solve(self, noise):
        """CLE on ``noise`` [..., n, n]: (parents [..., n], trace).

        Level 0 draws every column at once. Later levels work on the fresh super-nodes only,
        as a flat list of (batch row, label) pairs, so a level costs a fixed number of small
        ops whatever the batch (after the first few levels most rows are done and the rest
        have a single super-node, which absorbs a node per level).

        State by label c (a super-node's smallest node; flat, b*n + c, after level 0): its
        column ``best`` / ``key`` (the reduced value and flat key i*n+j of the cheapest edge
        from node i into it; ties: the smallest key, as in the reference), ``step``: the label
        holding its pick's tail, and ``term``: the end of its pick chain. Labels that do not
        draw at a level (static) keep their picks, and these picks form a forest (the last
        level contracted every cycle), rooted at the fresh labels and the root; ``term`` is
        that forest's root. So a new cycle passes
        through fresh labels only via static paths, and is a cycle of the small graph
        f -> term[label of f's tail] on the fresh labels (found directly when a row has one
        fresh label, else by pointer doubling over the w fresh labels); the static labels on
        it are found by walking from each cycle's entry, and every label is absorbed at most
        once. The trace and the parents are assembled at the end from the per-level draws.
        """
        if isinstance(noise, torch.Tensor) and noise.is_floating_point():
            # X and T are piecewise constant in E. Infinite noise on a usable edge would tie
            # with the unusable ones (and inf - inf is NaN): clamp it to the largest finite
            # value, so candidates always beat non-candidates, before unusable edges get +inf.
            big = torch.finfo(noise.dtype).max
            noise = noise.detach().clamp(-big, big)
        return super().solve(noise)

    def _solve(self, noise: torch.Tensor):
        """:meth:`solve` on checked noise: finite on usable edges, +inf on the others."""
        n, root = self.n, self.root
        lead, device = noise.shape[:-2], noise.device
        values = noise.reshape(-1, n, n)
        batch = values.shape[0]
        if n == 1 or batch == 0:  # nothing to draw
            m = self.num_draws
            edges = torch.full(lead + (m, 2), -1, dtype=torch.long, device=device)
            trace = ArborescenceTrace(edges, torch.zeros(lead + (m, n), dtype=torch.bool, device=device))
            return torch.full(lead + (n,), -1, dtype=torch.long, device=device), trace
        flat = batch * n
        # Level 0: each column's minimum; the first minimal row is the smallest tail.
        low, tail0 = values.min(1)  # [B, n]
        low[:, root] = 0.0  # the root's column is all +inf and never draws
        # Row b*n + c holds column c: the subtraction reads the transpose, writes it contiguous.
        best = torch.empty(batch, n, n, dtype=values.dtype, device=device)
        best = torch.sub(values.transpose(1, 2), low.unsqueeze(2), out=best).view(flat, n)
        key = torch.arange(n * n, device=device).view(n, n).t().contiguous().repeat(batch, 1)
        labels = torch.arange(n, device=device)
        step = tail0.clone()
        step[:, root] = root  # the root is the only fixed point
        jump, smallest = step, labels.expand(batch, n)
        for _ in range(self._doublings):  # smallest[x] = min of x, step(x), ..., step^(2^k - 1)(x)
            smallest = torch.minimum(smallest, smallest.gather(1, jump))
            jump = jump.gather(1, jump)
        on_cycle = torch.zeros_like(step, dtype=torch.bool).scatter_(1, jump, True)
        on_cycle[:, root] = False
        is_new = on_cycle & (smallest == labels)
        width = int(is_new.sum(1).max())
        # From here on labels are flat, b*n + c, so that one take reads any row's table.
        rows_n = torch.arange(batch, device=device).unsqueeze(1) * n
        comp = (torch.where(on_cycle, smallest, labels) + rows_n).view(-1)  # node -> its label
        # After 2^k >= n steps every walk sits on its cycle (or at the root): its end.
        term = (torch.where(on_cycle, smallest, root) + rows_n).gather(1, jump).view(-1)
        step = comp.view(batch, n).gather(1, tail0).view(-1)  # label -> label of its pick's tail
        fresh = is_new.view(-1).nonzero().squeeze(1)  # sorted
        members = on_cycle.view(-1).nonzero().squeeze(1)
        cur, cur_key = _merge(best, key, members, torch.searchsorted(fresh, comp.take(members)), fresh.shape[0])
        same = torch.arange(flat, device=device)
        levels: list[_Level] = []
        while fresh.numel():
            row = fresh // n
            row_n = row * n
            owner = comp.view(batch, n).index_select(0, row) == fresh.unsqueeze(1)
            cur.masked_fill_(owner, torch.inf)  # tails inside the super-node are not candidates
            low, arg = cur.min(1)
            pick = cur_key.gather(1, arg.unsqueeze(1)).squeeze(1)
            cur.sub_(low.unsqueeze(1))  # reduced costs
            best.index_copy_(0, fresh, cur)
            key.index_copy_(0, fresh, cur_key)
            levels.append(_Level(row, pick, owner))
            entry = comp.take(row_n + pick // n)  # the label the pick comes from
            end = term.take(entry)  # a fresh label or the root
            count = fresh.shape[0]
            if width == 1:
                cycle = (end == fresh).nonzero().squeeze(1)
                cycle_id = cycle
            else:
                pair = torch.full((flat,), count, dtype=torch.long, device=device)
                pair.index_put_((fresh,), torch.arange(count, device=device))
                graph = torch.cat([pair.take(end), fresh.new_full((1,), count)])  # the root: a sink
                least = torch.cat([fresh, fresh.new_full((1,), flat)])
                hop = graph
                for _ in range(math.ceil(math.log2(width))):
                    least = torch.minimum(least, least.take(hop))
                    hop = hop.take(hop)
                on = torch.zeros(count + 1, dtype=torch.bool, device=device).index_fill_(0, hop, True)[:count]
                cycle = on.nonzero().squeeze(1)
                cycle_id = pair.take(least[cycle])  # the pair of the cycle's smallest fresh label
            if not cycle.numel():
                break
            # Members: the fresh labels on cycles and the static labels on the paths between
            # them, walked with fresh labels made fixed points (a finished walk stays put).
            step.index_put_((fresh,), fresh)
            at = entry[cycle]
            walked = [fresh[cycle], at]
            while True:
                ahead = step.take(at)
                if torch.equal(ahead, at):
                    break
                walked.append(ahead)
                at = ahead
            step.index_put_((fresh,), entry)
            walked = torch.stack(walked)  # [k, c]: column j holds walker j's path (repeats are harmless)
            new = walked.min(0).values  # the smallest label on each walker's path
            if width > 1:  # a cycle with several fresh labels has one walker per fresh label
                per_cycle = torch.full((count,), flat, dtype=torch.long, device=device)
                new = per_cycle.scatter_reduce_(0, cycle_id, new, "amin").take(cycle_id)
            target = new.expand_as(walked)
            member = walked.view(-1)
            relabel = same.clone()
            relabel.index_put_((member,), target.reshape(-1))
            comp, step = relabel.index_select(0, comp), relabel.index_select(0, step)
            if width > 1:  # fresh labels off the cycles now end at a new super-node or the root
                off = (~on).nonzero().squeeze(1)
                lands = hop[off]
                into = relabel.take(least.take(lands.clamp(max=count - 1)))
                relabel.index_put_((fresh[off],), torch.where(lands == count, row_n[off] + root, into))
            term = relabel.index_select(0, term)  # its values are fresh labels or the root
            # A finished walker repeats its last label: merging a column twice changes no minimum.
            walker = torch.arange(walked.shape[1], device=device).repeat(walked.shape[0])
            cur, cur_key = _merge(best, key, member, walker, walked.shape[1])
            if width == 1:
                fresh = new
            else:
                fresh = new[cycle_id == cycle].sort().values  # one walker per cycle, by new label
                walkers = torch.arange(new.shape[0], device=device)
                cur, cur_key = _merge(cur, cur_key, walkers, torch.searchsorted(fresh, new), fresh.shape[0])
                width = int(torch.bincount(fresh // n).max())
        x = self._expand(levels, tail0)
        trace = self._assemble(levels, tail0)
        trace = ArborescenceTrace(*(t.reshape(lead + t.shape[1:]) for t in trace))
        return x.reshape(lead + (n,)), trace

    def _assemble(self, levels: list[_Level], tail0: torch.Tensor) -> ArborescenceTrace:
        """The trace from the level-0 tails and the later levels' draws: per row, the draws
        in level order, ascending labels within a level (stable sort by row)."""
        n, m = self.n, self.num_draws
        batch, device = tail0.shape[0], tail0.device
        edges = torch.full((batch, m, 2), -1, dtype=torch.long, device=device)
        members = torch.zeros(batch, m, n, dtype=torch.bool, device=device)
        others = self._others
        edges[:, : n - 1, 0] = tail0[:, others]
        edges[:, : n - 1, 1] = others
        members[:, : n - 1] = self._level0_owners
        if levels:
            row, pick, owner = (torch.cat(parts) for parts in zip(*levels))
            order = torch.sort(row, stable=True).indices
            ranked = row[order]
            rank = torch.empty_like(order).index_put_(
                (order,), torch.arange(order.shape[0], device=device) - torch.searchsorted(ranked, ranked)
            )
            slot = row * m + (n - 1) + rank
            edges.view(-1, 2).index_put_((slot,), torch.stack([pick // n, pick % n], 1))
            members.view(-1, n).index_put_((slot,), owner)
        return ArborescenceTrace(edges, members)

    def _expand(self, levels: list[_Level], tail0: torch.Tensor) -> torch.Tensor:
        """Parents from the draws, latest level first. Draws of one level own disjoint sets,
        so a level is processed at once: a draw lands unless an enclosing draw already landed
        inside its owner; level 0 then fills every node not yet landed."""
        batch, n = tail0.shape
        flat = batch * n
        parent = torch.full((flat + 1,), -1, dtype=torch.long, device=tail0.device)  # slot flat: dump
        landed = torch.zeros(flat + 1, dtype=torch.bool, device=tail0.device)
        if levels:
            row, pick, _ = (torch.cat(parts) for parts in zip(*levels))
            sizes = [level.row.shape[0] for level in levels]
            tails, heads = (pick // n).split(sizes), (row * n + pick % n).split(sizes)
            for level, tail, head in zip(reversed(levels), reversed(tails), reversed(heads)):
                hit = (landed[:flat].view(batch, n).index_select(0, level.row) & level.owner).any(1)
                slot = torch.where(hit, flat, head)
                parent.index_put_((slot,), tail)
                landed.index_fill_(0, slot, True)
        parent = torch.where(landed[:flat].view(batch, n), parent[:flat].view(batch, n), tail0)
        parent[:, self.root] = -1
        return parent

    def indicator(self, x):
        one_hot = torch.nn.functional.one_hot(x + 1, self.n + 1)[..., 1:]  # [..., child, parent]
        return one_hot.transpose(-1, -2).to(self.logits.dtype)

    def relax(self, scores):
        """Edge marginals [parent, child] of p(A) ∝ exp(sum_{e∈A} scores_e) over the
        arborescences rooted at ``root`` (directed matrix-tree theorem,
        ``arborescence_marginals``)."""
        return arborescence_marginals(scores, root=self.root)

    # ------------------------------------------------------------------ trace checks
    def _check_trace(self, trace) -> tuple[torch.Tensor, torch.Tensor, torch.Size]:
        """Shapes, dtypes and value ranges of a trace; returns (edges, members, lead shape)
        with the leading dims broadcast against the batch shape."""
        name, n, m = type(self).__name__, self.n, self.num_draws
        if not (isinstance(trace, tuple) and len(trace) == 2 and all(isinstance(t, torch.Tensor) for t in trace)):
            raise ValueError(f"{name}: trace must be an ArborescenceTrace(edges, members), got {type(trace).__name__}")
        edges, members = trace
        if edges.dtype != torch.long or edges.dim() < 2 or edges.shape[-2:] != (m, 2):
            raise ValueError(
                f"{name}: trace edges must be a LongTensor of shape (..., {m}, 2), "
                f"got {edges.dtype} {tuple(edges.shape)}"
            )
        if members.dtype != torch.bool or members.dim() < 2 or members.shape[-2:] != (m, n):
            raise ValueError(
                f"{name}: trace members must be a BoolTensor of shape (..., {m}, {n}), "
                f"got {members.dtype} {tuple(members.shape)}"
            )
        lead = _broadcast(edges.shape[:-2], members.shape[:-2], self.batch_shape)
        if lead is None:
            raise ValueError(
                f"{name}: trace leading shapes {tuple(edges.shape[:-2])} (edges), {tuple(members.shape[:-2])} "
                f"(members) do not broadcast with batch_shape {tuple(self.batch_shape)}"
            )
        if bool(((edges < -1) | (edges >= n)).any()):
            raise ValueError(f"{name}: trace edges hold nodes outside -1..{n - 1}")
        return edges.expand(lead + (m, 2)), members.expand(lead + (m, n)), lead

    def _draws(self, trace) -> _Draws:
        """A trace checked completely: it must be exactly what ``solve`` records for some
        noise. Cheap row checks (padding layout, level-0 rows, each edge enters its owner
        from outside on a usable edge, owners of contractions hold >= 2 nodes and not the
        root); the owners themselves are checked by :meth:`_replay_errors`."""
        edges, members, lead = self._check_trace(trace)
        n, m = self.n, self.num_draws
        edges, members = edges.reshape(lead.numel(), m, 2), members.reshape(lead.numel(), m, n)
        active = edges[..., 0] >= 0
        if m == 0 or active.numel() == 0:
            return _Draws(edges, members, active, lead)
        batch = edges.shape[0]
        usable = self._usable.expand(lead + (n, n)).reshape(batch, n * n)
        tail, head = edges[..., 0].clamp(min=0), edges[..., 1].clamp(min=0)
        # Owner sizes from boolean reductions: members.sum would first copy the [B, m, n]
        # masks to int64, the most expensive step of trace_log_prob at n = 50.
        errors = (active != (edges[..., 1] >= 0)) | (~active & members.any(-1))
        errors[:, 1:] |= active[:, 1:] & ~active[:, :-1]  # padding only at the end
        enters = members.gather(2, head.unsqueeze(2)) & ~members.gather(2, tail.unsqueeze(2))
        errors |= active & ~(enters.squeeze(2) & usable.gather(1, tail * n + head))
        # Level 0: draw d is owned by exactly {its head}, the d-th non-root node.
        errors[:, : n - 1] |= (
            ~active[:, : n - 1]
            | (head[:, : n - 1] != self._others)
            | (members[:, : n - 1] != self._level0_owners).any(-1)
        )
        # A contraction owns its head (checked above) and at least one more node, never the root.
        contracted = members[:, n - 1 :]
        more = contracted.scatter(-1, head[:, n - 1 :].unsqueeze(-1), False).any(-1)
        errors[:, n - 1 :] |= active[:, n - 1 :] & (contracted[..., self.root] | ~more)
        bad = errors.any(1) | self._replay_errors(edges, members, active)
        if bool(bad.any()):
            raise ValueError(
                f"{type(self).__name__}: trace does not belong to this distribution (a draw picks an edge "
                "outside its candidate set, or its owners are not the cycles CLE contracts)"
            )
        return _Draws(edges, members, active, lead)

    def _replay_errors(self, edges, members, active) -> torch.Tensor:
        """[B] bool: rerun the contractions with the trace's picks (O(n log n) per level) and
        compare owners. Each level checks that every node of a drawing super-node is in its
        draw's row; at the end the rows must hold exactly that many members in all, so no
        row holds extra nodes, and the number of draws must match."""
        n, m, root = self.n, self.num_draws, self.root
        batch, device = edges.shape[0], edges.device
        tails = torch.cat([edges[..., 0].clamp(0, n - 1), edges.new_full((batch, 1), n)], 1)  # slot m: dump
        padded = torch.cat([members, members.new_zeros(batch, 1, n)], 1)
        labels = torch.arange(n + 1, device=device).expand(batch, n + 1)
        comp, pick_tail = labels.clone(), torch.full((batch, n + 1), n, dtype=torch.long, device=device)
        pick_tail[:, root] = root
        fresh = (labels != root) & (labels != n)
        count = torch.zeros(batch, dtype=torch.long, device=device)
        expected, missing = torch.zeros_like(count), torch.zeros(batch, dtype=torch.bool, device=device)
        width = n - 1
        while width:
            idx = _ascending(fresh, width, labels[0])
            slots = torch.where(idx < n, count.unsqueeze(1) + torch.arange(width, device=device), m)
            node_slot = torch.full_like(comp, m).scatter_(1, idx, slots).gather(1, comp[:, :n])
            present = padded.gather(1, node_slot.unsqueeze(1)).squeeze(1)
            missing |= (~present & (node_slot != m)).any(1)
            expected = expected + (node_slot != m).sum(1)
            count = count + (idx < n).sum(1)
            pick_tail = pick_tail.scatter(1, idx, tails.gather(1, slots))
            on_cycle, new_label = _batched_cycles(comp, pick_tail, labels, self._doublings)
            fresh = on_cycle & (new_label == labels)
            comp = new_label.gather(1, comp)
            width = int(fresh.sum(1).max())
        return missing | (count != active.sum(1)) | (expected != members.sum((1, 2)))

    # ------------------------------------------------------------------ trace probabilities
    def _batched(self, tensor: torch.Tensor, lead: torch.Size) -> torch.Tensor:
        return tensor.expand(lead + (self.n, self.n)).reshape(-1, self.n, self.n)

    def _log_norms(self, draws: _Draws, logits: torch.Tensor) -> torch.Tensor:
        """[B, m]: log of the total rate of each draw's candidates (0 on padding).

        Level-0 draws are column log-sum-exps. A contracted draw d owning S needs
        Z_d = sum_{j in S} e^{c_j} C_dj with C_dj = sum_{i not in S} exp(logits[i, j] - c_j)
        and c_j the column maximum: one batched product C = (1 - M) @ A, then
        log Z_d = t_d + log sum_j M_dj C_dj e^{c_j - t_d}, t_d = max_{j in S} c_j.
        Underflow loses at most n^2 * tiny * e^{t_d}; draws with log Z_d < t_d - gap, where
        that loss could exceed one ulp, are recomputed exactly from their candidate masks.
        """
        n, m = self.n, self.num_draws
        usable = self._batched(self._usable, draws.lead)
        if self._all_finite:
            # Only the structure excludes edges: mask with the [n, n] structure, and zero the
            # rates by a product rather than exp(-inf) (a slow path on the CPU). Excluded
            # entries may lie far above their column's maximum: they are set to 0 before the
            # exp, by a mask (no clamp: the column maximum sits exactly on a clamp's boundary,
            # and torch's gradient there is a convention that changed in 2.14).
            keep = self._structural_mask()
            peak = logits.detach().masked_fill(~keep, -torch.inf).amax(1)  # [B, n]; -inf: root's column
            shift = peak.nan_to_num(neginf=0.0)
            rates = torch.exp((logits - shift.unsqueeze(1)).masked_fill(~keep, 0.0)) * keep  # <= 1; 0 where excluded
        else:
            masked = torch.where(usable, logits, -torch.inf)
            peak = masked.detach().amax(1)  # [B, n]; -inf for the root's column
            shift = peak.nan_to_num(neginf=0.0)
            rates = torch.exp(masked - shift.unsqueeze(1))  # <= 1; exactly 0 where unusable
        # torch.logsumexp(masked, 1) step by step (the same float ops), sharing ``rates``; the
        # root's column (total 0) is dropped before the log.
        others = self._others
        level0 = torch.log(rates.sum(1).index_select(1, others)) + shift.index_select(1, others)  # [B, n - 1]
        width = int(draws.active[:, n - 1 :].sum(1).max()) if draws.active.numel() else 0
        if not width:
            return F.pad(level0, (0, m - (n - 1)))
        owners = draws.members[:, n - 1 : n - 1 + width]  # [B, a, n]
        active = draws.active[:, n - 1 : n - 1 + width]
        column = torch.bmm((~owners).to(logits.dtype), rates)  # [B, a, n]
        top = torch.where(owners, peak.unsqueeze(1), -torch.inf).amax(-1).nan_to_num(neginf=0.0)  # [B, a]
        scale = torch.exp((shift.unsqueeze(1) - top.unsqueeze(2)).clamp(max=0.0)) * owners
        total = (column * scale).sum(-1)
        positive = total > 0  # the backward pass must not see log(0)
        contracted = torch.where(positive, torch.log(torch.where(positive, total, 1.0)) + top, -torch.inf)
        suspect = active & ~(contracted >= top - self._gap())
        if bool(suspect.any()):
            rows, cols = suspect.nonzero(as_tuple=True)
            owner = owners[rows, cols]
            candidates = owner.unsqueeze(1) & ~owner.unsqueeze(2) & usable[rows]
            exact = torch.logsumexp(torch.where(candidates, logits[rows], -torch.inf).flatten(1), -1)
            contracted = contracted.index_put((rows, cols), exact)
        return torch.cat([level0, contracted, level0.new_zeros(level0.shape[0], m - (n - 1) - width)], 1)

    def _gap(self) -> float:
        if self.certified_gap is not None:
            return self.certified_gap
        info = torch.finfo(self.logits.dtype)
        return -math.log(info.tiny) + math.log(info.eps) - 2 * math.log(self.n)

    def trace_log_prob(self, trace):
        """log P(T) = sum_draws [logits[u, w] - logsumexp over the draw's candidates], shape
        ``sample_shape + batch_shape``, differentiable; no loop over levels (see
        :meth:`_log_norms`). Raises ``ValueError`` for a trace CLE cannot produce."""
        draws = self._draws(trace)
        n = self.n
        if n == 1:
            return self.logits.new_zeros(draws.lead)
        logits = self._batched(self.logits, draws.lead)
        edges = draws.edges.clamp(min=0)
        picked = logits.flatten(1).gather(1, edges[..., 0] * n + edges[..., 1])
        terms = torch.where(draws.active, picked - self._log_norms(draws, logits), 0.0)
        return terms.sum(1).reshape(draws.lead)

    def noise_given_trace(self, trace, generator=None):
        """One draw of E | T (docs/design.md §3.2), reparameterised in the logits, in the frame of
        :meth:`sample_noise` (Z_d and lambda relative to :attr:`noise_shift`).

        Draw d adds s_d ~ Exp(Z_d) to each of its candidates, so an edge (i, j) collects
        sum_d s_d [j in S_d, i not in S_d]: a column offset from level 0 plus one batched
        product (1 - M)^T diag(s) M over the contracted draws (a sum of nonnegative terms).
        The chosen edges keep their totals; every other usable edge gets a fresh
        Exp(lambda) on top. Running :meth:`solve` on the result gives T back.
        """
        self._check_frame()
        draws = self._draws(trace)
        n, batch = self.n, draws.edges.shape[0]
        logits = self._batched(self.logits, draws.lead)
        log_norm = self._log_norms(draws, logits) if n > 1 else logits.new_zeros(batch, 0)
        shift = self.noise_shift.expand(draws.lead + (1, 1)).reshape(batch, 1)
        unit = unit_exponential(log_norm.shape, log_norm, generator)
        steps = torch.where(draws.active, scale_exponential(unit, torch.where(draws.active, log_norm - shift, 0.0)), 0.0)
        column = logits.new_zeros(batch, n).index_copy(1, self._others, steps[:, : n - 1])
        offset = column.unsqueeze(1).expand(batch, n, n)
        width = int(draws.active[:, n - 1 :].sum(1).max()) if n > 1 and batch else 0
        if width:
            owners = draws.members[:, n - 1 : n - 1 + width].to(logits.dtype)
            offset = offset + torch.bmm((1 - owners).transpose(1, 2), steps[:, n - 1 : n - 1 + width, None] * owners)
        edges = draws.edges.clamp(min=0)
        keys = torch.where(draws.active, edges[..., 0] * n + edges[..., 1], n * n)
        chosen = torch.zeros(batch, n * n + 1, dtype=torch.bool, device=logits.device).scatter_(1, keys, True)
        shape = draws.lead + (n, n)
        offset, chosen = offset.reshape(shape), chosen[:, : n * n].reshape(shape)
        fresh = self._scale_unit_noise(unit_exponential(shape, logits, generator))
        return torch.where(chosen, offset, offset + fresh)

    def _draw_sets(self, trace) -> Iterator[DrawSet]:
        """All m draws at once, O(m n^2) memory per sample: the generic reference path of the
        base class (it checks shapes and that each draw picks one of its candidates)."""
        edges, members, _ = self._check_trace(trace)
        usable = self._usable.unsqueeze(-3)
        candidates = members.unsqueeze(-2) & ~members.unsqueeze(-1) & usable
        chosen = edges[..., 0] * self.n + edges[..., 1]
        yield DrawSet(candidates.flatten(-2), chosen, edges[..., 0] >= 0)

    # ------------------------------------------------------------------ reference
    def _recursion(self):
        return ChuLiuEdmondsRecursion(self._usable_keys(), self.n, self.root)

    def _encode(self, draws, x):
        """Owners are replayed from the draws' picks with the reference recursion (a node
        with no usable edge from outside its owner is not visible in the candidate keys)."""
        recursion = self._recursion()
        state, done = recursion.initial(), 0
        while not recursion.stop(state):
            width = len(state.fresh)
            state = recursion.map(state, [draw.chosen for draw in draws[done : done + width]])
            done += width
        n, m, device = self.n, self.num_draws, self.logits.device
        edges = torch.full((m, 2), -1, dtype=torch.long, device=device)
        members = torch.zeros(m, n, dtype=torch.bool, device=device)
        for slot, (owner, key) in enumerate(state.history):
            edges[slot] = torch.tensor(divmod(key, n))
            members[slot, sorted(owner)] = True
        return torch.tensor(x, dtype=torch.long, device=device), ArborescenceTrace(edges, members)
