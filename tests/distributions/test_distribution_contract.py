"""Generic checks that every structure must pass, driven by the table in ``cases.py``.

Statistical tests use fixed seeds; each states its false-alarm rate.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest
import torch
from scipy import stats

from rgbench import distributions
from tests.cases import NAMES, CASES, flat_trace, make, traces_equal, x_key

SMALL = [2, 3, 4, 5]


def test_every_registered_structure_has_a_case():
    """CASES drives every contract test here: a structure missing from it goes untested."""
    assert set(CASES) == set(distributions.names())


def symmetric_param(name):
    """Map an unconstrained matrix to valid logits (gradcheck perturbs single entries)."""
    if name == "kruskal":
        return lambda p: torch.triu(p, 1) + torch.triu(p, 1).transpose(-1, -2)
    return lambda p: p


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", SMALL)
def test_enumeration_is_the_support_and_sums_to_one(name, n):
    dist = make(name, n, seed=n)
    enum = dist.enumerate_traces()
    assert torch.allclose(enum.log_probs.exp().sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-6)
    assert {x_key(x) for x in enum.x} == CASES[name][1](n)
    assert len(set(flat_trace(enum.traces))) == len(enum.log_probs), "traces must be distinct"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", SMALL)
def test_fast_log_prob_equals_reference(name, n):
    dist = make(name, n, seed=10 + n)
    enum = dist.enumerate_traces()
    assert torch.allclose(dist.trace_log_prob(enum.traces), enum.log_probs, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_enumerated_traces_replay(name):
    """X(T) from enumeration equals solve() on noise drawn given that trace."""
    dist = make(name, 4, seed=3)
    enum = dist.enumerate_traces()
    noise = dist.noise_given_trace(enum.traces, generator=torch.Generator().manual_seed(0))
    x, trace = dist.solve(noise)
    assert traces_equal(trace, enum.traces)
    assert torch.equal(x, enum.x)


@pytest.mark.parametrize("name", NAMES)
def test_sampling_frequencies_match_enumeration(name):
    """Chi-square goodness of fit of 20,000 sampled traces at n = 4; false-alarm rate 1e-3."""
    dist = make(name, 4, seed=7, scale=0.7)
    enum = dist.enumerate_traces()
    index = {key: i for i, key in enumerate(flat_trace(enum.traces))}
    draws = 20_000
    sample = dist.sample_with_trace((draws,), generator=torch.Generator().manual_seed(1))
    counts = Counter(index[key] for key in flat_trace(sample.trace))
    observed = torch.tensor([counts.get(i, 0) for i in range(len(index))], dtype=torch.float64)
    expected = draws * enum.log_probs.exp().detach()
    big = expected >= 5  # pool the rare cells so the chi-square approximation holds
    obs = torch.cat([observed[big], observed[~big].sum().reshape(1)])
    exp = torch.cat([expected[big], expected[~big].sum().reshape(1)])
    if exp[-1] < 5:
        obs, exp = obs[:-1], exp[:-1]
        exp = exp * obs.sum() / exp.sum()
    p_value = stats.chisquare(obs.numpy(), exp.numpy()).pvalue
    assert p_value > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_sample_with_trace_is_consistent(name):
    dist = make(name, 6, batch_shape=(3,), seed=5)
    sample = dist.sample_with_trace((2,), generator=torch.Generator().manual_seed(0))
    assert sample.x.shape == (2, 3) + dist.event_shape
    assert sample.noise.shape == (2,) + dist.logits.shape
    x, trace = dist.solve(sample.noise)
    assert torch.equal(x, sample.x) and traces_equal(trace, sample.trace)
    assert dist.trace_log_prob(sample.trace).shape == (2, 3)
    assert dist.indicator(sample.x).shape == (2, 3) + dist.indicator_event_shape
    assert dist.sample().shape == (3,) + dist.event_shape
    assert dist.expand((4, 3)).sample().shape == (4, 3) + dist.event_shape


@pytest.mark.parametrize("name", NAMES)
def test_noise_given_trace_always_reproduces_the_trace(name):
    dist = make(name, 6, batch_shape=(2,), seed=11)
    sample = dist.sample_with_trace((500,), generator=torch.Generator().manual_seed(2))
    for seed in range(2):  # 1,000 conditional draws in all
        noise = dist.noise_given_trace(sample.trace, generator=torch.Generator().manual_seed(seed))
        assert traces_equal(dist.solve(noise)[1], sample.trace)


@pytest.mark.parametrize("name", NAMES)
def test_noise_given_trace_matches_rejection_sampling(name):
    """Mean of E | T versus the mean of unconditional draws whose trace is T.

    Each usable coordinate is a two-sample z-test; the bound is Bonferroni-corrected for a
    family-wise false-alarm rate of 1e-2 per structure.
    """
    # Matching has 576 traces at n = 4: too few draws would be accepted, so use n = 3.
    dist = make(name, 3 if name == "matching" else 4, seed=4, scale=0.5)
    enum = dist.enumerate_traces()
    best = int(enum.log_probs.argmax())
    target = flat_trace(enum.traces)[best]
    draws = 40_000
    sample = dist.sample_with_trace((draws,), generator=torch.Generator().manual_seed(5))
    keep = torch.tensor([key == target for key in flat_trace(sample.trace)])
    accepted = sample.noise[keep]
    trace = [t[best] for t in ([enum.traces] if isinstance(enum.traces, torch.Tensor) else enum.traces)]
    trace = trace[0] if isinstance(enum.traces, torch.Tensor) else type(enum.traces)(*trace)
    expanded = trace.expand((draws,) + trace.shape) if isinstance(trace, torch.Tensor) else type(trace)(
        *(t.expand((draws,) + t.shape) for t in trace)
    )
    conditional = dist.noise_given_trace(expanded, generator=torch.Generator().manual_seed(6))
    usable = dist.support_mask
    a, b = accepted[:, usable], conditional[:, usable]
    assert len(a) > 1000
    se = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
    z = ((a.mean(0) - b.mean(0)) / se).abs()
    bound = stats.norm.isf(1e-2 / 2 / z.numel())
    assert (z < bound).all(), z


@pytest.mark.parametrize("name", NAMES)
def test_trace_log_prob_gradcheck(name):
    dist = make(name, 4, seed=8)
    trace = dist.sample_with_trace((3,), generator=torch.Generator().manual_seed(0)).trace
    param = symmetric_param(name)
    args = CASES[name][0](4)
    logits = dist.logits.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda l: type(dist)(param(l), **args).trace_log_prob(trace), (logits,))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_trace_log_prob_is_differentiable(name, dtype):
    dist = make(name, 5, batch_shape=(2,), seed=9, dtype=dtype)
    logits = dist.logits.clone().requires_grad_()
    d = type(dist)(logits, **CASES[name][0](5))
    trace = d.sample_with_trace((4,)).trace
    lp = d.trace_log_prob(trace)
    assert lp.dtype == dtype and torch.isfinite(lp).all()
    lp.sum().backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_fast_kernel_equals_reference_recursion(name):
    for n in (2, 5, 8):
        dist = make(name, n, seed=20 + n)
        noise = dist.sample_noise((64,), generator=torch.Generator().manual_seed(n))
        x, trace = dist.solve(noise)
        x_ref, trace_ref = dist.reference_solve(noise)
        assert torch.equal(x, x_ref)
        assert traces_equal(trace, trace_ref)


@pytest.mark.parametrize("name", NAMES)
def test_log_prob_is_the_sum_over_traces_or_refuses(name):
    dist = make(name, 4, seed=12)
    enum = dist.enumerate_traces()
    try:
        log_prob = dist.log_prob(enum.x)
    except NotImplementedError as error:
        assert "trace_log_prob" in str(error)
        return
    by_x = {}
    for key, lp in zip(map(x_key, enum.x), enum.log_probs.exp().tolist()):
        by_x[key] = by_x.get(key, 0.0) + lp
    expected = torch.tensor([by_x[x_key(x)] for x in enum.x], dtype=torch.float64)
    assert torch.allclose(log_prob.exp(), expected, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_mode_is_the_noise_free_solution(name):
    dist = make(name, 5, seed=13)
    x, _ = dist.solve(-dist.logits)
    assert torch.equal(dist.mode, x)


@pytest.mark.parametrize("name", NAMES)
def test_enumeration_refuses_large_or_batched_instances(name):
    big = make(name, make(name, 3).max_enumeration_size + 1)
    with pytest.raises(ValueError, match="enumerate_traces supports n <="):
        big.enumerate_traces()
    with pytest.raises(ValueError, match="unbatched"):
        make(name, 3, batch_shape=(2,)).enumerate_traces()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda l: l.long(), "floating-point"),
        (lambda l: l[..., :-1] if l.dim() > 1 else l[0], "shape"),
        (lambda l: l.index_put((torch.tensor([1]),) * l.dim(), torch.tensor(float("nan"), dtype=l.dtype)), "NaN"),
        (lambda l: l.index_put((torch.tensor([1]),) * l.dim(), torch.tensor(float("inf"), dtype=l.dtype)), r"\+inf"),
    ],
    ids=["dtype", "shape", "nan", "posinf"],
)
def test_bad_logits_raise_value_error(name, bad, match):
    dist = make(name, 4)
    with pytest.raises(ValueError, match=match):
        type(dist)(bad(dist.logits), **CASES[name][0](4))


@pytest.mark.parametrize("name", NAMES)
def test_foreign_trace_is_rejected(name):
    """Repeating the first draw at the end of a trace (an item, a (row, col) pick, an edge)
    never gives a trace of the distribution. Parent-array and tuple traces (binary tree,
    CLE) test their own corruptions."""
    if name in ("binary-tree", "cle"):
        pytest.skip("tested with structure-specific corruptions")
    dist = make(name, 5, seed=14)
    trace = dist.sample_with_trace((4,), generator=torch.Generator().manual_seed(0)).trace
    dup = trace.clone()
    if dup.dim() == 2:  # [sample, draws]
        dup[:, -1] = dup[:, 0]
    else:  # [sample, draws, 2]
        dup[:, -1, :] = dup[:, 0, :]
    with pytest.raises(ValueError, match="trace"):
        dist.trace_log_prob(dup)


@pytest.mark.cuda
@pytest.mark.parametrize("name", NAMES)
def test_runs_on_cuda(name):
    dist = make(name, 6, batch_shape=(4,), dtype=torch.float32)
    cuda = type(dist)(dist.logits.cuda().requires_grad_(), **CASES[name][0](6))
    sample = cuda.sample_with_trace((3,))
    assert sample.x.device.type == "cuda"
    cuda.trace_log_prob(sample.trace).sum().backward()
    noise = cuda.noise_given_trace(sample.trace)
    assert traces_equal(cuda.solve(noise)[1], sample.trace)
    x_cpu, _ = dist.solve(sample.noise.cpu())
    assert torch.equal(x_cpu, sample.x.cpu())


def unit_scale(dist, scale):
    """``dist`` with its logits divided by ``scale``: the same support, so its traces are
    traces of ``dist`` (noise cannot span the 2000 nats of scale 400, so they are drawn here)."""
    return dist.with_logits(dist.logits.detach() / scale)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [1.0, 400.0])  # 400: logits spread over more than 600 nats
def test_fast_trace_log_prob_equals_the_generic_draw_set_path(name, scale):
    """Each structure's fast log P(T) (pool exit times, subtree sums, batched owner sets)
    equals the base class's per-draw candidate masks, in value and gradient, also where the
    logits are too spread out for one float64 shift and the fast paths work in log space."""
    from rgbench.distributions.base import StructuredDistribution

    dist = make(name, 7, batch_shape=(2,), seed=2, scale=scale)
    logits = dist.logits.clone().requires_grad_()
    dist = type(dist)(logits, **CASES[name][0](7))
    trace = unit_scale(dist, scale).sample_with_trace((5,), generator=torch.Generator().manual_seed(1)).trace
    fast = dist.trace_log_prob(trace)
    generic = StructuredDistribution.trace_log_prob(dist, trace)
    assert torch.allclose(fast, generic, atol=1e-12)
    (grad_fast,) = torch.autograd.grad(fast.sum(), logits)
    (grad_generic,) = torch.autograd.grad(generic.sum(), logits)
    assert torch.allclose(grad_fast, grad_generic, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [1.0, 40.0, 400.0])  # spans of ~5, ~200 and ~2000 nats
def test_float32_trace_log_prob_matches_float64(name, scale):
    """The fast paths pick their arithmetic by the logits' span (rates in float32 below 80
    nats, float64 below 600, log space above); each agrees with float64 logits."""
    dist = make(name, 7, batch_shape=(3,), seed=3, scale=scale)
    trace = unit_scale(dist, scale).sample_with_trace((2,), generator=torch.Generator().manual_seed(4)).trace
    single = type(dist)(dist.logits.float(), **CASES[name][0](7)).trace_log_prob(trace)
    expected = dist.trace_log_prob(trace)
    # float32 rounds each logit by up to 6e-8 of its size, over some 2n terms of log P(T).
    assert torch.allclose(single.double(), expected, rtol=1e-5, atol=1e-6 * scale)


# ---------------------------------------------------------------------------- relaxation
@pytest.mark.parametrize("name", NAMES)
def test_relax_is_a_fractional_indicator_or_says_why_not(name):
    """relax(G) (G = -log E on the support, -inf elsewhere) has the hard indicator's shape,
    entries in [0, 1] and the same total (k, n, 2(n - 1) or n - 1): a point of the marginal
    polytope. Without a relaxation, relax raises with the class's reason."""
    dist = make(name, 5, batch_shape=(2,), seed=80)
    noise = dist.sample_noise((3,), generator=torch.Generator().manual_seed(81))
    scores = torch.where(dist.support_mask, -noise.log(), torch.full_like(noise, -torch.inf))
    assert isinstance(dist.has_relaxation, bool)
    if not dist.has_relaxation:
        with pytest.raises(NotImplementedError, match=re.escape(dist.no_relaxation_reason)):
            dist.relax(scores)
        return
    relaxed = dist.relax(scores)
    hard = dist.indicator(dist.solve(noise)[0])
    event = len(dist.indicator_event_shape)
    assert relaxed.shape == hard.shape and relaxed.dtype == hard.dtype
    assert ((relaxed >= 0) & (relaxed <= 1 + 1e-9)).all()
    assert torch.allclose(relaxed.flatten(-event).sum(-1), hard.flatten(-event).sum(-1), atol=1e-5)
