"""The variance and speed harness: seeds, timing summaries, statistics, runs and results.

Known answers come from synthetic estimators defined here (an estimator whose replicates are
the exact gradient plus antithetic Gaussian noise of known variance, one that always fails)
and from the ``exact`` estimator (zero bias, zero variance). Statistical tests use fixed
seeds; each states its false-alarm rate.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from rgbench import distributions, estimators
from rgbench.estimators.base import Estimator
from rgbench.estimators.loo import TLeaveOneOut
from rgbench.bench import Results, SpeedGrid, VarianceGrid, run_speed, run_variance
from rgbench.bench.reference import compute_reference
from rgbench.bench.results import VARIANCE_SCHEMA, VARIANCE_TIMING_COLUMNS, apply_schema
from rgbench.bench.seeds import derive_seed
from rgbench.bench.statistics import gradient_statistics
from rgbench.bench.timing import median_interval_ranks, summarize, time_calls

SIGMA = 0.5


def _exact_gradient(dist, objective):
    """The exact gradient by enumeration, written here from the trace log-probabilities."""
    enum = dist.with_logits(dist.logits.detach()).enumerate_traces()
    logits = dist.logits.detach().clone().requires_grad_()
    leaf = dist.with_logits(logits)
    probs = leaf.trace_log_prob(enum.traces).exp()
    values = objective(dist.indicator(enum.x)).detach()
    (grad,) = torch.autograd.grad((probs * values).sum(), logits)
    return grad


class Antithetic(Estimator):
    """Exact gradient + SIGMA * Z, the replicates in (+Z, -Z) pairs: the replicate mean is the
    exact gradient and each coordinate's variance is SIGMA^2."""

    def estimate(self, dist, objective, num_replicates=1, generator=None):
        grad = _exact_gradient(dist, objective)
        half = torch.randn((num_replicates // 2, *grad.shape), generator=generator, dtype=grad.dtype)
        noise = torch.cat([half, -half]) * SIGMA
        if num_replicates % 2:
            noise = torch.cat([noise, torch.zeros_like(grad).unsqueeze(0)])
        return grad + noise

    def surrogate(self, dist, objective, generator=None):
        raise NotImplementedError("the synthetic estimator has no surrogate")


class Broken(Estimator):
    """Raises an unexpected error: the harness must record it, not crash."""

    def estimate(self, dist, objective, num_replicates=1, generator=None):
        raise RuntimeError("boom")

    def surrogate(self, dist, objective, generator=None):
        raise RuntimeError("boom")


@pytest.fixture
def synthetic(registered):
    """Register the synthetic estimators for one test only."""
    registered(estimators.ESTIMATORS, "antithetic", Antithetic)
    registered(estimators.ESTIMATORS, "broken", Broken)


# ---------------------------------------------------------------------------- seeds and timing
def test_cell_seeds_are_stable_hashes():
    fields = (0, "kruskal", 5, "quadratic", "t-loo", 4)
    expected = int.from_bytes(hashlib.sha256(b"0|kruskal|5|quadratic|t-loo|4").digest()[:8], "big") >> 1
    assert derive_seed(*fields) == expected
    assert 0 <= expected < 2**63
    assert derive_seed(1, "kruskal", 5, "quadratic", "t-loo", 4) != expected
    assert derive_seed(0, "kruskal", 5, "quadratic", "t-loo", 8) != expected


@pytest.mark.parametrize("m", range(1, 41))
def test_median_interval_is_the_tightest_with_coverage(m):
    j, k = median_interval_ranks(m, 0.95)
    assert k == m + 1 - j

    def coverage(rank):
        return 1 - 2 * stats.binom.cdf(rank - 1, m, 0.5)

    if j > 1 or coverage(1) >= 0.95:
        assert coverage(j) >= 0.95 - 1e-12
        assert j == m // 2 + 1 - (m % 2 == 0) or coverage(j + 1) < 0.95


def test_timing_summary_of_known_times():
    summary = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (summary.median, summary.q25, summary.q75) == (3.0, 2.0, 4.0)
    assert (summary.lo, summary.hi) == (1.0, 5.0)  # m = 5 cannot reach 95%: the full range
    times = [float(t) for t in range(1, 12)]
    summary = summarize(times)
    assert (summary.lo, summary.hi) == (2.0, 10.0)  # P(Bin(11, 1/2) <= 1) = 12/2048


def test_time_calls_runs_warmup_then_repeats():
    calls = []
    times = time_calls(lambda: calls.append(1), repeats=4, device="cpu", warmup=2)
    assert len(calls) == 6 and len(times) == 4 and all(t >= 0 for t in times)


# ---------------------------------------------------------------------------- statistics
def test_statistics_of_a_constant_estimator():
    reference = torch.tensor([1.0, -2.0, 0.0, 0.5], dtype=torch.float64)
    s = gradient_statistics(reference.expand(50, 4), reference, generator=torch.Generator().manual_seed(0))
    assert s["bias"] == 0 and s["bias_lo"] == 0 and s["bias_hi"] < 1e-12
    assert s["total_var"] == s["total_var_lo"] == s["total_var_hi"] == 0
    assert s["snr"] == math.inf and s["num_tests"] == 0
    assert s["cosine"] == pytest.approx(1.0)


def test_cosine_of_scaled_and_flipped_estimates():
    reference = torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    assert gradient_statistics(2 * reference.expand(10, 3), reference, generator=gen)["cosine"] == pytest.approx(1.0)
    assert gradient_statistics(-reference.expand(10, 3), reference, generator=gen)["cosine"] == pytest.approx(-1.0)


def test_statistics_of_known_gaussian_estimates():
    """g ~ Normal(mu, diag(sigma^2)), R = 4000: point estimates within 5 analytic standard
    deviations of the truth (false-alarm rate < 1e-5 per check)."""
    gen = torch.Generator().manual_seed(1)
    r = 4000
    mu = torch.tensor([1.0, -1.0, 0.5, 0.0], dtype=torch.float64)
    sigma = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    g = mu + sigma * torch.randn(r, 4, generator=gen, dtype=torch.float64)
    s = gradient_statistics(g, mu, num_free_coords=2, generator=gen)
    true_var = float(sigma.square().sum())
    var_sd = math.sqrt(float(2 * sigma.pow(4).sum()) / (r - 1))
    assert abs(s["total_var"] - true_var) < 5 * var_sd
    assert s["coord_var"] == pytest.approx(s["total_var"] / 2)
    assert s["total_var_lo"] < s["total_var"] < s["total_var_hi"]
    # The bootstrap interval's half-width is close to 1.96 analytic standard deviations.
    assert (s["total_var_hi"] - s["total_var_lo"]) / 2 == pytest.approx(1.96 * var_sd, rel=0.2)
    assert s["snr"] == pytest.approx(float(mu.norm()) / math.sqrt(true_var), rel=0.05)
    assert s["bias"] < 5 * math.sqrt(true_var / r)


def test_bias_interval_detects_a_real_bias():
    """Coordinate 0 is off by 8 standard errors: the z-box (Bonferroni over 3, z = 2.39)
    excludes zero unless the draw lands 5.6 standard errors low (false-alarm rate < 1e-7)."""
    gen = torch.Generator().manual_seed(2)
    r = 400
    reference = torch.zeros(3, dtype=torch.float64)
    g = torch.randn(r, 3, generator=gen, dtype=torch.float64)
    g[:, 0] += 8 / math.sqrt(r)
    s = gradient_statistics(g, reference, generator=gen)
    assert s["bias_lo"] > 0 and s["bias_lo"] <= s["bias"] <= s["bias_hi"]


def test_interval_coverage_on_gaussian_estimates():
    """Calibration over 120 independent unbiased data sets (R = 100, d = 4). The bias box
    misses zero with probability <= 5% per set: we allow 15 misses (P <= 3e-4 under the 5%
    rate). The percentile bootstrap under-covers slightly (about 92% here): we allow 30 misses
    of the true total variance or SNR (P < 1e-4 at a 10% miss rate)."""
    gen = torch.Generator().manual_seed(3)
    mu = torch.tensor([1.0, -1.0, 0.5, 0.0], dtype=torch.float64)
    sigma = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    true_var = float(sigma.square().sum())
    true_snr = float(mu.norm()) / math.sqrt(true_var)
    misses = {"bias": 0, "var": 0, "snr": 0}
    for _ in range(120):
        g = mu + sigma * torch.randn(100, 4, generator=gen, dtype=torch.float64)
        s = gradient_statistics(g, mu, resamples=200, generator=gen)
        misses["bias"] += s["bias_lo"] > 0
        misses["var"] += not s["total_var_lo"] <= true_var <= s["total_var_hi"]
        misses["snr"] += not s["snr_lo"] <= true_snr <= s["snr_hi"]
    assert misses["bias"] <= 15 and misses["var"] <= 30 and misses["snr"] <= 30, misses


def test_reference_standard_error_widens_the_bias_interval():
    gen = torch.Generator().manual_seed(4)
    g = torch.randn(200, 3, generator=gen, dtype=torch.float64)
    reference = torch.full((3,), 0.3, dtype=torch.float64)
    narrow = gradient_statistics(g, reference, generator=gen)
    wide = gradient_statistics(g, reference, torch.full((3,), 0.2, dtype=torch.float64), generator=gen)
    assert wide["bias_hi"] > narrow["bias_hi"] and wide["bias_lo"] <= narrow["bias_lo"]


def test_higher_level_gives_wider_intervals():
    gen = torch.Generator().manual_seed(5)
    g = torch.randn(300, 3, generator=gen, dtype=torch.float64)
    reference = torch.full((3,), 0.1, dtype=torch.float64)  # non-zero, so the cosine is defined
    low = gradient_statistics(g, reference, level=0.9, generator=torch.Generator().manual_seed(0))
    high = gradient_statistics(g, reference, level=0.99, generator=torch.Generator().manual_seed(0))
    for name in ("bias", "total_var", "snr", "cosine"):
        assert high[f"{name}_hi"] - high[f"{name}_lo"] > low[f"{name}_hi"] - low[f"{name}_lo"], name


def test_statistics_reject_bad_input():
    with pytest.raises(ValueError, match="at least 2 replicates"):
        gradient_statistics(torch.zeros(1, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="reference has 2 coordinates"):
        gradient_statistics(torch.zeros(5, 3), torch.zeros(2))


# ---------------------------------------------------------------------------- runs
def _grid(**overrides):
    settings = dict(
        dists=("topk",), sizes=(4,), estimators=("exact", "t-reinforce"), replicates=40, timing_repeats=1,
        bootstrap_resamples=50,
    )
    settings.update(overrides)
    return VarianceGrid(**settings)


def _row(frame, **where):
    mask = np.ones(len(frame), dtype=bool)
    for column, value in where.items():
        mask &= frame[column] == value
    assert mask.sum() == 1, where
    return frame[mask].iloc[0]


def test_exact_estimator_has_zero_bias_and_variance():
    frame = run_variance(_grid(dists=("cle",), sizes=(3,))).frame
    exact = _row(frame, estimator="exact")
    assert exact["status"] == "ok" and exact["reference"] == "exact"
    assert exact["total_var"] == 0 and exact["bias_lo"] == 0 and exact["bias"] < 1e-12
    t = _row(frame, estimator="t-reinforce")
    assert t["status"] == "ok" and t["total_var"] > 0 and t["num_free_coords"] == 4  # 6 off-diagonal edges less 2 into the root


def test_synthetic_estimator_with_known_variance(synthetic):
    """Antithetic replicates: the mean is the exact gradient, so the bias interval holds 0
    by construction; the total variance of R = 400 replicates (200 independent pairs, d
    coordinates) is within 5 analytic standard deviations of R/(R-1) d SIGMA^2
    (false-alarm rate < 1e-6)."""
    grid = _grid(dists=("permutation",), sizes=(4,), estimators=("antithetic",), replicates=400)
    row = _row(run_variance(grid).frame, estimator="antithetic")
    d, r = 4, 400  # permutation logits: one per item
    expected = r / (r - 1) * d * SIGMA**2
    sd = math.sqrt(4 * d * r) * SIGMA**2 / (r - 1)
    assert row["status"] == "ok"
    assert abs(row["total_var"] - expected) < 5 * sd
    assert row["bias_lo"] == 0 and row["bias"] < 1e-12
    assert row["coord_var"] == pytest.approx(row["total_var"] / d)


def test_unsupported_and_failing_cells_are_recorded(synthetic):
    grid = _grid(
        dists=("cle",), sizes=(3,), estimators=("x-reinforce", "e-loo", "broken", "t-reinforce"), samples=(1,),
    )
    frame = run_variance(grid).frame
    x = _row(frame, estimator="x-reinforce")
    assert x["status"] == "skipped" and "log P(X)" in x["reason"]
    loo = _row(frame, estimator="e-loo")
    assert loo["status"] == "skipped" and "num_samples" in loo["reason"] or "K" in loo["reason"]
    broken = _row(frame, estimator="broken")
    assert broken["status"] == "failed" and "RuntimeError" in broken["reason"] and "boom" in broken["reason"]
    assert _row(frame, estimator="t-reinforce")["status"] == "ok"
    assert math.isnan(x["total_var"]) and pd.isna(x["num_tests"])


def test_relaxation_is_skipped_for_a_non_relaxable_task():
    frame = run_variance(_grid(estimators=("sst", "t-reinforce"), task="match")).frame
    sst = _row(frame, estimator="sst")
    assert sst["status"] == "skipped" and "relax" in sst["reason"].lower()
    assert _row(frame, estimator="t-reinforce")["status"] == "ok"


def test_same_seed_same_results_except_timing():
    grid = dict(
        dists=("cle",), sizes=(3,), estimators=("t-loo", "relax", "sst"), samples=(2, 3),
        estimator_options={"relax": {"warmup_steps": 3}},
    )
    first = run_variance(_grid(**grid)).frame.drop(columns=list(VARIANCE_TIMING_COLUMNS))
    second = run_variance(_grid(**grid)).frame.drop(columns=list(VARIANCE_TIMING_COLUMNS))
    pd.testing.assert_frame_equal(first, second)
    other = run_variance(_grid(**{**grid, "estimators": ("t-loo",)}, seeds=(1,))).frame
    assert not np.allclose(first["total_var"][:2], other["total_var"])


def test_every_estimator_sees_the_same_instance():
    frame = run_variance(_grid(estimators=("exact", "t-reinforce", "e-reinforce"))).frame
    assert frame["reference_norm"].nunique() == 1 and frame["objective_mean"].nunique() == 1
    assert frame["cell_seed"].nunique() == 3


def test_large_sizes_fall_back_to_a_monte_carlo_reference(monkeypatch):
    """topk's enumeration limit lowered to 3: n = 4 uses the t-loo reference, which agrees
    with the exact gradient within 5 standard errors per coordinate (Bonferroni over 4
    coordinates: false-alarm rate < 3e-6)."""
    monkeypatch.setattr(distributions.get("topk"), "max_enumeration_size", 3)
    grid = _grid(reference_samples=50, reference_replicates=20)
    assert any("n=4 exceeds the exact-enumeration limit" in note for note in grid.fallback_notes())
    frame = run_variance(grid).frame
    assert set(frame["reference"]) == {"t-loo"} and set(frame["reference_samples"]) == {1000}
    # The fall-back reference, checked against enumeration.
    from rgbench.bench import tasks
    from rgbench.bench.seeds import generator

    instance_gen = generator(derive_seed(0, "topk", 4, "quadratic", "instance"))
    dist = tasks.make_instance("topk", 4, generator=instance_gen)
    objective = tasks.get("quadratic").build(dist, instance_gen)
    reference = compute_reference(dist, objective, samples=50, replicates=20, generator=torch.Generator().manual_seed(0))
    monkeypatch.undo()
    exact = _exact_gradient(dist, objective)
    assert reference.kind == "t-loo" and (reference.se > 0).all()
    assert ((reference.grad - exact).abs() < 5 * reference.se).all()
    exact_row = _row(frame, estimator="exact")
    assert exact_row["status"] == "skipped" and "n=3" in exact_row["reason"]
    t_row = _row(frame, estimator="t-reinforce")
    assert t_row["status"] == "ok" and t_row["bias_lo"] <= t_row["bias"] <= t_row["bias_hi"]


def test_results_round_trip_with_schema(tmp_path):
    results = run_variance(_grid(estimators=("exact", "t-reinforce", "x-reinforce"), dists=("cle",), sizes=(3,)))
    results.save(tmp_path)
    loaded = Results.load(tmp_path, "variance")
    pd.testing.assert_frame_equal(loaded.frame, results.frame)
    assert list(loaded.frame.columns) == list(VARIANCE_SCHEMA)
    kinds = {"str": "str", "int": "int64", "float": "float64", "bool": "bool", "Int64": "Int64"}
    for column, kind in VARIANCE_SCHEMA.items():
        dtype = loaded.frame[column].dtype
        if kind == "str":
            assert pd.api.types.is_string_dtype(dtype) or dtype == object, column
        else:
            assert str(dtype) == kinds[kind], (column, dtype)
    document = json.loads((tmp_path / "variance.json").read_text())
    meta = document["metadata"]
    for key in ("rgbench_version", "torch_version", "device_name", "threads", "seed", "command", "date", "intervals"):
        assert key in meta
    assert meta["kind"] == "variance" and document["schema"] == VARIANCE_SCHEMA
    assert len(document["rows"]) == 3
    exact = next(row for row in document["rows"] if row["estimator"] == "exact")
    assert exact["snr"] == "inf"  # non-finite floats are spelled out, the file stays valid JSON


def test_apply_schema_fills_missing_columns():
    # Was: a missing column raised, which made every older results folder unreadable once a
    # statistic was added; now it is filled with the type's missing value.
    frame = apply_schema(pd.DataFrame({"dist": ["topk"], "mine": [1]}), VARIANCE_SCHEMA)
    assert list(frame.columns) == [*VARIANCE_SCHEMA, "mine"]
    assert frame["reason"].tolist() == [""] and math.isnan(frame["bias"].iloc[0])
    assert frame["n"].isna().all() and str(frame["n"].dtype) == "Int64"


def test_grid_validation_names_the_problem():
    with pytest.raises(ValueError, match="unknown distribution 'hypercube'; valid names: .*kruskal"):
        _grid(dists=("hypercube",))
    with pytest.raises(ValueError, match="unknown estimator 'magic'; valid names: .*t-loo"):
        _grid(estimators=("magic",))
    with pytest.raises(ValueError, match="sizes: every value must be an int >= 2"):
        _grid(sizes=(1,))
    with pytest.raises(ValueError, match="replicates: must be an int >= 2"):
        _grid(replicates=1)
    with pytest.raises(ValueError, match="level: the confidence level"):
        _grid(level=1.0)
    with pytest.raises(ValueError, match="unknown options"):
        _grid(estimator_options={"t-loo": {"speed": 3}})
    assert _grid(dists=("spanning-tree",)).dists == ("kruskal",)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_grid_rejects_cuda_without_a_gpu():
    with pytest.raises(ValueError, match="CUDA is not available"):
        _grid(devices=("cuda",))


def test_speed_run_times_every_operation():
    grid = SpeedGrid(dists=("cle",), sizes=(4,), batch=3, estimators=("t-reinforce", "x-reinforce"), repeats=2)
    frame = run_speed(grid).frame
    assert list(frame["operation"]) == [
        "sample", "trace_log_prob", "noise_given_trace", "estimate:t-reinforce", "estimate:x-reinforce",
    ]
    ok = frame[frame["status"] == "ok"]
    assert len(ok) == 4 and (ok["time_median_s"] > 0).all()
    np.testing.assert_allclose(ok["per_instance_us"], ok["time_median_s"] / 3 * 1e6)
    skipped = frame[frame["status"] == "skipped"].iloc[0]
    assert skipped["operation"] == "estimate:x-reinforce" and skipped["reason"]


@pytest.mark.slow
@pytest.mark.parametrize("dist", ["kruskal", "cle"])
def test_paper_ordering_at_n5(dist):
    """The paper's ordering on the produced table at n = 5, quadratic task, seed 0:
    t-reinforce's total variance below e-reinforce's (their intervals disjoint), and every
    unbiased estimator's bias interval contains 0. Each bias interval is a Bonferroni z-box
    over coordinates; at level 0.999 for each of the five estimators the family-wise
    false-alarm rate per structure is <= 0.5%. R = 4000 (not the issue's 1000 at level 0.99,
    whose 5% per structure fired on relax for cle, max |z| 3.55, while R = 20,000 on the same
    instance gives 1.89): for cle's 16 free coordinates the box's half-width is 4.0 / sqrt(4000)
    = 0.063 standard deviations of one estimate against 3.4 / sqrt(1000) = 0.108, so the test
    is also more sensitive."""
    grid = VarianceGrid(
        dists=(dist,), sizes=(5,), estimators=("e-reinforce", "t-reinforce", "e-loo", "t-loo", "relax"),
        replicates=4000, timing_repeats=1, level=0.999,
    )
    frame = run_variance(grid).frame
    e, t = _row(frame, estimator="e-reinforce"), _row(frame, estimator="t-reinforce")
    assert t["total_var_hi"] < e["total_var_lo"]
    assert (frame["status"] == "ok").all() and (frame["bias_lo"] == 0).all()


@pytest.mark.cuda
def test_variance_run_on_cuda():
    grid = _grid(dists=("cle",), sizes=(3,), estimators=("exact", "t-reinforce", "sst"), devices=("cuda",))
    frame = run_variance(grid).frame
    assert (frame["status"] == "ok").all(), frame["reason"].tolist()
    assert (frame["device"] == "cuda:0").all() or (frame["device"] == "cuda").all()
    assert (frame["peak_memory_mb"] > 0).all()
    exact = _row(frame, estimator="exact")
    assert exact["total_var"] == 0 and exact["bias"] < 1e-12


# ---------------------------------------------------------------------------- the bias flag
class InflatedLOO(TLeaveOneOut):
    """T-LOO times 1.5: still registered as unbiased, but its mean is 1.5 x the gradient."""

    def estimate(self, dist, objective, num_replicates=1, generator=None):
        return 1.5 * super().estimate(dist, objective, num_replicates=num_replicates, generator=generator)


@pytest.fixture
def inflated(registered):
    """``t-loo-x1.5`` in the public registry for one test only."""
    registered(estimators.ESTIMATORS, "t-loo-x1.5", InflatedLOO)
    return "t-loo-x1.5"


def test_a_biased_estimator_registered_as_unbiased_is_flagged(inflated):
    """At R = 1000 the inflation puts the largest coordinate 8.6 standard errors off (the
    flag's threshold is 3.8 for these 3 coordinates); the unchanged t-loo on the same fixed
    seed is not flagged (false-alarm rate <= 1e-3 per cell)."""
    frame = run_variance(_grid(dists=("topk",), sizes=(3,), estimators=("t-loo", inflated), replicates=1000)).frame
    bad, good = _row(frame, estimator=inflated), _row(frame, estimator="t-loo")
    assert bad["unbiased"] and bad["status"] == "biased", bad["reason"]
    assert "excludes 0" in bad["reason"] and f"{bad['bias_flag_lo']:.3g}" in bad["reason"]
    assert bad["bias_flag_lo"] > 0 and bad["bias_z"] > 5
    assert good["status"] == "ok" and good["bias_flag_lo"] == 0 and good["bias_z"] < 3.8, good["reason"]
    assert estimators.ESTIMATORS.get(inflated) is InflatedLOO


def test_unregister_removes_the_name_and_its_aliases():
    registry = estimators.ESTIMATORS
    registry.register("tmp-est", aliases=("tmp-alias",))(InflatedLOO)
    assert registry.unregister("tmp-est") is InflatedLOO
    assert "tmp-est" not in registry and "tmp-alias" not in registry
    with pytest.raises(ValueError, match="'tmp-est' is not registered"):
        registry.unregister("tmp-est")


def test_a_zero_width_interval_of_a_missed_rare_event_is_not_flagged():
    """topk n=4 at logit scale 60 (float64): the exact gradient, 2.5e-13 per coordinate, comes
    from a trace of probability 1.3e-13 that none of the R x K draws hits, so every replicate
    is exactly 0 and the plain z-box is [3.6e-13, 3.6e-13]. The degenerate-coordinate term
    ln(1/alpha)/R x max|L| covers it; without the objective's scale it would be flagged."""
    grid = _grid(dists=("topk",), sizes=(4,), estimators=("t-reinforce", "e-loo"), replicates=300, logit_scale=60.0)
    frame = run_variance(grid).frame
    for name in ("t-reinforce", "e-loo"):
        row = _row(frame, estimator=name)
        assert row["status"] == "ok" and row["total_var"] == 0, row["reason"]
        assert 1e-13 < row["bias"] < 1e-12 and row["bias_lo"] == 0 and row["bias_flag_lo"] == 0
    # the same replicates with the objective's scale unknown (0): the bare zero-width box
    zeros = torch.zeros(300, 4, dtype=torch.float64)
    exact = torch.tensor([0.0, 2.5e-13, 0.0, -2.5e-13], dtype=torch.float64)
    bare = gradient_statistics(zeros, exact, resamples=10)
    assert bare["bias_flagged"] and bare["bias_lo"] == pytest.approx(bare["bias"])
    scaled = gradient_statistics(zeros, exact, resamples=10, objective_scale=4.0)
    assert not scaled["bias_flagged"] and scaled["bias_lo"] == 0
    # a deterministic bias beyond that allowance is still flagged: ln(1e3)/300 x 4 = 0.092
    shifted = gradient_statistics(zeros + 0.5, torch.zeros(4, dtype=torch.float64), resamples=10, objective_scale=4.0)
    assert shifted["bias_flagged"]


def test_the_flag_rate_is_per_cell_bonferroni_over_coordinates():
    """A coordinate 3.5 standard errors off: outside the 95% box (z = 2.39 for m = 3) but
    inside the 1e-3 flag box (z = 3.81), so the 95% interval alone excludes 0, unflagged."""
    r = 400
    g = torch.randn(r, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g = (g - g.mean(0)) / g.std(0)  # exactly mean 0, sd 1
    g[:, 0] += 3.5 / math.sqrt(r)
    s = gradient_statistics(g, torch.zeros(3, dtype=torch.float64), resamples=10)
    assert s["bias_z"] == pytest.approx(3.5, rel=1e-9)
    assert s["bias_lo"] > 0 and s["bias_flag_lo"] == 0 and not s["bias_flagged"]
    g[:, 0] += 0.5 / math.sqrt(r)  # z = 4.0 > 3.81
    assert gradient_statistics(g, torch.zeros(3, dtype=torch.float64), resamples=10)["bias_flagged"]


def test_a_float32_shifted_run_uses_the_float64_unshifted_exact_reference():
    """--dtype float32 --logit-shift 105: the same instance (float64 draw, shifted, cast),
    the same law, so the reference is the float64 exact gradient of the unshifted logits."""
    plain = run_variance(_grid(estimators=("t-loo",))).frame.iloc[0]
    shifted = run_variance(_grid(estimators=("t-loo",), dtype="float32", logit_shift=105.0)).frame.iloc[0]
    assert shifted["status"] == "ok" and shifted["dtype"] == "float32"
    assert shifted["reference"] == "exact"
    assert shifted["reference_norm"] == plain["reference_norm"]
    assert shifted["objective_mean"] == plain["objective_mean"]
    with pytest.raises(ValueError, match="logit_shift"):
        _grid(logit_shift=float("inf"))
