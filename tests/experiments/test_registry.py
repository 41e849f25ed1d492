"""The experiment registry: every experiment has what the CLI needs; the CLI dispatches from it."""

import re

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from rgbench import distributions, estimators
from rgbench.cli.train import register
from rgbench.experiments import EXPERIMENTS, Artefact, Experiment, artefacts, find_artefact
from rgbench.experiments.registry import TRAIN_OPTIONS, register as register_experiment
from rgbench.experiments.scales import Scale
from rgbench.experiments.toy.problem import ToyProblem
from rgbench.experiments.toy.scales import TOY_SCALES
from rgbench.experiments.trainer import TrainConfig, Trainer


def cli():
    app = typer.Typer()
    register(app)
    return app


@pytest.mark.parametrize("name", EXPERIMENTS.names())
def test_every_experiment_has_the_entries_the_cli_needs(name):
    experiment = EXPERIMENTS.get(name)
    assert experiment.name == name and experiment.summary
    assert set(experiment.scales) == set(Scale), "every scale needs a configuration"
    assert callable(experiment.train)
    assert experiment.train_estimators and all(e in estimators.ESTIMATORS for e in experiment.train_estimators)
    assert set(experiment.train_options) <= set(TRAIN_OPTIONS)
    if "dists" in experiment.train_options:
        assert experiment.structures and all(s in distributions.DISTRIBUTIONS for s in experiment.structures)
    if experiment.artefact is not None:
        assert experiment.artefact.kind in ("table", "figure") and experiment.artefact.number > 0
        assert callable(experiment.paper_artefact) and experiment.artefact_files
        assert all(e in estimators.ESTIMATORS for e in experiment.artefact_estimators)
        assert find_artefact(experiment.artefact.kind, experiment.artefact.number) is experiment
    else:
        assert experiment.paper_artefact is None


def test_the_paper_experiments_are_registered():
    assert {"toy", "listops"} <= set(EXPERIMENTS.names())
    assert [(str(a), e.name) for a, e in artefacts("table")] == [("Table 3", "listops")]
    assert Artefact("figure", 2).slug == "figure2" and str(Artefact("figure", 2)) == "Figure 2"


def test_a_second_experiment_for_the_same_artefact_or_an_unknown_option_is_refused():
    listops = EXPERIMENTS.get("listops")
    with pytest.raises(ValueError, match="Table 3 is already registered"):
        register_experiment(Experiment(**{**listops.__dict__, "name": "listops-again"}))
    with pytest.raises(ValueError, match="unknown train options"):
        Experiment(**{**listops.__dict__, "train_options": frozenset({"temperature"})})
    with pytest.raises(ValueError, match="paper_artefact"):
        Experiment(**{**listops.__dict__, "paper_artefact": None})


def test_table_for_an_unregistered_paper_table_is_a_one_line_error_listing_the_available_ones():
    result = CliRunner().invoke(cli(), ["table", "--paper", "99"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "99" in lines[0] and "Table 3 (listops)" in lines[0]


def test_table_lists_every_registered_table(monkeypatch):
    listops = EXPERIMENTS.get("listops")
    extra = Experiment(**{**listops.__dict__, "name": "extra", "artefact": Artefact("table", 1)})
    register_experiment(extra)
    try:
        result = CliRunner().invoke(cli(), ["table", "--paper", "99"])
        assert result.exit_code == 2 and "available: Table 1 (extra), Table 3 (listops)" in result.output
    finally:
        EXPERIMENTS.unregister("extra")


def test_train_rejects_unknown_experiments_and_options_it_does_not_read():
    result = CliRunner().invoke(cli(), ["train", "nonsense"])
    assert result.exit_code == 2 and "unknown experiment 'nonsense'" in result.output and "listops" in result.output
    result = CliRunner().invoke(cli(), ["train", "toy", "--dists", "matching", "--lr", "0.1"])
    assert result.exit_code == 2 and "has no --lr" in result.output
    result = CliRunner().invoke(cli(), ["train", "listops", "--dists", "matching"])
    assert result.exit_code == 2 and "has no --dists" in result.output


def test_train_toy_is_optimize_and_writes_one_folder_per_structure_and_estimator(tmp_path):
    if "matching" not in distributions.DISTRIBUTIONS or "t-loo" not in estimators.ESTIMATORS:
        pytest.skip("matching or t-loo is not registered yet")
    tables = []
    for command in (["train", "toy"], ["optimize"]):
        out = tmp_path / command[0]
        result = CliRunner().invoke(cli(), [*command, "--dists", "matching", "--estimators", "t-loo", "--scale",
                                            "smoke", "--steps", "4", "--out", str(out), "-q"])
        assert result.exit_code == 0, result.output
        assert (out / "matching" / "t-loo-seed0" / "metrics.csv").exists() and not (out / "toy").exists()
        assert "authors' figures are at 15,000 steps" in result.output
        assert "authors' figures are at 15,000 steps" in (out / "toy_table.md").read_text()
        tables.append(pd.read_csv(out / "toy_table.csv").drop(columns="wall_s"))
    pd.testing.assert_frame_equal(*tables)


def test_the_progress_bar_ends_at_the_last_step(capsys):
    if "matching" not in distributions.DISTRIBUTIONS or "t-loo" not in estimators.ESTIMATORS:
        pytest.skip("matching or t-loo is not registered yet")
    problem = ToyProblem("matching", TOY_SCALES[Scale.smoke])
    config = TrainConfig(steps=30, eval_every=10, lr=0.01, num_samples=3, batch_structures=3, select_best=False)
    Trainer(problem, estimators.get("t-loo", num_samples=3), config, None, {"run": "bar"}, "cpu", True).run()
    counts = re.findall(r"(\d+)/30", capsys.readouterr().err)
    assert counts and counts[-1] == "30"


def test_figure_runs_the_experiment_registered_for_it(tmp_path):
    calls = []

    def paper_artefact(**arguments):
        calls.append(arguments)
        return "drawn"

    listops = EXPERIMENTS.get("listops")
    extra = Experiment(**{**listops.__dict__, "name": "extra", "artefact": Artefact("figure", 7),
                          "paper_artefact": paper_artefact})
    register_experiment(extra)
    try:
        missing = CliRunner().invoke(cli(), ["figure", "--paper", "99"])
        assert missing.exit_code == 2 and "only Figure 7 (extra) is available" in missing.output
        result = CliRunner().invoke(cli(), ["figure", "--paper", "7", "--scale", "smoke", "--seeds", "2", "--out",
                                            str(tmp_path / "figure7"), "-q"])
        assert result.exit_code == 0 and "drawn" in result.output, result.output
        (arguments,) = calls
        assert arguments["seeds"] == 2 and arguments["out"] == tmp_path / "figure7"
        assert arguments["estimators"] == listops.artefact_estimators
    finally:
        EXPERIMENTS.unregister("extra")
