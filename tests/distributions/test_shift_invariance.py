"""The law does not depend on a constant shift of the logits, in float32 and float64.

Adding c to every logit of an instance multiplies all its rates by e^c: X and T keep their
law. The oracle is the reference enumeration of the *unshifted* float64 instance (the
recursion of ``recursion.py``, not the fast kernels). Shifts: 0, +-90, +-105, +-300 in float32
(absolute rates exp(logits) leave float32 near +-88 and +-103) and +-760 in float64 (past
+-745). False-alarm rate: every chi-square test has alpha = 1e-4, 54 of them: family-wise at
most 5.4e-3; the other tests are exact.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from scipy import stats

from tests.cases import NAMES, flat_trace, make, traces_equal
from rgbench.distributions import TopK

SHIFTS = [(torch.float32, c) for c in (0.0, 90.0, -90.0, 105.0, -105.0, 300.0, -300.0)] + [
    (torch.float64, c) for c in (760.0, -760.0)
]
IDS = [f"{str(dtype).split('.')[-1]}{shift:+g}" for dtype, shift in SHIFTS]
ALPHA = 1e-4


def shifted(name, dtype, shift, seed):
    """The n = 4 instance of ``name`` in float64, and the same logits shifted, in ``dtype``."""
    base = make(name, 4, seed=seed, scale=0.7)
    logits = (base.logits + shift).to(dtype)
    return base, base.with_logits(logits)


def chi_square_p(observed: torch.Tensor, expected: torch.Tensor) -> float:
    """Pearson's test, cells with expected count < 5 pooled into one."""
    big = expected >= 5
    obs = torch.cat([observed[big], observed[~big].sum().reshape(1)])
    exp = torch.cat([expected[big], expected[~big].sum().reshape(1)])
    if exp[-1] < 5:
        obs, exp = obs[:-1], exp[:-1] * obs[:-1].sum() / exp[:-1].sum()
    return stats.chisquare(obs.numpy(), exp.numpy()).pvalue


@pytest.mark.parametrize("dtype, shift", SHIFTS, ids=IDS)
@pytest.mark.parametrize("name", NAMES)
def test_sampled_traces_follow_the_unshifted_law(name, dtype, shift):
    base, dist = shifted(name, dtype, shift, seed=21)
    enum = base.enumerate_traces()
    index = {key: i for i, key in enumerate(flat_trace(enum.traces))}
    draws = 20_000
    sample = dist.sample_with_trace((draws,), generator=torch.Generator().manual_seed(5))
    keys = flat_trace(sample.trace)
    assert all(key in index for key in keys), "a sampled trace is outside the support"
    counts = Counter(index[key] for key in keys)
    observed = torch.tensor([counts.get(i, 0) for i in range(len(index))], dtype=torch.float64)
    assert chi_square_p(observed, draws * enum.log_probs.exp().detach()) > ALPHA
    assert torch.isfinite(sample.noise[dist.support_mask.expand(sample.noise.shape)]).all()


@pytest.mark.parametrize("dtype, shift", SHIFTS, ids=IDS)
@pytest.mark.parametrize("name", NAMES)
def test_noise_given_trace_replays_every_trace(name, dtype, shift):
    """solve(E | T) = T for every trace of the instance, 50 draws each."""
    base, dist = shifted(name, dtype, shift, seed=22)
    enum = base.enumerate_traces()
    count = len(enum.log_probs)
    traces = type(enum.traces)(*(t.repeat((50,) + (1,) * (t.dim() - 1)) for t in enum.traces)) \
        if not isinstance(enum.traces, torch.Tensor) else enum.traces.repeat((50,) + (1,) * (enum.traces.dim() - 1))
    noise = dist.noise_given_trace(traces, generator=torch.Generator().manual_seed(6))
    assert torch.isfinite(noise[dist.support_mask.expand(noise.shape)]).all()
    _, replayed = dist.solve(noise)
    assert traces_equal(replayed, traces), f"{count} traces x 50 draws"


@pytest.mark.parametrize("dtype, shift", SHIFTS, ids=IDS)
@pytest.mark.parametrize("name", NAMES)
def test_trace_log_prob_ignores_the_shift(name, dtype, shift):
    """log P(T) of the shifted instance equals the unshifted float64 one, up to the rounding
    of the shifted logits themselves (float32: |shift| * eps per logit, 2n terms)."""
    base, dist = shifted(name, dtype, shift, seed=23)
    enum = base.enumerate_traces()
    got = dist.trace_log_prob(enum.traces).double()
    eps = torch.finfo(dtype).eps
    tolerance = 2 * 2 * base.n * eps * (abs(shift) + 2 * float(base.logits.abs().max()))
    assert torch.allclose(got, enum.log_probs.detach(), rtol=0, atol=max(tolerance, 1e-12))


@pytest.mark.parametrize("shift", [0.0, 90.0, 100.0, 105.0, 120.0, -100.0, 300.0])
def test_topk_two_items_at_any_offset(shift):
    """TopK([c, c + 5], k = 1) picks item 1 with probability sigmoid(5) = 0.9933 whatever c
    (float32 gave 0.062 at c = 105 and 0.0016 at c = -100); exact binomial test, alpha 1e-4."""
    dist = TopK(torch.tensor([shift, shift + 5.0]), k=1)
    draws = 20_000
    picks = dist.sample((draws,), generator=torch.Generator().manual_seed(7))
    ones = int((picks[:, 0] == 1).sum())
    p = torch.sigmoid(torch.tensor(5.0, dtype=torch.float64)).item()
    assert stats.binomtest(ones, draws, p).pvalue > ALPHA


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_samples_at_any_offset(name):
    """The noise frame follows the logits: the same generator state gives the same X and T at
    shift 0 and at shift 60 (float64, where both are exact), and noise equal up to rounding."""
    base = make(name, 6, batch_shape=(3,), seed=24)
    moved = base.with_logits(base.logits + 60.0)
    a = base.sample_with_trace((20,), generator=torch.Generator().manual_seed(8))
    b = moved.sample_with_trace((20,), generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.x, b.x) and traces_equal(a.trace, b.trace)
    usable = base.support_mask.expand(a.noise.shape)
    assert torch.allclose(a.noise[usable], b.noise[usable], rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_half_precision_is_refused(name, dtype):
    base = make(name, 4, seed=25)
    with pytest.raises(ValueError, match=f"float32 or float64, got {dtype}"):
        base.with_logits(base.logits.to(dtype))
