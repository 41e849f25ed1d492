"""Greedy bipartite matchings: repeatedly match the (row, column) pair with the smallest E.

This is *not* the min-cost (Hungarian) assignment, which has no stochastic invariant
(docs/design.md §2.3); the greedy law is therefore not Gumbel-Sinkhorn's.
"""

from __future__ import annotations

from typing import Iterator

import torch

from rgbench.distributions import recursion as spec
from rgbench.distributions.base import DrawSet, StructuredDistribution
from rgbench.distributions.catalog import register
from rgbench.distributions.pool import PoolTrace, check_pool_trace, pool_log_prob, pool_noise_given_trace
from rgbench.distributions.relaxations import sinkhorn


# A float32 value widened to float64 leaves the low 29 bits of the mantissa zero: room for the
# flat index, which makes every key unique and keeps the order (value, index), so an ``amin``
# identifies its entry. float64 rather than int64 keys: the CPU reduces float64 along columns
# several times faster.
_PACK_MAX_ENTRIES = 2**29


def _entry_keys(values: torch.Tensor, nonnegative: bool = False) -> tuple[torch.Tensor, int | None]:
    """Keys [B, n, n] ordered like (value, flat index), and the number of index bits when
    the keys are packed (then unique and finite; the index is the low bits of the key's
    float64 representation, see :func:`_key_index`) or None (the values themselves; ties are
    then resolved by ``argmin``, which returns the first). +inf marks removed entries in both.

    ``nonnegative``: the caller vouches that the values are finite and >= +0.0 (sampled
    noise), which skips the three passes that handle signs, -0.0 and infinities.
    """
    n = values.shape[-1]
    if values.dtype == torch.float64 or n * n > _PACK_MAX_ENTRIES:
        top = torch.finfo(values.dtype).max
        # Infinite utilities become the largest finite ones so that +inf can mark removed entries.
        return values.clamp(-top, top), None
    index_bits = max(1, (n * n - 1).bit_length())
    flat = torch.arange(n * n, device=values.device).view(n, n)
    if nonnegative:
        bits = values.float().double().view(torch.int64)
    else:
        # +0.0 for -0.0 (they tie), the largest finite floats for +-inf (an all-ones exponent
        # with index bits would read as NaN); float16/bfloat16 widen exactly.
        top = torch.finfo(torch.float32).max
        bits = (values.float() + 0.0).clamp_(-top, top).double().view(torch.int64)
        # For negative keys more low bits mean more negative: store mask - index there, so
        # ties still go to the lowest index. (bits >> 63) is all ones exactly for negatives.
        flat = flat ^ ((bits >> 63) & (2**index_bits - 1))
    # In place: bits is a fresh n x n buffer (a second one costs its page faults on the CPU).
    return bits.bitwise_or_(flat).view(torch.float64), index_bits


def _key_index(keys: torch.Tensor, index_bits: int) -> torch.Tensor:
    """The flat index packed into float64 ``keys`` by :func:`_entry_keys` (long)."""
    index = keys.view(torch.int64) & (2**index_bits - 1)
    return torch.where(keys < 0, (2**index_bits - 1) - index, index)


