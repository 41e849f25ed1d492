"""``rgbench check``: the variance/bias regression check against a baseline.

Known regressions are injected through ``run_check(..., estimator_factory=...)``, the code
path the CLI uses, on a reduced grid (fewer structures and replicates through parameters):
an estimator with independent noise that doubles its variance, a T-REINFORCE whose score
sign is flipped on the coordinate with the largest exact gradient, a LOO without its
baseline; plus a missing, a raising and a newly skipped cell. Each must FAIL, naming the
cell, while the unchanged code passes. Statistics are checked against numpy/scipy.

False-alarm rates (fixed seeds, so every outcome is deterministic): each comparison of the
unchanged code is a family of tests at family-wise rate <= 1e-3 (Bonferroni); the slow
20-seed study's "no alarm" assertion fails by chance with probability <= 20 x 1e-3 = 2 %.
Detections are far beyond their thresholds (z >> 10), so missing one by chance has
negligible probability.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import typer
from scipy import stats
from typer.testing import CliRunner

from rgbench import estimators
from rgbench.bench import tasks
from rgbench.cli.check import register
from rgbench.estimators.loo import TLeaveOneOut
from rgbench.bench import check as checks
from rgbench.bench.cells import CellSpec
from rgbench.bench.check import (
    CellResult,
    CheckGrid,
    CheckRun,
    compare,
    default_estimator_factory,
    format_table,
    run_check,
    variance_z,
)
from rgbench.bench.executor import LocalExecutor
from rgbench.bench.results import VARIANCE_SCHEMA, VARIANCE_TIMING_COLUMNS, apply_schema
from rgbench.bench.statistics import gradient_statistics
from rgbench.bench.variance import run_variance

GRID = CheckGrid(dists=("topk", "kruskal"), sizes=(4,), estimators=("t-reinforce", "e-loo", "t-loo", "sst"),
                 replicates=1000)
BASE_SEED = 0
FRESH_SEED = 1  # comparisons draw a fresh independent sample, as `rgbench check --seed 1` does


@pytest.fixture(scope="module")
def baseline() -> CheckRun:
    return run_check(GRID, BASE_SEED)


def _fresh(factory=default_estimator_factory, grid=GRID) -> CheckRun:
    return run_check(grid, FRESH_SEED, instance_seed=BASE_SEED, estimator_factory=factory)


def _row(comparison, name):
    (row,) = [row for row in comparison.rows if row.name == name]
    return row


class Perturbed:
    """Wraps an estimator and post-processes its replicates: ``transform(draws, dist,
    objective, generator)``. Everything else (``warm_up``, ``unbiased``) is the inner one's."""

    def __init__(self, inner, transform):
        self.inner = inner
        self.transform = transform

    def supports(self, dist, objective):
        return self.inner.supports(dist, objective)

    def estimate(self, dist, objective, num_replicates=1, generator=None):
        draws = self.inner.estimate(dist, objective, num_replicates=num_replicates, generator=generator)
        return self.transform(draws, dist, objective, generator)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _only(target: str, transform):
    """A factory that perturbs the cell named ``target`` and builds the others unchanged."""

    def factory(cell: CellSpec):
        estimator = default_estimator_factory(cell)
        return Perturbed(estimator, transform) if cell.name == target else estimator

    return factory


def doubling_noise(base_variance: float):
    """Adds independent N(0, V_base / d) to each of the d coordinates the structure can move:
    total variance V_base + V_base."""

    def transform(draws, dist, objective, generator):
        usable = dist.support_mask.to(draws.dtype)
        sigma = math.sqrt(base_variance / float(usable.sum()))
        noise = torch.randn(draws.shape, generator=generator, dtype=draws.dtype, device=draws.device)
        return draws + sigma * noise * usable

    return transform


