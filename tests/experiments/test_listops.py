"""ListOps: the generator against an independent evaluator and parser, the cache, the model's
padding conventions, the edge metrics, and `train listops` / `table --paper 3` end to end.

The oracles read the expression as text (``[MIN 3 [MED 3 5 4 ] 2 ]``) with a stack and
``statistics.median_high``; they never call the generator's own evaluation.
"""

import json
import statistics

import networkx as nx
import pandas as pd
import pytest
import torch
import typer
from typer.testing import CliRunner

from rgbench import distributions, estimators
from rgbench.experiments.listops.run import LISTOPS_ESTIMATORS
from rgbench.experiments.listops.table3 import PAPER_TABLE3, summarise_table3, table3_latex, table3_markdown
from rgbench.experiments.listops.data import ListOpsSettings, generate, load_or_generate, to_text
from rgbench.experiments.listops.model import ListOpsModel, TreeClassifier, edge_counts, mask_arc_logits, tree_indicator
from rgbench.cli.train import register

SETTINGS = ListOpsSettings(num_train=400, num_valid=50, num_test=50, seed=7)
OPS = {"[MIN": min, "[MAX": max, "[MED": statistics.median_high}


@pytest.fixture(scope="module")
def data():
    return generate(SETTINGS)


def oracle(text):
    """(value, depth, parents) of a prefix expression given as text, by a stack walk."""
    words = text.split()
    stack = []  # frames [op, args, depth, position]
    parents = [-1] * len(words)
    result = None
    for position, word in enumerate(words):
        if stack:
            frame = stack[-1]
            parents[position] = frame[3]
        if word in OPS:
            stack.append([OPS[word], [], 0, position])
        elif word == "]":
            op, args, depth, _ = stack.pop()
            value = (op(args), depth + 1)
            if stack:
                stack[-1][1].append(value[0])
                stack[-1][2] = max(stack[-1][2], value[1])
            else:
                result = value
        else:
            stack[-1][1].append(int(word))
    assert not stack, "unbalanced expression"
    return result[0], result[1], parents


def rows(split):
    for i in range(split.tokens.shape[0]):
        length = int(split.lengths[i])
        yield i, length, to_text(split.tokens[i], length)


def test_expressions_evaluate_to_their_labels(data):
    for split in (data.train, data.valid, data.test):
        for i, _, text in rows(split):
            value, _, _ = oracle(text)
            assert value == int(split.labels[i]), text


def test_parses_match_the_independent_parser_and_are_arborescences(data):
    for i, length, text in rows(data.train):
        _, _, parents = oracle(text)
        assert split_parents(data.train, i, length) == parents, text
        graph = nx.DiGraph([(p, c) for c, p in enumerate(parents) if p >= 0])
        graph.add_nodes_from(range(length))
        assert nx.is_arborescence(graph) and parents[0] == -1


def split_parents(split, i, length):
    return split.parents[i, :length].tolist()


def test_length_depth_and_label_bounds(data):
    for split in (data.train, data.valid, data.test):
        assert int(split.lengths.max()) <= SETTINGS.max_length
        for i, length, text in rows(split):
            _, depth, _ = oracle(text)
            assert depth == int(split.depths[i]) and depth in SETTINGS.depths
            assert len(text.split()) == length
            assert (split.tokens[i, length:] == 0).all() and (split.parents[i, length:] == -1).all()
        assert set(split.depths.tolist()) == set(SETTINGS.depths)
        assert set(split.labels.tolist()) <= set(range(10))
    # Balanced answers: equal quotas per (depth, answer) cell, 80 examples per depth.
    counts = pd.crosstab(data.train.depths.numpy(), data.train.labels.numpy())
    assert (counts.values == 8).all()


