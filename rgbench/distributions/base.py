"""Shared machinery of the perturbed-algorithm distributions.

Convention (docs/design.md §1): ``logits`` are log-rates. Utilities E_i ~ Exp(lambda_i) with
lambda = exp(logits); the algorithm only takes argmins of E, so P(argmin = i) =
softmax(logits)_i and a higher logit is picked earlier. Positions a structure cannot use
(``-inf`` logits, the diagonal of a graph, edges into a root) carry E = +inf.

A structure implements three batched kernels: :meth:`StructuredDistribution._solve` (the
algorithm on checked noise; :meth:`~StructuredDistribution.solve` checks, then calls it),
:meth:`~StructuredDistribution.indicator` and :meth:`~StructuredDistribution._draw_sets` (for
each draw of a trace, its candidate set and its argmin). From the draw sets this class
derives the trace log-probability and the conditional noise E | T for every structure;
enumeration comes from the structure's :class:`~rgbench.distributions.recursion.Recursion`.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from functools import cached_property, lru_cache
from typing import Any, ClassVar, Iterator, NamedTuple

import torch
from torch.distributions import Distribution, constraints

from rgbench.distributions import recursion as spec

Trace = Any  # a LongTensor, or a NamedTuple of tensors for structures with richer traces


class TraceSample(NamedTuple):
    """A sample X, its execution trace T and the noise E that produced both."""

    x: torch.Tensor
    trace: Trace
    noise: torch.Tensor


class Enumeration(NamedTuple):
    """Every trace of one instance: ``traces`` and ``x`` stacked along a leading axis of
    size N, ``log_probs`` of shape [N] (differentiable w.r.t. the logits)."""

    traces: Trace
    log_probs: torch.Tensor
    x: torch.Tensor


class DrawSet(NamedTuple):
    """D draws of a trace at once. ``candidates`` [..., D, K] bool over the flattened
    logits, ``chosen`` [..., D] long (a flat index), ``active`` [..., D] bool (False for
    padding)."""

    candidates: torch.Tensor
    chosen: torch.Tensor
    active: torch.Tensor


def unit_exponential(shape, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Exp(1) draws of ``shape`` in ``like``'s dtype and device.

    Inverse-CDF from uniforms, -log1p(-U) with U in [0, 1): always finite (an infinite
    utility would never be picked), and several times faster than ``Tensor.exponential_``
    on the CPU.
    """
    return _uniform(shape, like, generator).neg_().log1p_().neg_()