def flipped_sign(draws, dist, objective, generator):
    """REINFORCE with the score's sign flipped on the coordinate c of largest |exact grad|:
    g_c = L d_c log p becomes -L d_c log p, i.e. that coordinate of every replicate negated."""
    _, grad = estimators.exact_gradient(dist, objective)
    c = int(grad.abs().argmax())
    flat = draws.reshape(draws.shape[0], -1).clone()
    flat[:, c] = -flat[:, c]
    return flat.reshape(draws.shape)


# ---------------------------------------------------------------------------- unchanged code
def test_the_baseline_seed_reproduces_the_baseline_exactly(baseline):
    again = run_check(GRID, BASE_SEED)
    comparison = compare(baseline, again)
    assert comparison.passed, format_table(comparison)
    for row in comparison.rows:
        if row.verdict == "PASS":
            assert row.ratio == 1.0 and row.variance_z == 0.0


def test_unchanged_code_passes_on_a_fresh_seed(baseline):
    """False-alarm rate <= 1e-3 (the check's own family-wise rate)."""
    comparison = compare(baseline, _fresh())
    assert comparison.passed, format_table(comparison)
    assert {row.verdict for row in comparison.rows} == {"PASS"}
    assert comparison.summary().startswith("check passed")


def test_the_grid_covers_every_cell_and_biased_estimators_skip_the_bias_test(baseline):
    assert list(baseline.cells) == [cell.name for cell in GRID.cells()]
    assert all(result.status == "ok" for result in baseline.cells.values())
    assert not baseline.cells["topk/n=4/sst/K=4"].unbiased
    comparison = compare(baseline, baseline)
    assert math.isnan(_row(comparison, "topk/n=4/sst/K=4").max_abs_bias_z)
    # Bonferroni over the variance tests (one per cell) and every tested coordinate.
    coordinates = sum(r.bias_tests for r in baseline.cells.values() if r.unbiased)
    assert comparison.num_tests == len(baseline.cells) + coordinates
    m = comparison.num_tests
    assert comparison.variance_threshold == pytest.approx(stats.norm.isf(1e-3 / m), rel=1e-9)
    assert comparison.bias_threshold == pytest.approx(stats.norm.isf(1e-3 / (2 * m)), rel=1e-9)


# ---------------------------------------------------------------------------- injected regressions
def test_noise_that_doubles_the_variance_fails_naming_the_cell(baseline):
    target = "kruskal/n=4/t-loo/K=4"
    comparison = compare(baseline, _fresh(_only(target, doubling_noise(baseline.cells[target].variance))))
    row = _row(comparison, target)
    assert row.verdict == "FAIL" and "variance rose" in row.note
    assert [r.name for r in comparison.failed] == [target]
    assert target in comparison.summary()
    # The injection does what it says: ratio 2 within 4 standard errors of log(ratio)
    # (false-alarm rate 6e-5).
    se_log_ratio = math.log(row.ratio) / row.variance_z
    assert abs(math.log(row.ratio / 2)) < 4 * se_log_ratio


def test_a_flipped_score_sign_fails_the_bias_test_naming_the_cell(baseline):
    target = "kruskal/n=4/t-reinforce/K=4"
    comparison = compare(baseline, _fresh(_only(target, flipped_sign)))
    row = _row(comparison, target)
    assert row.verdict == "FAIL" and "biased: max |z|=" in row.note, row.note
    assert row.max_abs_bias_z > comparison.bias_threshold
    assert "variance rose" not in row.note  # negating a coordinate keeps the variance
    assert [r.name for r in comparison.failed] == [target]


class DroppedMeanLOO(TLeaveOneOut):
    """T-LOO with the baseline deleted from 1/(K-1) sum (L_k - mean L) grad log p_k:
    biased by K/(K-1) and noisier."""

    def _coefficients(self, values):
        return values / (self.num_samples - 1)


