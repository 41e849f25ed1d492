"""Differentiable relaxations of structured argmaxes (the structures' ``relax``; SST, docs/design.md §4.4).

Each function maps scores (perturbed logits divided by a temperature) to the *marginals* of a
Gibbs distribution over the structure, p(X) ∝ exp(<scores, X>): the regularised argmax of the
stochastic softmax trick. All are pure torch, batched over any leading dimensions, accept
float32/float64 on any device, and are differentiable to any order with exact derivatives, so
a loss of the relaxed sample can be backpropagated to the logits: by plain autograd, except
for top-k's log-cumsum-exp, whose derivatives are written in closed form (torch's own double
backward returns NaN). None uses finite differences (SST's public top-k backward does,
docs/design.md §7).

Encodings (``...`` = any batch dimensions):

- ``topk_marginals``: scores ``[..., n]`` -> ``[..., n]``, P(i ∈ S) for |S| = k; sums to k.
- ``spanning_tree_marginals``: scores ``[..., n, n]``, only the strict upper triangle is read
  (edge {i, j}, i < j) -> symmetric ``[..., n, n]`` edge marginals, zero diagonal; every row
  sums to the expected degree, the whole matrix to 2(n - 1).
- ``arborescence_marginals``: scores ``[..., n, n]``, entry [i, j] is the edge i -> j (parent i,
  child j) -> ``[..., n, n]`` marginals in the same layout; column j != root sums to 1, the
  root's column and the diagonal are 0.
- ``sinkhorn``: log-potentials ``[..., n, n]`` -> doubly stochastic ``[..., n, n]``.

Scores of ``-inf`` mark excluded items / missing edges: they get marginal 0 and gradient 0.
NaN or ``+inf`` scores, and inputs that admit no structure at all, raise ``ValueError``; that
check costs one device synchronisation per call.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["topk_marginals", "spanning_tree_marginals", "arborescence_marginals", "sinkhorn"]

_NEG_INF = float("-inf")

# Sinkhorn synchronises with the device to test convergence only this often.
_SINKHORN_CHECK_EVERY = 10


# --------------------------------------------------------------------------- helpers


def _exp_clamped(x: Tensor) -> Tensor:
    """exp(x), but never below the smallest normal number (derivative 0 there).

    On the CPU, torch.exp takes a slow path (~100x) when the result underflows or x = -inf,
    and denormal results slow later products down. Inside a sum that holds a term >= 1 the
    clamp changes nothing; use ``_exp`` where exact zeros must come out.
    """
    return torch.exp(x.clamp_min(math.log(torch.finfo(x.dtype).tiny)))


def _exp(x: Tensor) -> Tensor:
    """exp(x) with results below the smallest normal number (< 1e-38 in float32, far below
    rounding for probabilities) flushed to exactly 0, value and derivatives; exp(-inf) = 0."""
    return _exp_clamped(x).masked_fill(x < math.log(torch.finfo(x.dtype).tiny), 0.0)


def _logsumexp(x: Tensor, dim: int, keepdim: bool = False) -> Tensor:
    """log sum_dim exp(x), returning -inf with zero (not NaN) derivatives on all -inf slices.

    torch.logsumexp's backward at an all -inf slice is exp(-inf - (-inf)) = NaN, and a zero
    upstream gradient does not cancel a NaN. Shifting by the *detached* maximum is exact at
    every order (the value does not depend on the shift); an empty slice is evaluated on the
    harmless shift 0 and sum 1, then overwritten with -inf.
    """
    shift = x.amax(dim, keepdim=True).detach()
    empty = shift == _NEG_INF
    shift = shift.masked_fill(empty, 0.0)
    total = _exp_clamped(x - shift).sum(dim, keepdim=True).masked_fill(empty, 1.0)
    out = (shift + torch.log(total)).masked_fill(empty, _NEG_INF)
    return out if keepdim else out.squeeze(dim)


def _exp_weighted_cumsum(values: Tensor, inner: Tensor, outer: Tensor, reverse: bool) -> Tensor:
    """c_i = sum_t values_t exp(inner_t + outer_i) over t <= i (t >= i when ``reverse``).

    Evaluated in log space with the values split by sign, so nothing overflows; used only
    inside the autograd Functions below, whose derivatives are given in closed form.
    """

    def running(z: Tensor) -> Tensor:
        return torch.logcumsumexp(z.flip(-1), -1).flip(-1) if reverse else torch.logcumsumexp(z, -1)

    log_abs = values.abs().log() + inner
    positive = _exp_clamped(outer + running(log_abs.masked_fill(~(values > 0), _NEG_INF)))
    negative = _exp_clamped(outer + running(log_abs.masked_fill(~(values < 0), _NEG_INF)))
    return positive - negative


class _LogCumSumExp(torch.autograd.Function):
    """y_i = log sum_{t <= i} exp(x_t) over the last dimension, differentiable to any order.

    torch.logcumsumexp's own double backward differentiates log|g| at upstream gradients
    g = 0 and returns NaN there; here the derivatives are closed-form linear maps:
    dx = S(g) with S(g)_i = sum_{m >= i} g_m exp(x_i - y_m) (``_SuffixExpSum``), whose
    adjoint is P(v)_m = sum_{i <= m} v_i exp(x_i - y_m) (``_PrefixExpSum``); each one's
    derivative is written with the other, so the graph closes at every order.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = torch.logcumsumexp(x, -1)
        ctx.save_for_backward(x, y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        x, y = ctx.saved_tensors
        return _SuffixExpSum.apply(grad, x, y)


class _SuffixExpSum(torch.autograd.Function):
    """S(g)_i = sum_{m >= i} g_m exp(x_i - y_m); linear in g, and dS_i/dx_i = S_i."""

    @staticmethod
    def forward(ctx, g: Tensor, x: Tensor, y: Tensor) -> Tensor:
        out = _exp_weighted_cumsum(g, -y, x, reverse=True)
        ctx.save_for_backward(g, x, y, out)
        return out

    @staticmethod
    def backward(ctx, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        g, x, y, out = ctx.saved_tensors
        adjoint = _PrefixExpSum.apply(v, x, y)  # d<v, S(g)>/dg
        return adjoint, v * out, -g * adjoint


class _PrefixExpSum(torch.autograd.Function):
    """P(v)_m = sum_{i <= m} v_i exp(x_i - y_m), the adjoint of ``_SuffixExpSum``."""

    @staticmethod
    def forward(ctx, v: Tensor, x: Tensor, y: Tensor) -> Tensor:
        out = _exp_weighted_cumsum(v, x, -y, reverse=False)
        ctx.save_for_backward(v, x, y, out)
        return out

    @staticmethod
    def backward(ctx, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        v, x, y, out = ctx.saved_tensors
        adjoint = _SuffixExpSum.apply(u, x, y)  # d<u, P(v)>/dv
        return adjoint, v * adjoint, -u * out


def _check_tensor(name: str, value: object, min_dim: int) -> Tensor:
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if value.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s), got shape {tuple(value.shape)}")
    return value


def _check_square(name: str, value: object) -> Tensor:
    value = _check_tensor(name, value, 2)
    if value.shape[-1] != value.shape[-2]:
        raise ValueError(f"{name} must be square in its last two dimensions [..., n, n], got shape {tuple(value.shape)}")
    if value.shape[-1] < 1:
        raise ValueError(f"{name} must have n >= 1, got shape {tuple(value.shape)}")
    return value


def _check_linalg_dtype(name: str, value: Tensor) -> None:
    if value.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{name} must be float32 or float64 (torch.linalg has no LU for {value.dtype})")


def _check_int(name: str, value: object, low: int, high: int | None, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{name}={value} is outside {bound} ({what})")
    return value


def _bad_entries(scores: Tensor, read: Tensor | None = None) -> str | None:
    """A sentence naming NaN / +inf scores among the ``read`` entries (all by default), or
    None when there are none. Error path only."""
    bad = torch.isnan(scores) | (scores == float("inf"))
    if read is not None:
        bad = bad & read
    if bool(bad.any()):
        return f"{int(bad.sum())} entries are NaN or +inf (only finite values and -inf are allowed)"
    return None


# --------------------------------------------------------------------------- top-k


def topk_marginals(scores: Tensor, k: int) -> Tensor:
    """Inclusion probabilities of the size-k exponential family, by forward-backward in log space.

    p(S) = exp(sum_{i∈S} s_i) / Z over subsets with |S| = k, where Z = e_k(w) is the k-th
    elementary symmetric polynomial of w_i = exp(s_i). With the prefix and suffix polynomials
    a_j(i) = e_j(w_0..w_{i-1}) and b_j(i) = e_j(w_{i+1}..w_{n-1}),

        P(i ∈ S) = w_i * sum_{j=0}^{k-1} a_j(i) b_{k-1-j}(i) / Z,   Z = sum_i w_i a_{k-1}(i).

    The recursion runs over the degree j rather than over the items: a_0 = 1 and
    a_j(i) = sum_{i' < i} w_{i'} a_{j-1}(i'), one exclusive log-cumsum-exp over the items per
    degree; b is the same recursion on the reversed scores, run in the same call. The
    marginals equal d log Z / d s but are formed directly, so their gradient (the SST
    backward) is a plain first-order autograd graph.

    Args:
        scores: ``[..., n]``; ``-inf`` excludes an item (marginal 0).
        k: subset size, 1 <= k <= n; every row needs at least k items above -inf.

    Returns:
        ``[..., n]`` marginals in [0, 1] summing to k.

    Example:
        >>> topk_marginals(torch.zeros(4), 2)
        tensor([0.5000, 0.5000, 0.5000, 0.5000])

    Cost: O(n k) time and memory per batch element, in k - 1 sequential vectorised steps.
    """
    scores = _check_tensor("scores", scores, 1)
    n = scores.shape[-1]
    k = _check_int("k", k, 1, n, f"the subset size must lie in 1..n with n={n} items")

    # -inf (excluded items, and e_j of too few items) is replaced by a finite per-row floor:
    # the derivatives of a log-cumsum-exp over a leading run of -inf are NaN. Any term that
    # contains the floor is below every real one, j lo - (j-1) hi - n log 2 for degree j, by
    # more than 1000, so exp() makes it exactly 0 and marginals and gradients stay exact;
    # a floor of the data's own scale keeps the arithmetic on it free of cancellation.
    excluded = scores == _NEG_INF
    hi = scores.masked_fill(excluded, _NEG_INF).amax(-1, keepdim=True).detach()
    lo = scores.masked_fill(excluded, float("inf")).amin(-1, keepdim=True).detach()
    floor = (lo - k * (hi - lo) - (n + 1000)).nan_to_num(-1000.0, -1000.0, -1000.0)  # rows that raise below
    s = torch.where(excluded, floor, scores)

    both = torch.stack([s, s.flip(-1)])  # prefixes of s and of its reverse (suffixes of s)
    none = floor.expand(*both.shape[:-1], 1)  # log e_j, j >= 1, of no item at all
    degrees = [torch.zeros_like(both)]  # degrees[j][..., i]: log e_j of the items before i
    for _ in range(1, k):
        running = _LogCumSumExp.apply(both + degrees[-1])
        degrees.append(torch.cat([none, running[..., :-1]], -1))
    log_z = _logsumexp(s + degrees[-1][0], -1)

    stacked = torch.stack(degrees, -2)  # [2, ..., k, n]
    before, after = stacked[0], stacked[1].flip(-1)  # log a_j(i), log b_j(i)
    log_rest = _logsumexp(before + after.flip(-2), -2)  # degree j before, k-1-j after
    marginals = _exp(s + log_rest - log_z.unsqueeze(-1))

    usable = (~excluded).sum(-1)
    if not bool((torch.isfinite(log_z) & (usable >= k)).all()):
        reason = _bad_entries(scores)
        if reason is None:
            reason = f"a row has only {int(usable.min())} items above -inf, fewer than k={k}"
        raise ValueError(f"scores of shape {tuple(scores.shape)}: {reason}")
    return marginals


# --------------------------------------------------------------------------- matrix-tree

#: Largest |column sum - 1| of the fast (LU) arc marginals accepted before a batch element
#: is recomputed by the slower, always accurate elimination (``_eliminated_marginals``):
#: this, or the input dtype's eps where larger (float32 output rounds at that level anyway).
_COLUMN_SUM_TOL = 1e-9


def _inverse_minor(matrix: Tensor, root: int) -> tuple[Tensor, Tensor]:
    """Inverse of the root-removed minor, embedded in [..., n, n] with a zero root row and
    column, and the per-matrix LAPACK/cuSOLVER status (0 = invertible); no synchronisation.

    The root's row and column are replaced by the identity's, so the inverse off the root
    equals the minor's without gathering an (n-1) x (n-1) copy.
    """
    n = matrix.shape[-1]
    index = torch.arange(n, device=matrix.device)
    on_root = (index == root).unsqueeze(-1) | (index == root).unsqueeze(-2)
    eye = torch.eye(n, dtype=matrix.dtype, device=matrix.device)
    inverse, info = torch.linalg.inv_ex(torch.where(on_root, eye, matrix))
    return inverse.masked_fill(on_root, 0.0), info


def _log_parent_shares(masked: Tensor, root: int) -> tuple[Tensor, Tensor]:
    """Log column softmax log p_ij = s_ij - log d_j of ``masked`` scores and log d_j (0 at
    the root, whose all -inf column gets shares -inf rather than NaN)."""
    is_root = torch.arange(masked.shape[-1], device=masked.device) == root
    log_degree = _logsumexp(masked, -2).masked_fill(is_root, 0.0)
    return masked - log_degree.unsqueeze(-2), log_degree


def _lu_marginals(masked: Tensor, root: int) -> tuple[Tensor, Tensor]:
    """Arc marginals by one batched inverse (fast; loses accuracy on near-singular minors).

    With w_ij = exp(s_ij), the in-degree Laplacian L[i, j] = -w_ij, L[j, j] = d_j, and L_r
    the minor without the root's row and column (Tutte; Koo et al. 2007):

        P(i -> j) = d log det L_r / d s_ij = w_ij (L_r^{-1}[j, j] - L_r^{-1}[j, i]),

    read as 0 on the root's row and column. We factor M = L D^{-1} instead: column j holds 1
    on the diagonal and minus the parent softmax p_ij elsewhere, so no score scale
    overflows, and P(i -> j) = p_ij (M_r^{-1}[j, j] - M_r^{-1}[j, i]). Returns the marginals
    and the LU status.
    """
    parent_share = _exp(_log_parent_shares(masked, root)[0])
    n = masked.shape[-1]
    inverse, info = _inverse_minor(torch.eye(n, dtype=masked.dtype, device=masked.device) - parent_share, root)
    d = torch.diagonal(inverse, dim1=-2, dim2=-1)
    return parent_share * (d.unsqueeze(-2) - inverse.mT), info


def _log_partition_by_elimination(masked: Tensor, root: int) -> Tensor:
    """log det L_r by Gaussian elimination without subtraction (Grassmann-Taksar-Heyman),
    carried out on log-shares.

    Eliminating node k from a Laplacian leaves the Laplacian of a graph on the other nodes
    (Kron reduction): w'_ij = w_ij + w_ik w_kj / d_k. Kept column-stochastic (self-loops
    included, so column sums stay 1), the pivot d_k = 1 - p_kk is the sum of the other
    shares in column k, so every step adds, multiplies or divides non-negative numbers: log
    det L_r comes out with relative accuracy ~n eps however close to singular L_r is. In log
    space (sums as log-sum-exp) no share underflows either, whatever the score gaps. Its
    gradient, by reverse-mode autograd, measured within 1e-15 of enumeration where the LU
    route was off by 0.8. Cost: n sequential O(n^2) steps.
    """
    n = masked.shape[-1]
    index = torch.arange(n, device=masked.device)
    log_share, log_degree = _log_parent_shares(masked, root)
    log_z = log_degree.sum(-1)
    present = torch.ones(n, dtype=torch.bool, device=masked.device)  # not yet eliminated
    for k in range(n):
        if k == root:
            continue
        present = present & (index != k)
        into_k = log_share[..., :, k].masked_fill(~present, _NEG_INF)
        out_of_k = log_share[..., k, :].masked_fill(~present, _NEG_INF)
        log_pivot = _logsumexp(into_k, -1)  # log(1 - p_kk), without the subtraction
        log_z = log_z + log_pivot
        update = into_k.unsqueeze(-1) + out_of_k.unsqueeze(-2) - log_pivot[..., None, None]
        log_share = _logsumexp(torch.stack([log_share, update]), 0)
        log_share = log_share.masked_fill(~(present.unsqueeze(-1) & present.unsqueeze(-2)), _NEG_INF)
        # Renormalise: the column sums are 1 up to rounding; keep it from accumulating.
        log_total = _logsumexp(log_share, -2).masked_fill(~present | (index == root), 0.0)
        log_share = log_share - log_total.unsqueeze(-2)
        log_z = log_z + log_total.sum(-1)
    return log_z


def _eliminated_marginals(masked: Tensor, root: int) -> tuple[Tensor, Tensor]:
    """Arc marginals as the gradient of ``_log_partition_by_elimination`` (a graph through
    it when ``masked`` needs gradients, for SST's backward pass), and whether Z > 0 (else
    no arborescence exists and the gradient means nothing)."""
    with torch.enable_grad():
        leaf = masked if masked.requires_grad else masked.detach().requires_grad_()
        log_z = _log_partition_by_elimination(leaf, root)
        (marginals,) = torch.autograd.grad(log_z.sum(), leaf, create_graph=masked.requires_grad)
    return marginals, log_z.detach() > _NEG_INF


def _column_error(marginals: Tensor, root: int) -> Tensor:
    """max_j |sum_i P(i -> j) - 1| over non-root columns, per batch element."""
    non_root = torch.arange(marginals.shape[-1], device=marginals.device) != root
    return ((marginals.sum(-2) - 1.0) * non_root).abs().amax(-1)


def _directed_marginals(masked: Tensor, root: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Arc marginals P(i -> j) of arborescences rooted at ``root`` for float64 ``masked``
    scores (-inf on the diagonal, the root's column and missing arcs), for a result in
    ``dtype``; returns them and a per-element validity mask.

    The fast route is one LU inverse (``_lu_marginals``). Its error grows like
    eps exp(gap) when a group of nodes is bound by arcs `gap` nats above those entering it
    (the minor's smallest singular value is about the chance that the group takes an outside
    parent); in float32 the minor is exactly singular from gap ~17, which sharpening SST
    scores reach within a few thousand ListOps steps. So we always work in float64, and the
    elements whose column sums miss 1 by more than ``_COLUMN_SUM_TOL`` (or ``dtype``'s eps,
    where larger) are recomputed by subtraction-free elimination (``_eliminated_marginals``),
    exact at any gap.
    """
    marginals, info = _lu_marginals(masked, root)
    tol = max(_COLUMN_SUM_TOL, torch.finfo(dtype).eps)
    redo = ~torch.isfinite(marginals).flatten(-2).all(-1) | (info != 0) | ~(_column_error(marginals, root) <= tol)
    no_tree = torch.zeros_like(redo)
    if bool(redo.any()):  # the one synchronisation on the happy path
        if masked.requires_grad:
            # The LU backward of a (near-)singular element is inf or NaN even under a zero
            # upstream gradient (0 * inf): recompute with those elements cut from the graph.
            cut = torch.where(redo[..., None, None], masked.detach(), masked)
            marginals, _ = _lu_marginals(cut, root)
        flat = marginals.reshape(-1, *marginals.shape[-2:])
        rows = redo.reshape(-1).nonzero().squeeze(-1)
        exact, exists = _eliminated_marginals(masked.reshape(flat.shape).index_select(0, rows), root)
        marginals = flat.index_put((rows,), exact).reshape(marginals.shape)
        no_tree = no_tree.reshape(-1).index_put((rows,), ~exists).reshape(redo.shape)
    valid = ~no_tree & torch.isfinite(marginals).flatten(-2).all(-1) & (_column_error(marginals, root) <= 1e-6)
    return marginals, valid


def _raise_if_invalid(scores: Tensor, read: Tensor, valid: Tensor, edgeless: Callable[[], Tensor], what: str) -> None:
    """Raise ValueError naming the cause unless every element is ``valid``; ``edgeless()``
    (called only then) marks the nodes without a usable edge."""
    if not bool(valid.all()):
        reason = _bad_entries(scores, read)
        if reason is None and bool(edgeless().any()):
            reason = f"a node has no {what} edge above -inf, so no structure exists"
        if reason is None:
            reason = "the Laplacian minor is singular: not every node is connected through edges above -inf"
        raise ValueError(f"scores of shape {tuple(scores.shape)}: {reason}")


def spanning_tree_marginals(scores: Tensor) -> Tensor:
    """Edge marginals of p(T) ∝ exp(sum_{e∈T} s_e) over spanning trees, by the matrix-tree theorem.

    Orient every spanning tree away from node 0: this is a bijection onto the arborescences
    rooted at 0 that keeps the weight when w_ij = w_ji, so

        P({i, j} ∈ T) = P(i -> j) + P(j -> i)

    with the arc marginals of those arborescences (``_directed_marginals``: the matrix-tree
    theorem in float64, with an exact fallback where the minor is near-singular).

    Args:
        scores: ``[..., n, n]``; only the strict upper triangle is read (the lower triangle
            and the diagonal are ignored and get zero gradient); ``-inf`` = missing edge.
            The finite edges must connect the graph (else ``ValueError``). The result has
            the input's dtype.

    Returns:
        Symmetric ``[..., n, n]`` marginals, zero diagonal, total 2(n - 1).

    Example:
        >>> spanning_tree_marginals(torch.zeros(3, 3))  # triangle: each edge in 2 of 3 trees
        tensor([[0.0000, 0.6667, 0.6667],
                [0.6667, 0.0000, 0.6667],
                [0.6667, 0.6667, 0.0000]])

    Cost: O(n^3) time (one batched LU inverse), O(n^2) memory per batch element.
    """
    scores = _check_square("scores", scores)
    _check_linalg_dtype("scores", scores)
    n = scores.shape[-1]
    if n == 1:
        return torch.zeros_like(scores)  # one tree with no edge

    index = torch.arange(n, device=scores.device)
    upper = index.unsqueeze(-1) < index.unsqueeze(-2)
    work = scores.to(torch.float64)
    sym = torch.where(upper, work, work.mT).masked_fill(index.unsqueeze(-1) == index.unsqueeze(-2), _NEG_INF)
    arcs, valid = _directed_marginals(sym.masked_fill(index == 0, _NEG_INF), 0, scores.dtype)
    marginals = arcs + arcs.mT
    _raise_if_invalid(scores, upper, valid, lambda: (sym == _NEG_INF).all(-1), "incident")
    return marginals.to(scores.dtype)


def arborescence_marginals(scores: Tensor, root: int = 0) -> Tensor:
    """Edge marginals of p(A) ∝ exp(sum_{e∈A} s_e) over arborescences rooted at ``root``.

    Directed matrix-tree theorem (Tutte; Koo et al. 2007); ``_lu_marginals`` has the formula
    and ``_directed_marginals`` the numerics (float64, with an exact fallback where the
    minor is near-singular).

    Args:
        scores: ``[..., n, n]``, entry [i, j] scores the edge i -> j; ``-inf`` = missing edge.
            The root's column and the diagonal are ignored (zero output, zero gradient).
            Every node must be reachable from the root through edges above ``-inf`` (else
            ``ValueError``). The result has the input's dtype.
        root: the root node, 0 <= root < n.

    Returns:
        ``[..., n, n]`` marginals; each non-root column sums to 1.

    Example:
        >>> arborescence_marginals(torch.zeros(3, 3))  # 3 trees: 0->1->2, 0->2->1, 0->{1,2}
        tensor([[0.0000, 0.6667, 0.6667],
                [0.0000, 0.0000, 0.3333],
                [0.0000, 0.3333, 0.0000]])

    Cost: O(n^3) time (one batched LU inverse), O(n^2) memory per batch element.
    """
    scores = _check_square("scores", scores)
    _check_linalg_dtype("scores", scores)
    n = scores.shape[-1]
    root = _check_int("root", root, 0, n - 1, f"the root must be one of the n={n} nodes")

    index = torch.arange(n, device=scores.device)
    ignored = (index.unsqueeze(-1) == index.unsqueeze(-2)) | (index == root).unsqueeze(-2)
    masked = scores.to(torch.float64).masked_fill(ignored, _NEG_INF)
    marginals, valid = _directed_marginals(masked, root, scores.dtype)
    _raise_if_invalid(scores, ~ignored, valid, lambda: (masked == _NEG_INF).all(-2) & (index != root), "incoming")
    return marginals.to(scores.dtype)


# --------------------------------------------------------------------------- Sinkhorn


def sinkhorn(log_alpha: Tensor, iterations: int = 100, tol: float = 1e-6) -> Tensor:
    """Gumbel-Sinkhorn's relaxed permutation: Sinkhorn normalisation in log space.

    Alternates  a <- a - logsumexp_j a[i, j]  (rows sum to 1)  and
    a <- a - logsumexp_i a[i, j]  (columns sum to 1), starting from log_alpha, and returns
    exp(a). The limit is the doubly stochastic matrix diag(u) exp(log_alpha) diag(v), the
    entropy-regularised assignment (Mena et al. 2018). After every ``_SINKHORN_CHECK_EVERY``
    sweeps one reduction over the whole batch tests max |log row sum| <= tol and stops
    early; the returned columns always sum to 1 (the last step), rows within ~tol when it
    converged. Gradients are those of the unrolled iterations actually run. Convergence needs a permutation inside the support of finite entries; the
    number of iterations needed grows with the magnitude of log_alpha (low temperature).

    Args:
        log_alpha: ``[..., n, n]`` log-potentials (e.g. (logits + Gumbel) / tau); ``-inf``
            forbids an entry; a row or column with no finite entry raises ``ValueError``.
        iterations: maximum number of row+column sweeps, >= 1.
        tol: convergence tolerance on the log row sums, >= 0 (0 runs every iteration).

    Returns:
        ``[..., n, n]`` non-negative matrix with unit column sums and (near-)unit row sums.

    Example:
        >>> sinkhorn(torch.zeros(2, 2))
        tensor([[0.5000, 0.5000],
                [0.5000, 0.5000]])

    Cost: O(iterations n^2) time; autograd keeps O(iterations n^2) memory per batch element.
    """
    log_alpha = _check_square("log_alpha", log_alpha)
    iterations = _check_int("iterations", iterations, 1, None, "at least one Sinkhorn sweep is needed")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
        raise ValueError(f"tol must be a non-negative number, got {tol!r}")

    a = log_alpha
    for step in range(1, iterations + 1):
        # log_softmax is the fused a - logsumexp(a): it saves one tensor per step for autograd.
        a = torch.log_softmax(a, -1)
        a = torch.log_softmax(a, -2)
        if step % _SINKHORN_CHECK_EVERY == 0 and step < iterations:
            with torch.no_grad():  # one reduction and one sync per check; no autograd state
                if bool(torch.logsumexp(a, -1).abs().amax() <= tol):
                    break
    result = _exp(a)

    if not bool(torch.isfinite(result).all()):
        reason = _bad_entries(log_alpha) or "a row or column has no entry above -inf"
        raise ValueError(f"log_alpha of shape {tuple(log_alpha.shape)}: {reason}")
    return result
