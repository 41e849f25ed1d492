"""The authors' toy losses against plain-Python oracles, and `rgbench optimize` end to end.

The oracles compute each loss from the parent array / edge list of every structure that the
brute-force supports in ``oracles.py`` list, never through rgbench's indicator code.
"""

from collections import Counter

import pytest
import torch
import typer
from typer.testing import CliRunner

from tests import oracles
from rgbench import distributions, estimators
from rgbench.experiments.scales import Scale
from rgbench.experiments.toy.losses import toy_loss, toy_optimum, toy_structures
from rgbench.experiments.toy.problem import ToyProblem
from rgbench.experiments.toy.run import TOY_ESTIMATORS, run_toy
from rgbench.experiments.toy.scales import TOY_SCALES
from rgbench.cli.train import register


def parent_indicator(parents, n):
    a = torch.zeros(n, n, dtype=torch.float64)
    for child, parent in enumerate(parents):
        if parent >= 0:
            a[parent, child] = 1.0
    return a


def height_in_nodes(parents):
    def depth(v):
        return 1 if parents[v] < 0 else 1 + depth(parents[v])

    return max(depth(v) for v in range(len(parents)))


def test_matching_loss_counts_fixed_points():
    n = 5
    perms = sorted(oracles.support_matching(n))
    ind = torch.zeros(len(perms), n, n)
    for row, perm in enumerate(perms):
        ind[row, torch.arange(n), torch.tensor(perm)] = 1.0
    expected = torch.tensor([-float(sum(i == p for i, p in enumerate(perm))) for perm in perms])
    assert torch.equal(toy_loss("matching")(ind), expected)


def test_binary_tree_loss_is_minus_height_on_every_tree():
    n = 6
    trees = sorted(oracles.support_binary_tree(n))
    ind = torch.stack([parent_indicator(t, n) for t in trees])
    expected = torch.tensor([-float(height_in_nodes(t)) for t in trees], dtype=torch.float64)
    assert torch.equal(toy_loss("binary-tree")(ind), expected)
    assert toy_loss("binary-tree").accepts_relaxed is False


def test_arborescence_loss_is_minus_largest_out_degree():
    n = 5
    trees = sorted(oracles.support_cle(n, root=0))
    ind = torch.stack([parent_indicator(t, n) for t in trees])
    expected = [-float(max(Counter(p for p in t if p >= 0).values())) for t in trees]
    assert toy_loss("cle")(ind).tolist() == expected
    assert toy_loss("arborescence") is toy_loss("cle")


def test_spanning_tree_loss_is_minus_largest_degree():
    n = 5
    trees = sorted(oracles.support_kruskal(n))
    ind = torch.zeros(len(trees), n, n)
    for row, edges in enumerate(trees):
        for u, v in edges:
            ind[row, u, v] = ind[row, v, u] = 1.0
    expected = [-float(max(Counter(v for e in t for v in e).values())) for t in trees]
    assert toy_loss("kruskal")(ind).tolist() == expected


@pytest.mark.parametrize("n", [3, 10])
def test_optima_are_reached_by_the_known_structures(n):
    chain = [-1] + list(range(n - 1))  # 0 -> 1 -> ... -> n-1
    star = [-1] + [0] * (n - 1)
    assert toy_loss("binary-tree")(parent_indicator(chain, n)).item() == toy_optimum("binary-tree", n)
    assert toy_loss("cle")(parent_indicator(star, n)).item() == toy_optimum("cle", n)
    sym = parent_indicator(star, n) + parent_indicator(star, n).T
    assert toy_loss("kruskal")(sym).item() == toy_optimum("kruskal", n)
    assert toy_loss("matching")(torch.eye(n)).item() == toy_optimum("matching", n)


def test_losses_keep_leading_dimensions_and_reject_bad_shapes():
    ind = torch.rand(2, 3, 4, 4)
    for name in toy_structures():
        assert toy_loss(name)(ind).shape == (2, 3)
        with pytest.raises(ValueError, match="indicator must have shape"):
            toy_loss(name)(torch.rand(4, 3))
    with pytest.raises(ValueError, match="unknown toy loss"):
        toy_loss("permutation")


def test_spanning_tree_problem_keeps_symmetric_logits():
    if "kruskal" not in distributions.DISTRIBUTIONS or "t-loo" not in estimators.ESTIMATORS:
        pytest.skip("kruskal or t-loo is not registered yet")
    _, table = run_toy(["kruskal"], ["t-loo"], Scale.smoke, seed=0, steps=3, progress=False)
    assert table["status"].tolist() == ["complete"]
    problem = ToyProblem("kruskal", TOY_SCALES[Scale.smoke])
    with torch.no_grad():
        problem.param.add_(torch.randn_like(problem.param))
    assert torch.equal(problem.logits, problem.logits.T)


def test_optimize_matching_runs_end_to_end_with_every_estimator(tmp_path):
    """`rgbench optimize --dist matching --steps 50` with every toy estimator that exists."""
    if "matching" not in distributions.DISTRIBUTIONS:
        pytest.skip("matching is not registered yet")
    available = [name for name in TOY_ESTIMATORS if name in estimators.ESTIMATORS]
    if len(available) < len(TOY_ESTIMATORS):
        missing = sorted(set(TOY_ESTIMATORS) - set(available))
        pytest.skip(f"estimators not registered yet: {missing}")
    app = typer.Typer()
    register(app)
    out = tmp_path / "toy"
    result = CliRunner().invoke(
        app,
        ["optimize", "--dist", "matching", "--steps", "50", "--scale", "smoke", "--estimators", ",".join(available),
         "--out", str(out), "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    import pandas as pd

    table = pd.read_csv(out / "toy_table.csv")
    assert table["estimator"].tolist() == available
    assert (table["status"] == "complete").all()
    assert (table["final_loss"] <= 0).all() and (table["final_loss"] >= -10).all()
    assert (table["grad_std"] > 0).all()
    curves = pd.read_csv(out / "toy_curves.csv")
    assert sorted(curves["step"].unique().tolist()) == [0, 25, 50]
    for name in ("toy_table.md", "toy_curves.png", "toy_curves.pdf"):
        assert (out / name).stat().st_size > 0
    for name in available:
        assert (out / "matching" / f"{name}-seed0" / "metrics.csv").exists()


def test_optimize_reports_unsupported_pairs_as_skipped(tmp_path):
    if "binary-tree" not in distributions.DISTRIBUTIONS or "sst" not in estimators.ESTIMATORS:
        pytest.skip("binary-tree or sst is not registered yet")
    _, table = run_toy(["binary-tree"], ["sst"], Scale.smoke, seed=0, out=tmp_path, steps=2, progress=False)
    assert table["status"].tolist() == ["skipped"]
    assert "BinaryTree" in table["reason"].iloc[0]
    assert "skipped" in (tmp_path / "toy_table.md").read_text()


def test_optimize_rejects_unknown_names():
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["optimize", "--dist", "nonsense"])
    assert result.exit_code == 2
    assert "unknown name 'nonsense'" in result.output
    result = CliRunner().invoke(app, ["optimize", "--dist", "topk"])
    assert result.exit_code == 2
    assert "has no toy loss" in result.output