class DroppedLeaveOneOutLOO(TLeaveOneOut):
    """T-LOO with the baseline deleted from 1/K sum (L_k - mean_{j != k} L_j) grad log p_k:
    plain REINFORCE, still unbiased, so only the variance test can see it."""

    def _coefficients(self, values):
        return values / self.num_samples


@pytest.mark.parametrize("broken", [DroppedMeanLOO, DroppedLeaveOneOutLOO])
def test_a_loo_without_its_baseline_fails_naming_the_cell(baseline, broken):
    target = "kruskal/n=4/t-loo/K=4"

    def factory(cell):
        return broken(num_samples=cell.K) if cell.name == target else default_estimator_factory(cell)

    comparison = compare(baseline, _fresh(factory))
    row = _row(comparison, target)
    assert row.verdict == "FAIL" and "variance rose" in row.note, row.note
    assert [r.name for r in comparison.failed] == [target]


def test_a_cell_missing_from_the_run_fails(baseline):
    smaller = CheckGrid(dists=GRID.dists, sizes=GRID.sizes, estimators=("t-reinforce", "e-loo", "sst"),
                        replicates=GRID.replicates)
    comparison = compare(baseline, _fresh(grid=smaller))
    failed = {row.name: row.note for row in comparison.failed}
    assert failed == {"topk/n=4/t-loo/K=4": "missing from this run", "kruskal/n=4/t-loo/K=4": "missing from this run"}
    assert "topk/n=4/t-loo/K=4" in comparison.summary()


def test_a_raising_or_non_finite_cell_fails_with_its_error(baseline):
    def raising(draws, dist, objective, generator):
        raise RuntimeError("boom")

    def nan(draws, dist, objective, generator):
        return draws * float("nan")

    for transform, text in ((raising, "RuntimeError"), (nan, "NaN")):
        comparison = compare(baseline, _fresh(_only("topk/n=4/e-loo/K=4", transform)))
        row = _row(comparison, "topk/n=4/e-loo/K=4")
        assert row.verdict == "FAIL" and row.note.startswith("raised:") and text in row.note
        assert [r.name for r in comparison.failed] == ["topk/n=4/e-loo/K=4"]


def test_a_newly_skipped_cell_fails_and_a_new_cell_is_reported(baseline):
    class Refusing(Perturbed):
        def supports(self, dist, objective):
            return "refused for the test"

    def factory(cell):
        estimator = default_estimator_factory(cell)
        return Refusing(estimator, None) if cell.name == "topk/n=4/sst/K=4" else estimator

    wider = CheckGrid(dists=GRID.dists, sizes=GRID.sizes, estimators=(*GRID.estimators, "x-reinforce"),
                      replicates=GRID.replicates)
    comparison = compare(baseline, _fresh(factory, grid=wider))
    assert [(r.name, r.note) for r in comparison.failed] == [("topk/n=4/sst/K=4", "now skipped: refused for the test")]
    new = {row.name: row for row in comparison.rows if row.verdict == "NEW"}
    assert set(new) == {"topk/n=4/x-reinforce/K=4", "kruskal/n=4/x-reinforce/K=4"}
    assert new["topk/n=4/x-reinforce/K=4"].variance > 0  # measured, reported, not failing
    assert "tractable" in new["kruskal/n=4/x-reinforce/K=4"].note  # skipped: no log P(X) for trees


# ---------------------------------------------------------------------------- statistics
def test_the_row_statistics_the_check_reads_match_numpy():
    rng = np.random.default_rng(3)
    draws = rng.standard_t(df=8, size=(500, 2, 3))
    exact = np.array([[0.1, -0.2, 0.0], [0.3, 0.0, 0.05]])
    got = gradient_statistics(torch.from_numpy(draws), torch.from_numpy(exact), resamples=10,
                              generator=torch.Generator().manual_seed(0))
    flat = draws.reshape(500, -1)
    squared = ((flat - flat.mean(0)) ** 2).sum(1)
    assert got["total_var"] == pytest.approx(flat.var(0, ddof=1).sum(), rel=1e-12)
    assert got["total_var_se"] == pytest.approx(squared.std(ddof=1) / math.sqrt(500) * 500 / 499, rel=1e-12)
    z = (flat.mean(0) - exact.reshape(-1)) / (flat.std(0, ddof=1) / math.sqrt(500))
    assert got["num_tests"] == 6 and got["num_fixed_biased"] == 0
    assert got["bias_z"] == pytest.approx(np.abs(z).max(), rel=1e-10)