def test_generation_is_seeded_and_cached_by_fingerprint(tmp_path):
    small = ListOpsSettings(num_train=30, num_valid=10, num_test=10, seed=3)
    first = load_or_generate(small, tmp_path)
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == [f"listops-{small.fingerprint()}.pt"]
    second = load_or_generate(small, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(first.train, second.train))
    assert all(torch.equal(a, b) for a, b in zip(first.test, generate(small).test))
    other = ListOpsSettings(num_train=30, num_valid=10, num_test=10, seed=4)
    assert other.fingerprint() != small.fingerprint()
    load_or_generate(other, tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 2 and not list(tmp_path.glob("*.tmp"))


def test_settings_are_validated():
    with pytest.raises(ValueError, match="num_train must be a positive int"):
        ListOpsSettings(num_train=0)
    with pytest.raises(ValueError, match="cannot hold an expression of depth 5"):
        ListOpsSettings(max_length=10)
    with pytest.raises(ValueError, match="min_args <= max_args"):
        ListOpsSettings(min_args=4, max_args=3)


def test_padding_tokens_hang_off_the_root_only(data):
    batch = data.train.index(torch.arange(6))
    length = int(batch.lengths.max())
    scores = torch.randn(6, length, length)
    logits = mask_arc_logits(scores, torch.arange(length) < batch.lengths.unsqueeze(-1))
    for b in range(6):
        n = int(batch.lengths[b])
        finite = torch.isfinite(logits[b])
        assert not finite[:, 0].any() and not finite.diagonal().any()
        assert finite[:n, 1:n].sum() == (n - 1) * (n - 1)  # off the diagonal, not into the root
        assert not finite[n:].any()
        assert finite[:, n:].sum() == length - n and (logits[b, 0, n:] == 0).all()
    if "cle" not in distributions.DISTRIBUTIONS:
        pytest.skip("cle is not registered yet")
    parents = distributions.get("cle")(logits, root=0).sample((3,))
    pad = torch.arange(length) >= batch.lengths.unsqueeze(-1)
    assert (parents[:, pad] == 0).all()


def test_classifier_ignores_padding_and_broadcasts_over_samples(data):
    torch.manual_seed(0)
    classifier = TreeClassifier(hidden=8, steps=3)
    batch = data.train.index(torch.arange(4))
    length = int(batch.lengths.max())
    tokens, parents = batch.tokens[:, :length], batch.parents[:, :length].clone()
    tree = tree_indicator(parents)
    short = classifier(tokens, batch.lengths, tree)
    # Pad to the full length, with padding attached to the root as in training.
    full_parents = batch.parents.clone()
    full_parents[torch.arange(SETTINGS.max_length) >= batch.lengths.unsqueeze(-1)] = 0
    long = classifier(batch.tokens, batch.lengths, tree_indicator(full_parents))
    assert torch.allclose(short, long, atol=1e-5)
    stacked = classifier(tokens, batch.lengths, torch.stack([tree, tree, tree]))
    assert stacked.shape == (3, 4, 10) and torch.allclose(stacked[1], short, atol=1e-6)
    objective = ListOpsModel(hidden=8, steps=3).objective(tokens, batch.lengths, batch.labels)
    assert objective(torch.stack([tree, tree])).shape == (2, 4) and objective.accepts_relaxed


def test_edge_metrics_on_gold_and_on_a_wrong_tree(data):
    batch = data.train.index(torch.arange(20))
    perfect = edge_counts(batch.parents, batch.parents, batch.tokens, batch.lengths)
    assert perfect["hits"] == perfect["predicted"] == perfect["gold"]
    assert perfect["attached"] == perfect["tokens"] == int((batch.lengths - 1).sum())
    # Everything attached to the root: hits are exactly the root's own arguments.
    flat = torch.zeros_like(batch.parents)
    flat[:, 0] = -1
    counts = edge_counts(flat, batch.parents, batch.tokens, batch.lengths)
    expected_hits = expected_predicted = 0
    for i, length, text in rows(batch):
        words = text.split()
        _, _, parents = oracle(text)
        expected_hits += sum(1 for c in range(1, length) if parents[c] == 0 and words[c] != "]")
        expected_predicted += sum(1 for c in range(1, length) if words[c] != "]")
    assert int(counts["hits"]) == expected_hits and int(counts["predicted"]) == expected_predicted


def test_table3_layout_puts_the_paper_numbers_beside_ours():
    runs = pd.DataFrame(
        [
            {"estimator": name, "seed": seed, "wall_s": 10.0 + seed, "test_accuracy": 0.5 + 0.1 * seed,
             "test_precision": 0.4, "test_recall": 0.3}
            for name in ("t-loo", "sst") for seed in range(3)
        ]
    )  # fmt: skip
    summary = summarise_table3(runs)
    assert [row["estimator"] for row in summary] == ["sst", "t-loo"]  # the paper's order
    mean, std, best = summary[1]["accuracy"]
    assert (round(mean, 6), round(std, 6), round(best, 6)) == (60.0, 10.0, 70.0)
    markdown = table3_markdown(summary, "quick")
    assert "| T-REINFORCE+ | 60.00 ± 10.00 | 70.00 | 87.34 ± 3.00 | 91.97 |" in markdown
    assert "| SST |" in markdown and "quick" in markdown
    latex = table3_latex(summary, "quick")
    assert "T-REINFORCE+ & 60.00 $\\pm$ 10.00 & 70.00 & 87.34 $\\pm$ 3.00 & 91.97" in latex
    assert PAPER_TABLE3["relax"]["recall"] == (53.61, 17.14, 75.27)


def cli():
    app = typer.Typer()
    register(app)
    return app


@pytest.mark.parametrize("estimator", LISTOPS_ESTIMATORS)
def test_train_listops_smoke_runs_end_to_end(estimator, tmp_path):
    if "cle" not in distributions.DISTRIBUTIONS or estimator not in estimators.ESTIMATORS:
        pytest.skip(f"cle or {estimator} is not registered yet")
    out = tmp_path / "run"
    result = CliRunner().invoke(
        cli(),
        ["train", "listops", "--estimator", estimator, "--scale", "smoke", "--seed", "0", "--out", str(out),
         "--cache", str(tmp_path / "cache"), "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["estimator"] == estimator
    for metric in ("accuracy", "precision", "recall", "attachment"):
        assert 0.0 <= summary[f"test_{metric}"] <= 1.0
    assert summary["objective_term"] == "estimator"
    assert pd.read_csv(out / "metrics.csv")["step"].tolist() == [2, 4]


def test_train_listops_lr_option_reaches_the_optimiser_and_rejects_bad_values(tmp_path):
    if "cle" not in distributions.DISTRIBUTIONS:
        pytest.skip("cle is not registered yet")
    out = tmp_path / "run"
    base = ["train", "listops", "--estimator", "t-loo", "--scale", "smoke", "--out", str(out),
            "--cache", str(tmp_path / "cache"), "--quiet"]  # fmt: skip
    result = CliRunner().invoke(cli(), base + ["--lr", "3e-4"])
    assert result.exit_code == 0, result.output
    assert json.loads(json.loads((out / "summary.json").read_text())["config"])["lr"] == 3e-4
    for bad in ("0", "-1", "nan"):
        result = CliRunner().invoke(cli(), base + ["--lr", bad])
        assert result.exit_code == 2 and "--lr must be a positive number" in result.output


def test_table_command_writes_markdown_and_latex_and_reuses_runs(tmp_path):
    if "cle" not in distributions.DISTRIBUTIONS or "sst" not in estimators.ESTIMATORS:
        pytest.skip("cle or sst is not registered yet")
    args = ["table", "--paper", "3", "--scale", "smoke", "--seeds", "2", "--estimators", "sst", "--out",
            str(tmp_path), "--cache", str(tmp_path / "cache"), "--steps", "2", "--quiet"]  # fmt: skip
    result = CliRunner().invoke(cli(), args)
    assert result.exit_code == 0, result.output
    assert "| SST |" in (tmp_path / "table3.md").read_text()
    assert (tmp_path / "table3_curves.png").stat().st_size > 0 and (tmp_path / "table3_curves.pdf").exists()
    assert "\\begin{tabular}" in (tmp_path / "table3.tex").read_text()
    assert len(pd.read_csv(tmp_path / "table3_runs.csv")) == 2
    stamp = (tmp_path / "runs" / "sst-seed0" / "summary.json").stat().st_mtime_ns
    refused = CliRunner().invoke(cli(), args)  # a non-empty --out needs --resume or --force
    assert refused.exit_code == 1 and "--resume" in refused.output
    assert CliRunner().invoke(cli(), args + ["--resume"]).exit_code == 0
    assert (tmp_path / "runs" / "sst-seed0" / "summary.json").stat().st_mtime_ns == stamp


def test_table_command_rejects_other_tables():
    result = CliRunner().invoke(cli(), ["table", "--paper", "2"])
    assert result.exit_code == 2 and "only Table 3" in result.output