def _uniform(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """U[0, 1) draws of ``shape`` in ``like``'s dtype and device.

    float32 on the CPU: the same law as ``torch.rand`` (24 random bits times 2^-24), taken
    from the two 32-bit halves of int64 words, which the CPU generator fills about twice as
    fast as it fills floats (torch.rand alone was about a tenth of a sampler's time at
    batch 128).
    """
    if like.dtype != torch.float32 or like.device.type != "cpu":
        return torch.rand(shape, dtype=like.dtype, device=like.device, generator=generator)
    shape = torch.Size(shape)
    count = shape.numel()
    words = torch.empty((count + 1) // 2, dtype=torch.int64).random_(generator=generator)
    bits = words.view(torch.int32)[:count].view(shape)  # the low 24 bits of each half are uniform
    return bits.bitwise_and_(2**24 - 1).float().mul_(2**-24)


def scale_exponential(unit: torch.Tensor, log_rate: torch.Tensor) -> torch.Tensor:
    """Exp(1) draws -> Exp(exp(log_rate)) draws: unit / rate, computed as
    exp(log(unit) - log_rate) so that a zero draw stays 0 even where the rate underflows
    (unit * exp(-log_rate) would give 0 * inf = NaN). Callers mask positions of rate 0.

    Draws are capped just below the dtype's largest finite value: a larger one (a log-rate
    below about -88 in float32) is not representable, and +inf would tie with the unusable
    positions and give the reparameterised gradient 0 * inf = NaN (it killed an SST ListOps
    run)."""
    return torch.exp((torch.log(unit) - log_rate).clamp_(max=_log_max(unit.dtype)))


@lru_cache(maxsize=None)
def _frame_limits(dtype: torch.dtype) -> tuple[float, float]:
    """(H, G): how far logits - s may reach below 0 (H) and above it (G) for noise
    Exp(1) * exp(s - logits) of ``dtype`` to stay finite and normal, with 2 nats to spare.

    The Exp(1) draws of :func:`unit_exponential` lie in {0} and [eps/2, -log(eps/2)]; the
    product stays below the largest float while logits - s >= -H, H = log(max) -
    log(-log(eps/2)) - 2, and above the smallest normal one while logits - s <= G,
    G = log(eps/2) - log(tiny) - 2. float32: H = 83.9, G = 68.7; float64: H = 704.2, G = 669.7."""
    info = torch.finfo(dtype)
    half_eps = math.log(info.eps / 2)
    return math.log(info.max) - math.log(-half_eps) - 2.0, half_eps - math.log(info.tiny) - 2.0


@lru_cache(maxsize=None)
def _log_max(dtype: torch.dtype) -> float:
    """The largest x of ``dtype`` with exp(x) finite in ``dtype`` (log(max) rounds up in it)."""
    cap = torch.tensor(math.log(torch.finfo(dtype).max), dtype=dtype)
    while torch.isinf(cap.exp()):
        cap = torch.nextafter(cap, torch.tensor(-math.inf, dtype=dtype))
    return cap.item()


def _map_trace(fn, trace: Trace) -> Trace:
    if isinstance(trace, torch.Tensor):
        return fn(trace)
    return type(trace)(*(fn(part) for part in trace))


def _stack_traces(traces: list[Trace]) -> Trace:
    if isinstance(traces[0], torch.Tensor):
        return torch.stack(traces)
    return type(traces[0])(*(torch.stack(parts) for parts in zip(*traces)))


class StructuredDistribution(Distribution):
    """Base class: a structured variable defined by a recursive algorithm on Exp noise.

    Subclasses set ``logits_event_dim`` (1 for item scores, 2 for a score matrix), and
    ``max_enumeration_size`` (the largest n whose traces :meth:`enumerate_traces` lists).
    """

    arg_constraints = {"logits": constraints.real}
    has_rsample = False
    logits_event_dim: int = 1
    max_enumeration_size: int = 6
    #: the registry name (``rgbench.registry`` sets it when the class is registered)
    name: ClassVar[str]
    #: True when only the strict upper triangle of the [n, n] logits is read (undirected
    #: edges): a parameterisation must keep the logits symmetric
    symmetric_logits: ClassVar[bool] = False
    #: True when the structure is the argmax of a linear program, so :meth:`relax` gives its
    #: regularised (Gibbs-marginal) relaxation, as the stochastic softmax trick needs
    has_relaxation: ClassVar[bool] = False
    #: why there is no relaxation where ``has_relaxation`` is False (ends error messages)
    no_relaxation_reason: ClassVar[str] = "no regularised-argmax relaxation is implemented for it"

    def __init__(self, logits: torch.Tensor, validate_args: bool | None = None):
        self.logits = self._check_logits(logits)
        batch_shape = self.logits.shape[: -self.logits_event_dim]
        self._check_structure()
        super().__init__(batch_shape, self._x_event_shape(), validate_args=False)

    # ------------------------------------------------------------------ validation
    def _check_logits(self, logits: Any) -> torch.Tensor:
        name = type(self).__name__
        if not isinstance(logits, torch.Tensor):
            raise ValueError(f"{name}: logits must be a torch.Tensor, got {type(logits).__name__}")
        if logits.device.type not in ("cpu", "cuda"):
            # 'meta' tensors have no values to sample from; other backends are untested.
            raise ValueError(f"{name}: logits must be on a cpu or cuda device, got device {logits.device}")
        if not logits.is_floating_point():
            raise ValueError(f"{name}: logits must be a floating-point tensor, got dtype {logits.dtype}")
        if logits.dtype not in (torch.float32, torch.float64):
            # float16/bfloat16 noise ties too often for E | T to reproduce its trace (a 10- or
            # 7-bit mantissa), and exp(logits) leaves their range at |logits| > 11 (float16).
            raise ValueError(
                f"{name}: logits must be float32 or float64, got {logits.dtype} "
                "(half precision cannot hold the noise exactly enough; convert with logits.float())"
            )
        d = self.logits_event_dim
        shape = "(..., n)" if d == 1 else "(..., n, n)"
        if logits.dim() < d or (d == 2 and logits.shape[-1] != logits.shape[-2]):
            raise ValueError(f"{name}: logits must have shape {shape}, got {tuple(logits.shape)}")
        if logits.shape[-1] < 1:
            raise ValueError(f"{name}: logits must have n >= 1 items, got shape {tuple(logits.shape)}")
        # One pass for both facts: NaN and +inf show in the maximum (NaN propagates), -inf in
        # the minimum; _all_finite lets the usable mask and the finiteness checks skip theirs.
        low, high = torch.aminmax(logits.detach()) if logits.numel() else (logits.new_zeros(()),) * 2
        self._logits_min, self._logits_max = torch.stack([low, high]).tolist()
        self._all_finite = self._logits_min > -torch.inf
        if not self._logits_max < torch.inf:  # NaN fails too
            where = tuple((~(logits < torch.inf)).nonzero()[0].tolist())
            raise ValueError(
                f"{name}: logits must not contain NaN or +inf (found {logits[where].item()} at index {where})"
            )
        return logits

    def _check_structure(self) -> None:
        """Structure-specific checks on the logits (symmetry, connectivity, k <= n, ...)."""

    def _check_noise(self, noise: torch.Tensor) -> torch.Tensor:
        name = type(self).__name__
        event = self.logits.shape[-self.logits_event_dim :]
        if not isinstance(noise, torch.Tensor) or noise.shape[noise.dim() - len(event) :] != event:
            got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
            raise ValueError(f"{name}.solve: noise must have shape (..., {', '.join(map(str, event))}), got {got}")
        if torch.isnan(noise).any():
            raise ValueError(f"{name}.solve: noise contains NaN")
        # Unusable positions must never win an argmin, whatever the caller put there.
        return torch.where(self._usable, noise, torch.full_like(noise, float("inf")))

    def _trace_lead_shape(self, trace: Any, event: tuple[int, ...]) -> torch.Size:
        """Check that ``trace`` is a LongTensor ending in ``event`` whose leading dims
        broadcast with the batch shape; return the broadcast leading shape."""
        name = type(self).__name__
        if not isinstance(trace, torch.Tensor) or trace.dtype != torch.long or trace.shape[trace.dim() - len(event) :] != event:
            got = (trace.dtype, tuple(trace.shape)) if isinstance(trace, torch.Tensor) else type(trace).__name__
            shape = ", ".join(["..."] + [str(size) for size in event])
            raise ValueError(f"{name}: trace must be a LongTensor of shape ({shape}), got {got}")
        lead = trace.shape[: trace.dim() - len(event)]
        try:
            return torch.broadcast_shapes(lead, self.batch_shape)
        except RuntimeError:
            raise ValueError(
                f"{name}: trace shape {tuple(trace.shape)} does not broadcast with batch_shape {tuple(self.batch_shape)}"
            ) from None

    # ------------------------------------------------------------------ shape helpers
    @property
    def n(self) -> int:
        return self.logits.shape[-1]

    @abstractmethod
    def _x_event_shape(self) -> torch.Size:
        """The shape of one sample X."""

    def _structural_mask(self) -> torch.Tensor:
        """Positions the structure can ever choose, ignoring the logits' values."""
        shape = self.logits.shape[-self.logits_event_dim :]
        return torch.ones(shape, dtype=torch.bool, device=self.logits.device)

    @cached_property
    def _usable(self) -> torch.Tensor:
        """Bool mask, shape of logits: finite logits at structurally usable positions."""
        mask = self._structural_mask()
        if self._all_finite:
            return mask.expand(self.logits.shape)
        # _check_logits has excluded NaN and +inf, so finite is "not -inf": one comparison
        # (torch.isfinite takes four passes).
        return mask & (self.logits > -torch.inf)

    @cached_property
    def _unusable(self) -> torch.Tensor:
        """~:attr:`_usable`, left unbroadcast ([n] or [n, n]) where only the structure
        excludes positions, so that masking the noise reads no batch-sized mask."""
        if self._all_finite:
            return ~self._structural_mask()
        return ~self._usable

    @cached_property
    def _all_usable(self) -> bool:
        """Whether every position is usable (finite logits, no structural exclusions): the
        noise then needs no +inf masking."""
        return self._all_finite and bool(self._structural_mask().all())

    # ------------------------------------------------------------------ the noise frame
    # X and T are invariant to multiplying all of one instance's noise by a constant (every
    # algorithm compares and subtracts utilities), i.e. to a constant shift of its logits. The
    # noise is therefore drawn relative to a per-instance reference log-rate s (detached):
    # E_i ~ Exp(exp(logits_i - s)), which keeps every draw a normal float whatever the logits'
    # offset (absolute rates exp(logits) under- or overflow float32 past |logits| ~ 88).
    def _spread_values(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The detached logits whose extremes set the noise frame, flat [..., K], and a mask
        of the usable ones (None: all are)."""
        flat = self.logits.detach().flatten(-self.logits_event_dim)  # not _flat_logits: cached, maybe under no_grad
        return flat, (None if self._all_usable else self._usable.flatten(-self.logits_event_dim))

    @cached_property
    def _frame(self) -> tuple[torch.Tensor, float]:
        """(s, span): the reference log-rates s, shape ``batch_shape + (1,) *
        logits_event_dim``, and the widest span of usable logits within one instance.

        s is each instance's largest usable logit, lowered to (smallest + H) where the logits
        span more than H nats (H, G from :func:`_frame_limits`): then every draw stays finite,
        and those of the largest rates stay normal floats while the span is at most H + G
        (about 152 nats in float32, 1,374 in float64). Wider spans cannot be sampled in the
        dtype: :meth:`_check_frame` raises."""
        values, usable = self._spread_values()
        shape = self.batch_shape + (1,) * self.logits_event_dim
        if values.shape[-1] == 0 or values.numel() == 0:
            return values.new_zeros(shape), 0.0
        if usable is None:
            top, bottom = values.amax(-1, keepdim=True), values.amin(-1, keepdim=True)
        else:
            top = values.masked_fill(~usable, -torch.inf).amax(-1, keepdim=True)
            bottom = values.masked_fill(~usable, torch.inf).amin(-1, keepdim=True)
        high, _ = _frame_limits(values.dtype)
        empty = top == -torch.inf  # an instance with nothing usable (a 1-node graph): any shift
        shift = torch.minimum(top, bottom + high).masked_fill(empty, 0.0)
        span = float((top - bottom).masked_fill(empty, 0.0).amax())
        return shift.reshape(shape), span

    @property
    def noise_shift(self) -> torch.Tensor:
        """The reference log-rate s of each instance (detached, shape ``batch_shape + (1,) *
        logits_event_dim``): sampled noise is E_i ~ Exp(exp(logits_i - s)). The law of X and T
        does not depend on s; the E-score 1 - exp(logits_i - s) E_i is the usual one."""
        return self._frame[0]

    def _check_frame(self) -> None:
        """Raise if the usable logits of some instance span more nats than noise in this
        dtype can resolve (the law would be wrong: distinct draws would tie)."""
        span = self._frame[1]
        limit = sum(_frame_limits(self.logits.dtype))
        if span > limit:
            raise ValueError(
                f"{type(self).__name__}: logits span {span:.1f} nats within one instance, more than "
                f"{self.logits.dtype} noise can represent ({limit:.0f}); use float64 logits or a smaller spread"
            )

    @property
    def _relative_logits(self) -> torch.Tensor:
        """logits - s (differentiable; s detached). Not cached: a copy made under no_grad
        would carry no graph."""
        return self.logits - self.noise_shift

    @cached_property
    def _inverse_rates(self) -> torch.Tensor:
        """exp(s - logits), detached, 1 at unusable positions (they are masked afterwards)."""
        relative = self._relative_logits.detach()
        if not self._all_usable:
            relative = relative.masked_fill(self._unusable, 0.0)
        return torch.exp(-relative)

    @property
    def _bounds(self) -> tuple[float, float]:
        """The smallest and the largest logit, read at construction."""
        return self._logits_min, self._logits_max

    @cached_property
    def _flat_logits(self) -> torch.Tensor:
        return self.logits.flatten(-self.logits_event_dim)

    def _extra_args(self) -> dict[str, Any]:
        """Constructor arguments besides the logits (k, root, ...)."""
        return {}

    # ------------------------------------------------------------------ public API for other packages
    @property
    def support_mask(self) -> torch.Tensor:
        """Bool, the shape of ``logits``: the positions this instance can ever choose (finite
        logits at structurally usable positions). The gradient of E[L(X)] is 0 elsewhere."""
        return self._usable

    @property
    def structure_args(self) -> dict[str, Any]:
        """The constructor arguments besides the logits (``k`` for top-k, ``root`` for
        arborescences, ...), so that ``type(d)(logits, **d.structure_args)`` is ``d`` with
        other logits (see :meth:`with_logits`)."""
        return dict(self._extra_args())

    def with_logits(self, logits: torch.Tensor) -> "StructuredDistribution":
        """The same structure (same ``k``, ``root``, ...) on other logits, e.g. detached,
        perturbed, shifted or cast to another dtype; the logits are checked as usual."""
        return type(self)(logits, **self._extra_args())

    def expand(self, batch_shape, _instance=None):
        event = self.logits.shape[-self.logits_event_dim :]
        return type(self)(self.logits.expand(torch.Size(batch_shape) + event), **self._extra_args())

    @classmethod
    def default_args(cls, n: int) -> dict[str, Any]:
        """Constructor arguments besides the logits that a size-n benchmark instance uses."""
        return {}

    @classmethod
    def random_logits(
        cls,
        n: int,
        batch_shape=torch.Size(),
        scale: float = 1.0,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Logits ~ Normal(0, scale^2) i.i.d., shape ``batch_shape + (n,)*logits_event_dim``
        (structures with constraints, e.g. symmetry, override this)."""
        shape = torch.Size(batch_shape) + (n,) * cls.logits_event_dim
        return scale * torch.randn(shape, generator=generator, dtype=dtype, device=device)

    @cached_property
    def indicator_event_shape(self) -> torch.Size:
        """The shape of ``indicator(x)`` for one instance."""
        return self.indicator(self.mode).shape[len(self.batch_shape) :]

    # ------------------------------------------------------------------ sampling
    def sample_noise(self, sample_shape=torch.Size(), generator: torch.Generator | None = None) -> torch.Tensor:
        """E ~ Exp(exp(logits - s)) (s = :attr:`noise_shift`), shape ``sample_shape +
        logits.shape``; +inf where unusable. Reparameterised in the logits."""
        shape = torch.Size(sample_shape) + self.logits.shape
        return self._scale_unit_noise(unit_exponential(shape, self.logits.detach(), generator))

    def _scale_unit_noise(self, unit: torch.Tensor) -> torch.Tensor:
        """Exp(1) -> Exp(exp(logits - s)) by one multiplication with exp(s - logits) (finite
        and normal in the frame, see :attr:`_frame`); +inf where unusable.

        Takes ownership of ``unit`` (it may be overwritten)."""
        self._check_frame()
        if not (self.logits.requires_grad and torch.is_grad_enabled()):
            noise = unit.mul_(self._inverse_rates)
            return noise if self._all_usable else noise.masked_fill_(self._unusable, torch.inf)
        relative = self._relative_logits
        if self._all_usable:
            return unit * torch.exp(-relative)
        # The masked positions get rate 1 before the exp (no inf * 0 in the backward pass).
        noise = unit * torch.exp(-relative.masked_fill(self._unusable, 0.0))
        return noise.masked_fill(self._unusable, torch.inf)

    def sample_with_trace(self, sample_shape=torch.Size(), generator: torch.Generator | None = None) -> TraceSample:
        with torch.no_grad():
            noise = self.sample_noise(sample_shape, generator)
            x, trace = self._solve_sampled(noise)
        return TraceSample(x, trace, noise)

    def _solve_sampled(self, noise: torch.Tensor) -> tuple[torch.Tensor, Trace]:
        """:meth:`_solve` on noise from :meth:`sample_noise`: valid by construction (no NaN,
        +inf on unusable positions, finite and >= +0.0 elsewhere), so :meth:`solve`'s checks,
        which cost as much as the top-k selection itself at n = 1000, are skipped. Structures
        whose kernels can use the sign and finiteness override it."""
        return self._solve(noise)

    def sample(self, sample_shape=torch.Size(), generator: torch.Generator | None = None) -> torch.Tensor:
        return self.sample_with_trace(sample_shape, generator).x

    @property
    def mode(self) -> torch.Tensor:
        """The noise-free solution: the max-weight structure under the logits (docs/design.md §1).

        Not always the most probable X; it is what the algorithm returns on E = -logits.
        """
        with torch.no_grad():
            return self.solve(-self.logits)[0]

    def solve(self, noise: torch.Tensor) -> tuple[torch.Tensor, Trace]:
        """Run the algorithm on ``noise`` of shape ``sample_shape + logits.shape``: (X, T).

        Checks the shape and NaN, and puts +inf on the unusable positions whatever the
        caller put there."""
        return self._solve(self._check_noise(noise).detach())

    @abstractmethod
    def _solve(self, noise: torch.Tensor) -> tuple[torch.Tensor, Trace]:
        """:meth:`solve` on checked noise (no NaN, +inf exactly where unusable)."""

    @abstractmethod
    def indicator(self, x: torch.Tensor) -> torch.Tensor:
        """X in indicator form (float, in the logits' dtype)."""

    # ------------------------------------------------------------------ traces
    @abstractmethod
    def _draw_sets(self, trace: Trace) -> Iterator[DrawSet]:
        """The draws of ``trace``: candidate sets, argmins and activity, in order."""

    def _validated_draw_sets(self, trace: Trace) -> Iterator[DrawSet]:
        """:meth:`_draw_sets` plus the check that every draw picks one of its candidates.

        The check is accumulated on the device and read once, after the last draw.
        """
        bad = None
        for draws in self._draw_sets(trace):
            picked = draws.candidates.gather(-1, draws.chosen.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            wrong = (draws.active & ~picked).any()
            bad = wrong if bad is None else bad | wrong
            yield draws
        if bad is not None and bool(bad):
            raise ValueError(
                f"{type(self).__name__}: trace does not belong to this distribution "
                "(a draw picks an index outside its candidate set)"
            )

    def trace_log_prob(self, trace: Trace) -> torch.Tensor:
        """log P(T) = sum_draws [logits_t - logsumexp_{j in P} logits_j], shape
        ``sample_shape + batch_shape``; differentiable w.r.t. the logits."""
        logits = self._flat_logits.unsqueeze(-2)
        total = None
        for draws in self._validated_draw_sets(trace):
            masked = torch.where(draws.candidates, logits, torch.full_like(logits, float("-inf")))
            log_norm = torch.logsumexp(masked, dim=-1)
            picked = logits.expand(draws.candidates.shape).gather(-1, draws.chosen.clamp(min=0).unsqueeze(-1))
            term = torch.where(draws.active, picked.squeeze(-1) - log_norm, torch.zeros_like(log_norm)).sum(-1)
            total = term if total is None else total + term
        return total

    def noise_given_trace(self, trace: Trace, generator: torch.Generator | None = None) -> torch.Tensor:
        """One draw of E | T (docs/design.md §3.2), reparameterised in the logits, in the frame of
        :meth:`sample_noise` (rates lambda_j = exp(logits_j - s)).

        Walking the draws, each adds d ~ Exp(sum_{j in P} lambda_j) to every candidate j in
        P; the chosen one keeps its total, every other usable position finally gets its
        total plus a fresh Exp(lambda_j). Running :meth:`solve` on the result gives T back.
        """
        self._check_frame()
        logits, shift = self._flat_logits, self.noise_shift.flatten(-self.logits_event_dim)
        offset, chosen = None, None
        for draws in self._validated_draw_sets(trace):
            masked = torch.where(draws.candidates, logits.unsqueeze(-2), torch.full_like(logits.unsqueeze(-2), -torch.inf))
            log_norm = torch.logsumexp(masked, dim=-1)
            unit = unit_exponential(log_norm.shape, logits, generator)
            safe_norm = torch.where(draws.active, log_norm - shift, torch.zeros_like(log_norm))
            step = torch.where(draws.active, scale_exponential(unit, safe_norm), torch.zeros_like(unit))
            added = (draws.candidates.to(logits.dtype) * step.unsqueeze(-1)).sum(-2)
            picked = torch.zeros_like(draws.candidates).scatter_(
                -1, draws.chosen.clamp(min=0).unsqueeze(-1), draws.active.unsqueeze(-1)
            ).any(-2)
            offset = added if offset is None else offset + added
            chosen = picked if chosen is None else chosen | picked
        shape = offset.shape[:-1] + self.logits.shape[-self.logits_event_dim :]
        offset, chosen = offset.reshape(shape), chosen.reshape(shape)
        fresh = self._scale_unit_noise(unit_exponential(shape, logits, generator))
        return torch.where(chosen, offset, offset + fresh)

    def noise_log_prob(self, noise: torch.Tensor) -> torch.Tensor:
        """log p(E) = sum over usable positions of r_i - exp(r_i) E_i, r = logits - s: the
        density of the noise of :meth:`sample_noise` (s = :attr:`noise_shift`, detached). Its
        gradient is the E-REINFORCE score 1 - lambda_i E_i, the same in every frame.

        exp(r_i) E_i is computed as exp(r_i + log E_i), about Exp(1) in size, so that no
        factor overflows for noise from another frame; E_i = 0 gives exactly 0, with a zero
        derivative. E is data here: it is detached (the density's gradient in the logits at
        fixed E is the score)."""
        noise = noise.detach()
        safe_logits = torch.where(self._usable, self._relative_logits, torch.zeros_like(self.logits))
        positive = self._usable & (noise > 0)
        log_noise = torch.log(torch.where(positive, noise, torch.ones_like(noise)))
        # -inf inside the exp, not a where around it: exp(100) in the unused branch would send
        # 0 * inf = NaN back through the where.
        rate_noise = torch.exp(torch.where(positive, safe_logits + log_noise, -torch.inf))
        terms = torch.where(self._usable, safe_logits - rate_noise, torch.zeros_like(rate_noise))
        return terms.flatten(-self.logits_event_dim).sum(-1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            f"P(X) is intractable for {type(self).__name__} (a sum over all traces of X); "
            "use trace_log_prob(trace) for the score of the execution trace"
        )

    # ------------------------------------------------------------------ relaxation
    def relax(self, scores: torch.Tensor) -> torch.Tensor:
        """The regularised argmax of ``scores`` in indicator form: the marginals of the Gibbs
        law p(X) ∝ exp(<scores, indicator(X)>) over this structure (Paulus et al. 2020).

        ``scores`` has shape ``sample_shape + logits.shape`` (SST passes (logits + Gumbel) / tau)
        with ``-inf`` at positions outside :attr:`support_mask`; the result has shape
        ``sample_shape + batch_shape + indicator_event_shape`` and tends to the indicator of
        the argmax structure as the scores sharpen. ``NotImplementedError`` unless
        :attr:`has_relaxation`.
        """
        raise NotImplementedError(f"{type(self).__name__} has no relaxation: {self.no_relaxation_reason}")

    # ------------------------------------------------------------------ enumeration
    @abstractmethod
    def _recursion(self) -> spec.Recursion:
        """The reference recursion (Algorithm 2) of this unbatched instance."""

    @abstractmethod
    def _encode(self, draws: list[spec.Draw], x: Any) -> tuple[torch.Tensor, Trace]:
        """The reference run's (X, draws) in this class's tensor encodings."""

    def _usable_keys(self) -> list[int]:
        return self._usable.reshape(-1).nonzero().squeeze(-1).tolist()

    def _check_enumerable(self) -> None:
        name = type(self).__name__
        if self.batch_shape != torch.Size():
            raise ValueError(f"{name}.enumerate_traces needs an unbatched instance, got batch_shape {tuple(self.batch_shape)}")
        if self.n > self.max_enumeration_size:
            raise ValueError(
                f"{name}.enumerate_traces supports n <= {self.max_enumeration_size}, got n={self.n} "
                "(the number of traces grows super-exponentially)"
            )

    def enumerate_traces(self) -> Enumeration:
        """Every execution trace of this unbatched instance with its log-probability and X,
        from the reference recursion (not the fast kernels)."""
        self._check_enumerable()
        runs = spec.enumerate_traces(self._recursion())
        xs, traces, log_probs = [], [], []
        for draws, x in runs:
            x_tensor, trace = self._encode(draws, x)
            xs.append(x_tensor)
            traces.append(trace)
            log_probs.append(spec.trace_log_prob(self.logits, draws))
        return Enumeration(_stack_traces(traces), torch.stack(log_probs), torch.stack(xs))

    def reference_solve(self, noise: torch.Tensor) -> tuple[torch.Tensor, Trace]:
        """:meth:`solve` through the reference recursion, one instance at a time (slow;
        for tests). ``noise`` has shape ``sample_shape + logits.shape``."""
        event = self.logits.shape[-self.logits_event_dim :]
        flat_noise = noise.detach().reshape(-1, event.numel()).cpu().tolist()
        flat_logits = self.logits.detach().expand(noise.shape).reshape(-1, *event)
        outputs = []
        for values, logits in zip(flat_noise, flat_logits):
            instance = type(self)(logits, **self._extra_args())
            x, draws = spec.run(instance._recursion(), values)
            outputs.append(instance._encode(draws, x))
        xs = torch.stack([x for x, _ in outputs]).reshape(noise.shape[: noise.dim() - len(event)] + outputs[0][0].shape)
        traces = _stack_traces([t for _, t in outputs])
        lead = noise.shape[: noise.dim() - len(event)]
        traces = _map_trace(lambda t: t.reshape(lead + t.shape[1:]).to(noise.device), traces)
        return xs.to(noise.device), traces