def _check_row(stats: dict, replicates: int) -> dict:
    return {"status": "ok", "reason": "", "unbiased": True, "replicates": replicates, **stats}


def test_zero_se_coordinates_are_skipped_when_exact_and_fail_otherwise():
    draws = torch.zeros(10, 3, dtype=torch.float64)
    draws[:, 0] = torch.linspace(-1, 1, 10, dtype=torch.float64)
    draws[:, 2] = 0.5  # constant, but the exact gradient is 0: a deterministic bias
    got = gradient_statistics(draws, torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64), resamples=10,
                              generator=torch.Generator().manual_seed(0))
    assert got["num_tests"] == 1 and got["num_fixed_biased"] == 1  # coordinate 1: no test
    result = CellResult.from_row(_check_row(got, 10))
    assert result.bias_tests == 2 and result.max_abs_bias_z == math.inf
    run = lambda r: CheckRun({"seed": 0, "instance_seed": 0}, {"c": r})  # noqa: E731
    comparison = compare(run(result), run(result))
    assert comparison.failed[0].name == "c" and "biased: max |z|=inf over 2" in comparison.failed[0].note


def test_variance_z_is_the_delta_method_log_ratio():
    base = CellResult("ok", variance=2.0, variance_se=0.1)
    current = CellResult("ok", variance=3.0, variance_se=0.3)
    expected = math.log(1.5) / math.sqrt((0.3 / 3) ** 2 + (0.1 / 2) ** 2)
    assert variance_z(current, base) == pytest.approx(expected, rel=1e-12)
    assert variance_z(base, current) == pytest.approx(-expected, rel=1e-12)
    zero = CellResult("ok", variance=0.0, variance_se=0.0)
    assert variance_z(zero, zero) == 0.0 and variance_z(base, zero) == math.inf and variance_z(zero, base) == -math.inf


# ---------------------------------------------------------------------------- baseline file
def test_a_saved_baseline_round_trips_and_records_how_it_was_made(baseline, tmp_path):
    path = tmp_path / "b.json"
    baseline.save(path)
    data = json.loads(path.read_text())
    made = data["made_by"]
    for key in ("command", "rgbench_version", "torch_version", "date", "seed", "replicates", "K", "false_alarm_rate"):
        assert key in made, key
    assert data["statistics"]["false_alarm_rate"] == 1e-3
    assert data["settings"]["replicates"] == 1000 and data["settings"]["K"] == 4
    loaded = CheckRun.load(path)
    assert loaded.seed == BASE_SEED and loaded.instance_seed == BASE_SEED
    for name, result in baseline.cells.items():
        assert loaded.cells[name].to_json() == result.to_json()
    assert compare(loaded, baseline).passed