def _compaction(free: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of ``free`` [B, m]: the positions of its True entries in increasing
    order, padded to ``size`` (index, padding mask), each [B, size]."""
    batch, m = free.shape
    slot = torch.where(free, free.cumsum(-1) - 1, size)
    index = torch.zeros(batch, size + 1, dtype=torch.long, device=free.device)
    index = index.scatter_(-1, slot, torch.arange(m, device=free.device).expand(batch, m))[:, :size]
    padding = torch.arange(size, device=free.device) >= free.sum(-1, keepdim=True)
    return index, padding


def greedy_match(noise: torch.Tensor, nonnegative: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The greedy matching of ``noise`` [..., n, n]: (rows, cols), each [..., n], the picks in
    the order the sequential algorithm makes them (ties go to the lowest flat index).

    Computed in rounds: an entry that is the minimum of both its row and its column among
    the free entries is taken by the sequential algorithm (every smaller entry lies in other
    rows and columns), so a round takes all such entries at once, deletes their rows and
    columns and compacts the rest into a smaller matrix. The picks are then sorted by key.
    About log n rounds on random input (n in the worst case), each O(m^2) on the m rows
    still free, instead of n argmins over the full n x n matrix.
    """
    n = noise.shape[-1]
    lead, device = noise.shape[:-2], noise.device
    if noise.numel() == 0:
        empty = torch.zeros(lead + (n,), dtype=torch.long, device=device)
        return empty, empty.clone()
    key, index_bits = _entry_keys(noise.reshape(-1, n, n), nonnegative)
    batch = key.shape[0]
    # Original row / column of every row / column of the compacted matrix; -1 for padding.
    row_id = torch.arange(n, device=device).expand(batch, n)
    col_id = row_id
    # Results per original row; slot n collects writes from rows that are not taken.
    match_col = torch.zeros(batch, n + 1, dtype=torch.long, device=device)
    match_key = torch.zeros(batch, n + 1, dtype=key.dtype, device=device)
    col_taken = torch.zeros(batch, n + 1, dtype=torch.bool, device=device)
    while True:
        real = row_id >= 0
        if index_bits is not None:
            row_min, col_min = key.amin(-1), key.amin(-2)
            col = torch.where(real, _key_index(row_min, index_bits) % n, 0)
            col_min_by_id = torch.full((batch, n + 1), torch.inf, dtype=key.dtype, device=device)
            col_min_by_id.scatter_(-1, torch.where(col_id >= 0, col_id, n), col_min)
            taken = real & (row_min == col_min_by_id.gather(-1, col))
        else:
            row_arg, col_arg = key.argmin(-1), key.argmin(-2)
            row_min = key.gather(-1, row_arg.unsqueeze(-1)).squeeze(-1)
            col = col_id.gather(-1, row_arg).clamp(min=0)
            taken = real & (col_arg.gather(-1, row_arg) == torch.arange(key.shape[-1], device=device))
        slot = torch.where(taken, row_id, n)
        match_col.scatter_(-1, slot, col)
        match_key.scatter_(-1, slot, row_min)
        col_taken.scatter_(-1, torch.where(taken, col, n), True)
        row_free = real & ~taken
        col_free = (col_id >= 0) & ~col_taken.gather(-1, col_id.clamp(min=0))
        size = int(row_free.sum(-1).max())
        if size == 0:
            break
        rows, row_pad = _compaction(row_free, size)
        cols, col_pad = _compaction(col_free, size)
        m = key.shape[-1]
        # One gather of the kept (row, column) cells rather than rows, then columns.
        cells = (rows * m).unsqueeze(-1) + cols.unsqueeze(-2)
        key = key.reshape(batch, m * m).gather(-1, cells.view(batch, size * size)).view(batch, size, size)
        key.masked_fill_(row_pad.unsqueeze(-1) | col_pad.unsqueeze(-2), torch.inf)
        row_id = torch.where(row_pad, -1, row_id.gather(-1, rows))
        col_id = torch.where(col_pad, -1, col_id.gather(-1, cols))
    # Stable: equal unpacked values are picked in row order, i.e. flat-index order.
    order = match_key[:, :n].argsort(dim=-1, stable=True)
    rows, cols = order, match_col[:, :n].gather(-1, order)
    return rows.reshape(lead + (n,)), cols.reshape(lead + (n,))


class GreedyMatchingRecursion(spec.Recursion):
    """Reference recursion on keys ``row * n + col``.

    State: (free rows, free columns, picks so far as (row, col) pairs). One candidate set
    per step: every usable entry whose row and column are both free.
    """

    def __init__(self, usable, n: int):
        super().__init__(usable)
        self.n = n

    def initial(self):
        return frozenset(range(self.n)), frozenset(range(self.n)), ()

    def stop(self, state):
        return not state[0]

    def split(self, state):
        rows, cols, _ = state
        keys = (r * self.n + c for r in sorted(rows) for c in sorted(cols))
        return [tuple(key for key in keys if key in self.usable)]

    def map(self, state, picks):
        rows, cols, pairs = state
        (key,) = picks
        row, col = divmod(key, self.n)
        return rows - {row}, cols - {col}, pairs + ((row, col),)

    def finish(self, state):
        x = [0] * self.n
        for row, col in state[2]:
            x[row] = col
        return tuple(x)


@register("matching")
class GreedyMatching(StructuredDistribution):
    """Random perfect matchings of n rows to n columns by greedy selection on E.

    With E_rc ~ Exp(exp(logits_rc)), step s = 0..n-1 picks (r_s, c_s) = argmin of E over the
    rows and columns not yet matched, then deletes that row and column. Hence

        log P(T) = sum_s [logits_{r_s c_s} - logsumexp_{r free, c free at step s} logits_rc].

    Encodings:
      * sample ``x``: LongTensor ``[..., n]``, ``x[row] = col``; ``indicator(x)`` is the
        float permutation matrix ``[..., n, n]`` with ``[row, col] = 1``.
      * trace: LongTensor ``[..., n, 2]``, the (row, col) picks in the order made.

    ``log_prob(x)`` (a sum over the n! orders of x's pairs) is not provided. Logits must be
    finite: with ``-inf`` entries the greedy run can reach a row whose free columns are all
    forbidden. Cost: sampling takes rounds of row and column minima (:func:`greedy_match`),
    O(n^2 log n) time on random input (O(n^3) at worst) and O(n^2) memory per sample; the
    trace log-probability and E | T use each entry's exit time (``pool.py``), O(n^2) time
    and memory per sample.

    Example:
        >>> d = GreedyMatching(torch.tensor([[3.0, 0.0], [0.0, -3.0]]))
        >>> d.mode.tolist()
        [0, 1]
    """

    logits_event_dim = 2
    max_enumeration_size = 5
    has_relaxation = True

    def _check_structure(self):
        if not self._all_finite:  # NaN and +inf were rejected by _check_logits
            raise ValueError(
                "GreedyMatching: logits must be finite (a -inf entry can leave a row with no usable column), "
                "found -inf"
            )

    def _x_event_shape(self):
        return torch.Size([self.n])

    # ------------------------------------------------------------------ kernels
    def _solve(self, noise, nonnegative: bool = False):
        rows, cols = greedy_match(noise, nonnegative)
        x = torch.empty_like(rows).scatter_(-1, rows, cols)
        return x, torch.stack([rows, cols], -1)

    def _solve_sampled(self, noise):
        return self._solve(noise, nonnegative=True)  # the keys skip sign and infinity handling

    def indicator(self, x):
        return torch.nn.functional.one_hot(x, self.n).to(self.logits.dtype)

    def relax(self, scores):
        """Sinkhorn(scores), [row, col]: the entropy-regularised maximum-weight assignment
        (Gumbel-Sinkhorn, Mena et al. 2018)."""
        return sinkhorn(scores)

    # ------------------------------------------------------------------ traces
    def _check_trace(self, trace) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, cols) of a valid trace, broadcast against the batch shape."""
        name, n = type(self).__name__, self.n
        lead = self._trace_lead_shape(trace, (n, 2))
        trace = trace.expand(lead + (n, 2))
        if ((trace < 0) | (trace >= n)).any():
            raise ValueError(f"{name}: trace holds rows or columns outside 0..{n - 1}")
        return trace[..., 0], trace[..., 1]

    def _pool(self, trace) -> PoolTrace:
        """Entry (r, c) is a candidate until its row or its column is used: its exit time is
        min(t_row[r], t_col[c]), t = 1 + the step that used that row / column."""
        rows, cols = self._check_trace(trace)
        n = self.n
        steps = torch.arange(1, n + 1, device=rows.device).expand(rows.shape)
        t_row = torch.zeros_like(rows).scatter_(-1, rows, steps)
        t_col = torch.zeros_like(cols).scatter_(-1, cols, steps)
        # n picks fill all n slots unless a row (column) is used twice, leaving another unused.
        if ((t_row == 0) | (t_col == 0)).any():
            raise ValueError(
                f"{type(self).__name__}: trace does not belong to this distribution (a row or column is used twice)"
            )
        exit_time = torch.minimum(t_row.unsqueeze(-1), t_col.unsqueeze(-2)).flatten(-2)
        pool = PoolTrace(exit_time, rows * n + cols)
        check_pool_trace(pool, None, type(self).__name__)
        return pool

    def trace_log_prob(self, trace):
        # Finite logits (checked at construction): every entry is usable, no masking needed.
        return pool_log_prob(self._flat_logits, None, self._pool(trace), self._bounds)

    def noise_given_trace(self, trace, generator=None):
        self._check_frame()
        shift = self.noise_shift.flatten(-2)
        noise = pool_noise_given_trace(self._flat_logits, None, self._pool(trace), shift, generator, self._bounds)
        return noise.unflatten(-1, (self.n, self.n))

    def _draw_sets(self, trace) -> Iterator[DrawSet]:
        """All n draws at once: draw s's candidates are the entries with exit time > s.
        O(n^3) memory per sample; the fast paths above avoid it."""
        pool = self._pool(trace)
        steps = torch.arange(self.n, device=pool.chosen.device).unsqueeze(-1)
        candidates = pool.exit_time.unsqueeze(-2) > steps
        active = torch.ones(pool.chosen.shape, dtype=torch.bool, device=pool.chosen.device)
        yield DrawSet(candidates, pool.chosen, active)

    # ------------------------------------------------------------------ reference
    def _recursion(self):
        return GreedyMatchingRecursion(self._usable_keys(), self.n)

    def _encode(self, draws, x):
        device = self.logits.device
        pairs = [divmod(draw.chosen, self.n) for draw in draws]
        return torch.tensor(x, dtype=torch.long, device=device), torch.tensor(pairs, dtype=torch.long, device=device)
