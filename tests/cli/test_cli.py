"""The ``rgbench`` command line through typer's CliRunner: every command, its user errors,
determinism of the saved CSV, and ``report`` reproducing the tables byte for byte."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import typer
from typer.testing import CliRunner

from rgbench import distributions, estimators
from rgbench.bench import tasks
from rgbench.cli import app
from rgbench.bench.results import VARIANCE_SCHEMA, VARIANCE_TIMING_COLUMNS

runner = CliRunner()
FAST = ["--replicates", "30", "--timing-repeats", "1", "--no-figures", "--quiet"]


def _run(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def _no_traceback(result):
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.fixture(scope="module")
def variance_dir(tmp_path_factory):
    """One small run shared by the tests that only read its output."""
    out = tmp_path_factory.mktemp("variance")
    result = _run("variance", "--dist", "cle", "--sizes", "3,4", "--estimators", "exact,t-reinforce,x-reinforce,sst",
                  "--replicates", "30", "--timing-repeats", "1", "--level", "0.9", "--out", out)
    assert result.exit_code == 0, result.output
    return out, result


def test_variance_prints_a_table_and_writes_results(variance_dir):
    out, result = variance_dir
    for text in ("rgbench variance (90% intervals)", "t-reinforce", "bias [interval]", "skipped"):
        assert text in result.output
    for name in ("variance.csv", "variance.json", "tables.md", "tables.tex", "report.md", "figures/variance.png",
                 "figures/variance.pdf"):
        assert (out / name).is_file(), name
    frame = pd.read_csv(out / "variance.csv")
    assert list(frame.columns) == list(VARIANCE_SCHEMA)
    assert set(frame["estimator"]) == {"exact", "t-reinforce", "x-reinforce", "sst"}
    assert set(frame["reference"].dropna()) == {"exact"} and set(frame["level"]) == {0.9}
    assert "half-width of its 90% interval" in (out / "tables.md").read_text()
    skipped = frame[frame["estimator"] == "x-reinforce"]
    assert (skipped["status"] == "skipped").all() and skipped["reason"].notna().all()


def test_saved_command_reproduces_the_options(variance_dir):
    import json

    out, _ = variance_dir
    command = json.loads((out / "variance.json").read_text())["metadata"]["command"]
    # Changed: --dists is the option's name now (--dist, typed above, is its alias), and the
    # saved command spells options by their names.
    assert command.startswith("rgbench variance --dists cle --sizes 3,4 --estimators exact,t-reinforce")
    assert "--seed 0" in command and "--replicates 30" in command and f"--out {out}" in command
    assert "--figures" in command and "--quiet" not in command


def test_report_reproduces_the_tables_byte_for_byte(variance_dir):
    out, _ = variance_dir
    before = {name: (out / name).read_bytes() for name in ("tables.md", "tables.tex", "report.md")}
    result = _run("report", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert before == {name: (out / name).read_bytes() for name in ("tables.md", "tables.tex", "report.md")}


def test_same_seed_gives_the_same_csv_except_timing(tmp_path):
    args = ["variance", "--dist", "topk", "--sizes", "4", "--estimators", "t-loo,relax,sst",
            "--option", "relax.warmup_steps=3", "--seed", "7", *FAST]
    frames = []
    for name in ("a", "b"):
        result = _run(*args, "--out", tmp_path / name)
        assert result.exit_code == 0, result.output
        frames.append(pd.read_csv(tmp_path / name / "variance.csv").drop(columns=list(VARIANCE_TIMING_COLUMNS)))
    pd.testing.assert_frame_equal(frames[0], frames[1])
    # And the non-timing text of the two files is identical, column by column.
    assert frames[0].to_csv(index=False) == frames[1].to_csv(index=False)


def test_unknown_distribution_lists_the_valid_names():
    result = _run("variance", "--dist", "hypercube", *FAST)
    assert result.exit_code == 1
    _no_traceback(result)
    assert "unknown distribution 'hypercube'" in result.output
    for name in distributions.names():
        assert name in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_unknown_estimator_lists_the_valid_names():
    result = _run("variance", "--dist", "topk", "--estimators", "t-reinforce,magic", *FAST)
    assert result.exit_code == 1
    _no_traceback(result)
    assert "unknown estimator 'magic'" in result.output
    for name in estimators.names():
        assert name in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    result = _run("variance", "--dist", "topk", "--device", "cuda", *FAST)
    assert result.exit_code == 1
    _no_traceback(result)
    assert "CUDA is not available" in result.output and "--device cpu" in result.output


def test_malformed_options_are_bad_parameters():
    result = _run("variance", "--dist", "topk", "--sizes", "3,x", *FAST)
    assert result.exit_code == 2 and "--sizes" in result.output and "comma-separated integers" in result.output
    _no_traceback(result)
    result = _run("variance", "--dist", "topk", "--option", "relax-warmup", *FAST)
    assert result.exit_code == 2 and "NAME.KEY=VALUE" in result.output
    result = _run("variance", "--dist", "topk", "--task", "cubic", *FAST)
    assert result.exit_code == 2 and "quadratic" in result.output
    result = _run("variance", "--dist", "topk", "--sizes", "1", *FAST)
    assert result.exit_code == 1 and "sizes" in result.output
    result = _run("variance", "--dist", "topk", "--level", "1.5", *FAST)
    assert result.exit_code == 2 and "--level" in result.output


def test_sizes_beyond_enumeration_fall_back_and_say_so(tmp_path, monkeypatch):
    monkeypatch.setattr(distributions.get("topk"), "max_enumeration_size", 3)
    result = _run("variance", "--dist", "topk", "--sizes", "3,4", "--estimators", "t-reinforce",
                  "--reference-samples", "20", *FAST, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert "n=4 exceeds the exact-enumeration limit n<=3" in result.output and "t-loo reference" in result.output
    frame = pd.read_csv(tmp_path / "variance.csv")
    assert frame.set_index("n")["reference"].to_dict() == {3: "exact", 4: "t-loo"}
    assert "t-loo Monte Carlo reference" in (tmp_path / "tables.md").read_text()


def test_failed_cells_exit_with_one_line(tmp_path, registered):
    class Broken(estimators.Estimator):
        def estimate(self, dist, objective, num_replicates=1, generator=None):
            raise RuntimeError("boom")

        def surrogate(self, dist, objective, generator=None):
            raise RuntimeError("boom")

    registered(estimators.ESTIMATORS, "broken", Broken)
    result = _run("variance", "--dist", "topk", "--sizes", "3", "--estimators", "broken,t-reinforce", *FAST,
                  "--out", tmp_path)
    assert result.exit_code == 1
    _no_traceback(result)
    assert "1 cell(s) failed" in result.output and "boom" in result.output
    assert (tmp_path / "variance.csv").is_file()  # the rest of the run is kept


def test_speed_times_the_building_blocks(tmp_path):
    result = _run("speed", "--dist", "spanning-tree", "--sizes", "4,6", "--batch", "3", "--repeats", "1",
                  "--estimators", "t-reinforce", "--no-figures", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert "rgbench speed" in result.output and "noise_given_trace" in result.output
    frame = pd.read_csv(tmp_path / "speed.csv")
    assert set(frame["operation"]) == {"sample", "trace_log_prob", "noise_given_trace", "estimate:t-reinforce"}
    assert set(frame["dist"]) == {"kruskal"} and (frame["status"] == "ok").all()
    assert (tmp_path / "speed_tables.md").is_file() and not (tmp_path / "figures").exists()


def test_speed_unknown_distribution():
    result = _run("speed", "--dist", "hypercube", "--quiet")
    assert result.exit_code == 1 and "valid names" in result.output
    _no_traceback(result)


def test_report_on_a_directory_without_results(tmp_path):
    result = _run("report", tmp_path)
    assert result.exit_code == 1 and "no saved results" in result.output
    _no_traceback(result)


def test_list_shows_everything_and_the_support_matrix():
    result = _run("list", "--task", "match")
    assert result.exit_code == 0, result.output
    for name in distributions.names() + estimators.names() + tasks.names():
        assert name in result.output
    assert "supported combinations, task match" in result.output
    assert "spanning-tree" in result.output  # aliases are listed
    if "sst" in estimators.names():
        assert "kruskal / sst:" in result.output  # the match objective has no relaxation


def _commands(group, prefix=""):
    for name, sub in group.commands.items():
        yield prefix + name, sub
        if hasattr(sub, "commands"):  # a command group such as `train`
            yield from _commands(sub, f"{prefix}{name} ")


def test_every_option_has_help():
    commands = dict(_commands(typer.main.get_command(app)))
    assert {"variance", "speed", "report", "list", "optimize", "train", "table", "check"} <= set(commands)
    for name, sub in commands.items():
        assert sub.help, name
        for param in sub.params:
            if param.name != "help":
                assert getattr(param, "help", None), f"{name} {param.name}"
    result = _run("variance", "--help")
    assert result.exit_code == 0 and "--replicates" in result.output


def test_a_biased_unbiased_estimator_is_flagged_on_the_console_tables_and_report(tmp_path):
    """t-loo x 1.5 registered as unbiased (8.6 standard errors off at R = 1000, threshold
    3.8): status "biased" in the console table, BIASED in tables.md/.tex, a warning on
    stderr and in report.md; the unchanged t-loo stays "ok"."""
    from rgbench.estimators.loo import TLeaveOneOut

    class InflatedLOO(TLeaveOneOut):
        def estimate(self, dist, objective, num_replicates=1, generator=None):
            return 1.5 * super().estimate(dist, objective, num_replicates=num_replicates, generator=generator)

    estimators.ESTIMATORS.register("t-loo-x1.5")(InflatedLOO)
    try:
        result = _run("variance", "--dist", "topk", "--sizes", "3", "--estimators", "t-loo,t-loo-x1.5",
                      "--replicates", "1000", "--timing-repeats", "1", "--no-figures", "--out", tmp_path)
    finally:
        estimators.ESTIMATORS.unregister("t-loo-x1.5")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if "t-loo" in line]
    assert any("t-loo-x1.5" in line and "biased: registered unbiased" in line for line in lines), result.stdout
    assert any("t-loo-x1.5" not in line and line.rstrip(" │").endswith("ok") for line in lines), result.stdout
    assert "t-loo-x1.5 at n=3 is flagged biased" in result.stderr
    assert "t-loo-x1.5 at n=3 is flagged biased" in (tmp_path / "report.md").read_text()
    tables = (tmp_path / "tables.md").read_text()
    (flagged,) = [line for line in tables.splitlines() if line.startswith("| t-loo-x1.5 ")]
    assert "BIASED" in flagged and "BIASED" not in [line for line in tables.splitlines() if line.startswith("| t-loo ")][0]
    assert "- biased: t-loo-x1.5 at n = 3: registered unbiased" in tables
    assert "\\textbf{BIASED}" in (tmp_path / "tables.tex").read_text()
    frame = pd.read_csv(tmp_path / "variance.csv")
    assert frame.set_index("estimator")["status"].to_dict() == {"t-loo": "ok", "t-loo-x1.5": "biased"}


def test_variance_takes_several_dists_and_names_the_default_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _run("variance", "--dists", "topk,kruskal", "--sizes", "3", "--estimators", "t-loo,sst", *FAST)
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(tmp_path / "rgbench-results" / "variance-topk-kruskal" / "variance.csv")
    assert list(dict.fromkeys(frame["dist"])) == ["topk", "kruskal"]
    # --dist is the same option (an alias, as the README types it); aliases resolve.
    result = _run("variance", "--dist", "spanning-tree", "--sizes", "3", "--estimators", "t-loo", *FAST)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "rgbench-results" / "variance-kruskal" / "variance.csv").is_file()


def test_speed_takes_all_dists_and_all_estimators(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _run("speed", "--dists", "all", "--sizes", "4", "--batch", "2", "--repeats", "1",
                  "--estimators", "t-reinforce", "--no-figures", "--quiet")
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(tmp_path / "rgbench-results" / "speed-all" / "speed.csv")
    assert set(frame["dist"]) == set(distributions.names())
    from rgbench.cli.options import parse_registered

    assert parse_registered("all", estimators.ESTIMATORS, "--estimators") == tuple(estimators.names())


def test_options_device_is_the_one_device_check():
    from rgbench.cli.options import device

    assert device("cpu") == "cpu"
    with pytest.raises(typer.BadParameter, match="not a torch device"):
        device("tpu")
    with pytest.raises(typer.BadParameter, match="only cpu and cuda"):
        device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(typer.BadParameter, match="CUDA is not available"):
            device("cuda:1")


@pytest.mark.parametrize("command", ["variance", "speed", "report", "list"])
def test_help_is_readable_at_100_columns(command):
    result = _run(command, "--help")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 100 and max(len(line) for line in lines) > 80
    assert "…" not in result.output  # no option help cut short
    if command in ("variance", "speed"):
        assert "--dists,--dist" in result.output