def test_a_malformed_baseline_is_a_value_error_naming_the_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="bad.json"):
        CheckRun.load(path)
    path.write_text("not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        CheckRun.load(path)


def test_the_committed_baseline_matches_the_default_grid():
    """A change of the grid's defaults without `rgbench check --update` is caught here
    (no computation: the full check runs in CI after the tests)."""
    path = checks.default_baseline_path()
    assert path.is_file(), f"run `rgbench check --update` to create {path}"
    committed = CheckRun.load(path)
    grid = CheckGrid()
    assert checks.comparable(committed, grid) is None
    assert set(committed.cells) == {cell.name for cell in grid.cells()}  # the registry's order may change
    assert committed.settings["replicates"] == grid.replicates


# ---------------------------------------------------------------------------- the command
def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main():
        """Test app with ``check`` as a sub-command."""

    register(app)
    return app


# n=4: no float32 / shifted variant cells (those are at n=3), so these runs do not depend on them
SMALL = ["--dists", "topk", "--sizes", "4", "--estimators", "t-reinforce,t-loo", "--replicates", "300"]


def test_update_writes_a_baseline_that_then_passes(tmp_path):
    runner, app, path = CliRunner(), _app(), tmp_path / "baseline.json"
    result = runner.invoke(app, ["check", "--update", "--baseline", str(path), "--quiet", *SMALL])
    assert result.exit_code == 0, result.output
    assert path.is_file() and "Wrote" in result.output
    assert "--update" in json.loads(path.read_text())["made_by"]["command"]

    same = runner.invoke(app, ["check", "--baseline", str(path), *SMALL])
    assert same.exit_code == 0, same.output
    for text in ("topk/n=4/t-loo/K=4", "base V", "verdict", "PASS", "check passed"):
        assert text in same.stdout
    fresh = runner.invoke(app, ["check", "--baseline", str(path), "--seed", "5", "--quiet", *SMALL])
    assert fresh.exit_code == 0, fresh.output
    assert fresh.stdout.strip().startswith("check passed")


def test_a_subset_run_compares_only_its_cells(tmp_path):
    """Point 4: --estimators t-reinforce against a baseline that also holds t-loo passes
    (it used to fail naming the t-loo cell as missing)."""
    runner, app, path = CliRunner(), _app(), tmp_path / "baseline.json"
    assert runner.invoke(app, ["check", "--update", "--baseline", str(path), "--quiet", *SMALL]).exit_code == 0
    fewer = [*SMALL[:4], "--estimators", "t-reinforce", *SMALL[6:]]
    result = runner.invoke(app, ["check", "--baseline", str(path), *fewer])
    assert result.exit_code == 0, result.output
    assert "topk/n=4/t-reinforce/K=4" in result.stdout and "topk/n=4/t-loo/K=4" not in result.stdout
    assert "Traceback" not in result.output


def test_a_full_run_needs_every_cell_of_its_grid_in_the_baseline(tmp_path):
    """The default (full) grid against a baseline made for a subset: a one-line error
    naming a lacking cell, before anything is computed; no traceback."""
    runner, app, path = CliRunner(), _app(), tmp_path / "baseline.json"
    assert runner.invoke(app, ["check", "--update", "--baseline", str(path), "--quiet", *SMALL]).exit_code == 0
    result = runner.invoke(app, ["check", "--baseline", str(path), "--quiet"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert "lacks" in line and "cell(s) of the grid being run (first: topk/n=3/e-reinforce/K=4)" in line


def _saved(tmp_path, edit):
    """The small baseline written by --update, then ``edit(data)`` applied to its JSON."""
    path = tmp_path / "baseline.json"
    assert CliRunner().invoke(_app(), ["check", "--update", "--baseline", str(path), "--quiet", *SMALL]).exit_code == 0
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


CELL = "topk/n=4/t-loo/K=4"


@pytest.mark.parametrize("field, value, message", [
    ("variance", "abc", "variance must be a number, got 'abc'"),
    ("variance", -1.0, "variance must be a finite number >= 0, got -1.0"),
    ("variance", "nan", "variance must be a finite number >= 0, got nan"),
    ("variance_se", None, "variance_se must be a number, got None"),
    ("replicates", 2.5, "replicates must be an int >= 2, got 2.5"),
    ("unbiased", "yes", "unbiased must be a bool, got 'yes'"),
    ("status", "bogus", "status must be one of ok, skipped, error, got 'bogus'"),
])
def test_invalid_baseline_values_are_one_line_errors_naming_cell_and_field(tmp_path, field, value, message):
    path = _saved(tmp_path, lambda data: data["cells"][CELL].__setitem__(field, value))
    result = CliRunner().invoke(_app(), ["check", "--baseline", str(path), "--quiet", *SMALL])
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert f"cell {CELL}: {message}" in line, line


@pytest.mark.parametrize("edit, message", [
    (lambda data: data.__setitem__("cells", {}), "has no cells"),
    (lambda data: data["cells"].pop(CELL), f"lacks 1 cell(s) of its own grid (first: {CELL})"),
    (lambda data: data.__setitem__("cells", []), "cells must be an object"),
])
def test_an_empty_or_incomplete_baseline_is_an_error(tmp_path, edit, message):
    path = _saved(tmp_path, edit)
    result = CliRunner().invoke(_app(), ["check", "--baseline", str(path), "--quiet", *SMALL])
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert message in line, line


@pytest.mark.parametrize("status", ["error", "skipped"])
def test_a_status_edit_cannot_drop_the_variance_test(tmp_path, status):
    """The run decides what is measurable: a cell it measured whose baseline says error or
    skipped FAILs (no numbers to compare), it does not silently lose its test."""
    path = _saved(tmp_path, lambda data: data["cells"][CELL].update(status=status, reason="edited"))
    result = CliRunner().invoke(_app(), ["check", "--baseline", str(path), "--quiet", *SMALL])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{CELL} (measured, but the baseline records it {status} (edited)" in result.stderr


class InflatedLOO(TLeaveOneOut):
    """T-LOO times 1.5, still claiming to be unbiased."""

    def estimate(self, dist, objective, num_replicates=1, generator=None):
        return 1.5 * super().estimate(dist, objective, num_replicates=num_replicates, generator=generator)


def test_a_biased_cell_new_to_the_baseline_fails(tmp_path):
    """Point 3: a cell outside the baseline's grid gets the bias test and FAILs when biased
    (t-loo x 1.5: |z| near 20 at R = 1000); an unbiased new cell is NEW, not failing."""
    estimators.ESTIMATORS.register("t-loo-x1.5")(InflatedLOO)
    try:
        path = _saved(tmp_path, lambda data: None)
        args = ["check", "--baseline", str(path), "--quiet", "--dists", "topk", "--sizes", "4", "--replicates", "1000"]
        bad = CliRunner().invoke(_app(), [*args, "--estimators", "t-loo-x1.5"])
        good = CliRunner().invoke(_app(), [*args, "--estimators", "e-loo"])
    finally:
        estimators.ESTIMATORS.unregister("t-loo-x1.5")
    assert bad.exit_code == 1 and "Traceback" not in bad.output
    assert "topk/n=4/t-loo-x1.5/K=4 (not in the baseline (bias tested only); biased:" in bad.stderr
    assert good.exit_code == 0 and "0 passed, 0 skipped, 1 new" in good.stdout, good.output


def test_the_grid_has_float32_and_shifted_cells_checked_against_the_float64_gradient():
    """Point 5: every structure at n=3 in float32, plain and with logits shifted by +-105
    (float32 exp() overflows past about 88); the shifted law equals the unshifted one, so the
    float64 exact gradient is their reference."""
    names = {cell.name for cell in CheckGrid().cells()}
    for dist in CheckGrid().dists:
        for suffix in ("float32", "float32/shift=+105", "float32/shift=-105"):
            assert f"{dist}/n=3/t-loo/K=4/{suffix}" in names
    seen = {}

    def record(draws, dist, objective, generator):
        seen[(dist.logits.dtype, round(float(dist.logits.mean()), 1))] = draws.dtype
        return draws

    grid = CheckGrid(dists=("topk",), sizes=(3,), estimators=("t-loo",), replicates=200)
    run = run_check(grid, 0, estimator_factory=lambda cell: Perturbed(default_estimator_factory(cell), record))
    assert list(run.cells) == ["topk/n=3/t-loo/K=4", "topk/n=3/t-loo/K=4/float32",
                               "topk/n=3/t-loo/K=4/float32/shift=+105", "topk/n=3/t-loo/K=4/float32/shift=-105"]
    (plain,) = [mean for dtype, mean in seen if dtype == torch.float64]
    assert {(dtype, mean - plain) for dtype, mean in seen} == {
        (torch.float64, 0.0), (torch.float32, 0.0), (torch.float32, 105.0), (torch.float32, -105.0)}


def test_a_wrong_backward_pass_is_caught_by_finite_differences():
    """The exact gradient's own oracle: a reference that is off on one coordinate raises,
    the true one passes."""
    dist = tasks.make_instance("cle", 3, generator=torch.Generator().manual_seed(0))
    objective = tasks.get("quadratic").build(dist, torch.Generator().manual_seed(1))
    _, exact = estimators.exact_gradient(dist, objective)
    checks.finite_difference_check(dist, objective, exact)
    wrong = exact.clone()
    wrong[1, 2] += 1e-3
    with pytest.raises(ValueError, match="disagrees with central finite differences"):
        checks.finite_difference_check(dist, objective, wrong)


def test_the_baseline_ships_as_package_data():
    """Point 6: the default path is found through importlib.resources inside the package,
    and pyproject declares it as package data (so a normal install carries it)."""
    import tomllib
    from importlib import resources
    from pathlib import Path

    import rgbench

    path = checks.default_baseline_path()
    assert path == Path(str(resources.files("rgbench") / "baselines" / "variance-check.json"))
    assert path.is_file() and Path(rgbench.__file__).resolve().parent in path.resolve().parents
    pyproject = tomllib.loads((Path(rgbench.__file__).resolve().parent.parent / "pyproject.toml").read_text())
    assert "baselines/*.json" in pyproject["tool"]["setuptools"]["package-data"]["rgbench"]


def test_save_is_atomic(tmp_path, monkeypatch, baseline):
    """A failed write leaves the old file and no temporary file behind."""
    path = tmp_path / "b.json"
    path.write_text("old")
    monkeypatch.setattr(checks.json, "dumps", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        baseline.save(path)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["b.json"]


def test_user_errors_exit_cleanly(tmp_path):
    runner, app = CliRunner(), _app()
    missing = runner.invoke(app, ["check", "--baseline", str(tmp_path / "none.json")])
    assert missing.exit_code == 1 and "--update" in missing.stderr and "Traceback" not in missing.output
    unknown = runner.invoke(app, ["check", "--update", "--baseline", str(tmp_path / "x.json"), "--dists", "nosuch"])
    assert unknown.exit_code == 2 and "nosuch" in unknown.stderr  # a usage error, as for every --dists
    bad = runner.invoke(app, ["check", "--sizes", "three"])
    assert bad.exit_code == 2


def test_the_check_has_no_pipeline_of_its_own():
    """The check's rows for a tiny grid are the rows `rgbench variance` computes for the same
    VarianceGrids (every non-timing column), and its cells are read from them."""
    grid = CheckGrid(dists=("topk",), sizes=(3,), estimators=("t-loo", "sst"), replicates=200)
    run = run_check(grid, 2, instance_seed=1)
    variance_grids = grid.variance_grids([2], 1)
    assert [g.dtype for g in variance_grids] == ["float64", "float32", "float32", "float32"]
    assert [g.logit_shift for g in variance_grids] == [0.0, 0.0, 105.0, -105.0]
    expected = apply_schema(pd.concat([run_variance(g).frame for g in variance_grids], ignore_index=True),
                            VARIANCE_SCHEMA)
    got = apply_schema(pd.DataFrame(run.rows), VARIANCE_SCHEMA)
    columns = [c for c in VARIANCE_SCHEMA if c not in VARIANCE_TIMING_COLUMNS and c in expected.columns]
    pd.testing.assert_frame_equal(got[columns], expected[columns])
    for name, row in zip(run.cells, run.rows):
        assert run.cells[name] == CellResult.from_row(row) and run.cells[name].variance == row["total_var"]


def test_the_local_executor_keeps_the_order_and_is_lazy():
    seen = []

    def square(x):
        seen.append(x)
        return x * x

    results = LocalExecutor().map(square, [3, 1, 2])
    assert seen == []  # nothing runs before the caller asks
    assert next(results) == 9 and seen == [3]
    assert list(results) == [1, 4] and seen == [3, 1, 2]


def test_a_former_format_baseline_says_to_regenerate(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"format": "rgbench-variance-check/1", "cells": {}}))
    with pytest.raises(ValueError, match="regenerate it with `rgbench check --update`") as info:
        CheckRun.load(path)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------- the full grid (slow)
@pytest.fixture(scope="module")
def committed():
    return CheckRun.load(checks.default_baseline_path())


def _statistical_alarms(comparison):
    """FAILs from the tests, not from a cell that raises (deterministic, not a false alarm)."""
    return [row for row in comparison.failed if not row.note.startswith("raised:")]


@pytest.mark.slow
def test_false_alarms_over_20_fresh_seeds(committed):
    """Unchanged code vs the committed baseline on seeds 1..20: no statistical alarm.
    Fails by chance with probability <= 20 x 1e-3 = 2 %. About 10 minutes on 2 busy cores
    (instances and critics are shared across the seeds; the estimates are not)."""
    runs = run_check(CheckGrid(), list(range(1, 21)), instance_seed=committed.instance_seed)
    alarms = {run.seed: [row.name for row in _statistical_alarms(compare(committed, run))] for run in runs}
    z = [row.variance_z for run in runs for row in compare(committed, run).rows if math.isfinite(row.variance_z)]
    print(f"alarms per seed: {alarms}; variance z: mean {np.mean(z):.3f}, sd {np.std(z):.3f}, max {max(z):.2f}")
    assert not any(alarms.values()), alarms


@pytest.mark.slow
def test_every_cell_detects_doubled_variance_and_flipped_signs(committed):
    """Every measured cell of the full grid, perturbed at once: noise doubling its variance,
    then (unbiased estimators) the sign flip. Two full checks, about 5 minutes."""
    def noisy(cell):
        estimator = default_estimator_factory(cell)
        base = committed.cells.get(cell.name)
        if base is None or base.status != "ok":
            return estimator
        return Perturbed(estimator, doubling_noise(base.variance))

    comparison = compare(committed, run_check(CheckGrid(), FRESH_SEED, instance_seed=committed.instance_seed,
                                              estimator_factory=noisy))
    measured = [name for name, cell in committed.cells.items() if cell.status == "ok"]
    missed = [name for name in measured if "variance rose" not in _row(comparison, name).note]
    weakest = min((_row(comparison, name).variance_z, name) for name in measured)
    print(f"doubled variance: {len(measured) - len(missed)} of {len(measured)} detected, smallest z {weakest}")
    assert not missed, format_table(comparison)

    def flipped(cell):
        estimator = default_estimator_factory(cell)
        return Perturbed(estimator, flipped_sign) if estimator.unbiased else estimator

    comparison = compare(committed, run_check(CheckGrid(), FRESH_SEED, instance_seed=committed.instance_seed,
                                              estimator_factory=flipped))
    unbiased = [name for name in measured if committed.cells[name].unbiased]
    missed = [name for name in unbiased if "biased" not in _row(comparison, name).note]
    weakest = min((_row(comparison, name).max_abs_bias_z, name) for name in unbiased)
    print(f"flipped sign: {len(unbiased) - len(missed)} of {len(unbiased)} detected, smallest max|z| {weakest}")
    assert not missed, format_table(comparison)
