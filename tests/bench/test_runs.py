"""Runs that survive interruption: chunked statistics, atomic files, --out checks, progress,
--resume, signals, --threads and one-line errors (issue 13), on tiny real grids."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import typer
from typer.testing import CliRunner

from rgbench.cli import bench as cli
from rgbench.cli import app
from rgbench.cli.options import parse_ints
from rgbench.bench import VarianceGrid, run_variance, store, streaming
from rgbench.bench.results import TIMING_COLUMNS, Results
from rgbench.reports import render
from rgbench.bench.statistics import gradient_statistics
from rgbench.bench.streaming import ReplicateSummary, chunk_sizes


# ---------------------------------------------------------------------------- streaming statistics
def _draws(r: int, d: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    g = 3.0 + torch.randn(r, d, generator=gen, dtype=torch.float64) * torch.linspace(0.5, 2.0, d, dtype=torch.float64)
    g[:, 0] = 0.25  # a coordinate every replicate agrees on
    return g


def test_chunk_size_depends_on_the_coordinates_only():
    assert streaming.chunk_size(3) == streaming.MAX_CHUNK
    assert streaming.chunk_size(10**6) == streaming.MIN_CHUNK
    assert streaming.chunk_size(100) == streaming.CHUNK_ELEMENTS // 100
    assert chunk_sizes(20000, 3) == [8192, 8192, 3616] and sum(chunk_sizes(12345, 40)) == 12345


@pytest.mark.parametrize("sizes", [[700], [1, 1, 698], [256, 300, 144], [2] * 350])
def test_chunk_combined_moments_equal_a_direct_computation(sizes):
    """Chan's combination over any chunking gives the one-shot mean, variance, cosine and
    the sums of D_r = ||g_r - g_bar||^2 up to float rounding."""
    g = _draws(700, 5)
    reference = torch.tensor([0.3, -1.0, 2.0, 0.5, 1.5], dtype=torch.float64)
    summary = ReplicateSummary(reference, deviation_moments=True)
    for chunk in torch.split(g, sizes):
        summary.add(chunk)
    assert summary.count == 700
    torch.testing.assert_close(summary.replicate_mean, g.mean(0), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(summary.variance, g.var(0), rtol=1e-11, atol=0)
    assert summary.variance[0] == 0  # exactly, whatever the chunking
    cos = torch.nn.functional.cosine_similarity(g, reference.expand_as(g), dim=-1)
    assert summary.cosine_mean == pytest.approx(float(cos.mean()), rel=1e-13)
    assert summary.cosine_sd == pytest.approx(float(cos.std()), rel=1e-10)
    deviations = (g - g.mean(0)).square().sum(1)
    first, second = summary.deviation_sums()
    assert first == pytest.approx(float(deviations.sum()), rel=1e-11)
    assert second == pytest.approx(float(deviations.square().sum()), rel=1e-10)


def _plain_bootstrap(g: torch.Tensor, resamples: int, gen: torch.Generator):
    """The one-shot percentile bootstrap (the implementation before chunking), as an oracle."""
    r = g.shape[0]
    mean = g.mean(0)
    centred = g - mean
    rows = torch.randint(r, (resamples, r), generator=gen)
    counts = torch.zeros(resamples, r, dtype=g.dtype).scatter_add_(1, rows, torch.ones(resamples, r, dtype=g.dtype))
    first, second = counts @ centred / r, counts @ centred.square() / r
    return ((second - first.square()) * (r / (r - 1))).sum(-1).clamp(min=0.0), (mean + first).norm(dim=-1)


def test_single_chunk_bootstrap_is_the_plain_bootstrap():
    g = _draws(500, 4)
    summary = ReplicateSummary(resamples=300, generator=torch.Generator().manual_seed(7))
    summary.add(g)
    total, norm = summary.bootstrap()
    want_total, want_norm = _plain_bootstrap(g, 300, torch.Generator().manual_seed(7))
    torch.testing.assert_close(total, want_total, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(norm, want_norm, rtol=1e-12, atol=1e-12)


def test_chunked_bootstrap_resamples_within_each_chunk():
    """Stratified by chunk: resample b takes n_j replicates with replacement from chunk j; the
    oracle builds the same counts for the whole [R, d] tensor and computes directly."""
    g = _draws(600, 3)
    sizes = [256, 256, 88]
    summary = ReplicateSummary(resamples=200, generator=torch.Generator().manual_seed(3))
    for chunk in torch.split(g, sizes):
        summary.add(chunk)
    gen = torch.Generator().manual_seed(3)
    counts = torch.cat([torch.zeros(200, n, dtype=torch.float64).scatter_add_(
        1, torch.randint(n, (200, n), generator=gen), torch.ones(200, n, dtype=torch.float64)) for n in sizes], 1)
    r = 600
    mean_b = counts @ g / r
    total = ((counts @ g.square() / r - mean_b.square()) * (r / (r - 1))).sum(-1)
    got_total, got_norm = summary.bootstrap()
    torch.testing.assert_close(got_total, total, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_norm, mean_b.norm(dim=-1), rtol=1e-12, atol=1e-12)


def test_gradient_statistics_on_one_chunk_match_the_one_shot_formulas():
    g = _draws(400, 4, seed=1)
    reference = torch.tensor([0.25, 3.0, 3.0, 3.0], dtype=torch.float64)
    s = gradient_statistics(g, reference, resamples=100, generator=torch.Generator().manual_seed(0))
    assert s["total_var"] == pytest.approx(float(g.var(0).sum()), rel=1e-12)
    assert s["bias"] == pytest.approx(float((g.mean(0) - reference).norm()), rel=1e-12)
    boot, _ = _plain_bootstrap(g, 100, torch.Generator().manual_seed(0))
    assert s["total_var_lo"] == pytest.approx(float(torch.quantile(boot, 0.025)), rel=1e-10)
    assert s["num_tests"] == 3  # the constant coordinate does not vary


def test_check_statistics_do_not_depend_on_the_chunking():
    g = _draws(20000, 3, seed=2)  # 3 chunks of the check's drawing
    exact = torch.tensor([0.25, 3.0, 3.0], dtype=torch.float64)
    got = gradient_statistics(g, exact, resamples=10, generator=torch.Generator().manual_seed(0))
    deviations = (g - g.mean(0)).square().sum(1)
    r = g.shape[0]
    assert got["total_var"] == pytest.approx(float(deviations.mean()) * r / (r - 1), rel=1e-11)
    assert got["total_var_se"] == pytest.approx(float(deviations.std()) / math.sqrt(r) * r / (r - 1), rel=1e-8)
    assert got["num_tests"] == 2 and got["num_fixed_biased"] == 0  # the constant coordinate is no test


def test_draw_chunks_checks_for_a_stop_before_each_chunk():
    calls = []
    chunks = list(streaming.draw_chunks(lambda n: torch.zeros(n, 3), 600, 10**6, between=lambda: calls.append(1)))
    assert [c.shape[0] for c in chunks] == [256, 256, 88] and len(calls) == 3


def test_a_critic_estimator_is_measured_in_chunks(monkeypatch):
    """relax's critic is trained once, then its estimates come in several chunks."""
    monkeypatch.setattr(streaming, "MIN_CHUNK", 64)
    monkeypatch.setattr(streaming, "MAX_CHUNK", 64)
    grid = VarianceGrid(dists=("topk",), sizes=(3,), estimators=("relax",), replicates=200, timing_repeats=1,
                        estimator_options={"relax": {"warmup_steps": 5}})
    row = run_variance(grid).frame.iloc[0]
    assert row["status"] == "ok", row["reason"]
    assert row["replicates"] == 200 and row["total_var"] > 0 and row["warmup_s"] > 0


# ---------------------------------------------------------------------------- runs of the CLI
TINY = ["--dist", "topk", "--sizes", "3,4", "--estimators", "t-reinforce,t-loo", "--replicates", "200",
        "--timing-repeats", "2", "--no-figures", "-q"]
SPEED = ["--dist", "topk", "--sizes", "3,4", "--estimators", "t-reinforce", "--batch", "2", "--repeats", "2",
         "--no-figures", "-q"]
runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _non_timing(out: Path, kind: str = "variance") -> pd.DataFrame:
    return pd.read_csv(out / f"{kind}.csv").drop(columns=list(TIMING_COLUMNS[kind]))


def _one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return lines[0]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "whole"
    result = _invoke("variance", *TINY, "--out", out)
    assert result.exit_code == 0, result.output
    return out


def test_a_run_saves_its_cells_and_configuration(uninterrupted):
    run = json.loads((uninterrupted / "progress" / "run.json").read_text())
    assert run["kind"] == "variance" and run["total"] == 4 and run["config"]["threads"] == 1
    assert run["config"]["replicates"] == 200 and "--resume" in run["resume"]
    assert sorted(p.name for p in (uninterrupted / "progress").glob("cell-*.json")) == [
        f"cell-{i:06d}.json" for i in range(4)]
    metadata = json.loads((uninterrupted / "variance.json").read_text())["metadata"]
    assert metadata["threads"] == 1 and metadata["run_id"] == run["run_id"]
    assert "--resume" not in metadata["command"] and "--threads 1" in metadata["command"]


def test_resume_after_a_kill_equals_an_uninterrupted_run(uninterrupted, tmp_path):
    """A kill -9 leaves some cells and no final files: --resume computes the rest."""
    out = tmp_path / "killed"
    shutil.copytree(uninterrupted, out)
    for name in ("cell-000001.json", "cell-000003.json"):
        (out / "progress" / name).unlink()
    for name in ("variance.csv", "variance.json", "report.md", "tables.md", "tables.tex"):
        (out / name).unlink()
    report = _one_error_line(_invoke("report", out))
    assert "incomplete variance run (2 of 4 cells saved" in report and "--resume" in report
    result = _invoke("variance", *TINY, "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(_non_timing(out), _non_timing(uninterrupted))
    assert _invoke("report", out, "-q").exit_code == 0


def test_sigint_stops_after_the_cell_and_resume_completes(uninterrupted, tmp_path, monkeypatch):
    """The signal arrives during the first cell (sent by the test itself, so no timing is
    involved): that cell is saved, the run stops, and --resume finishes it identically."""
    from rgbench.bench import cells

    measure = cells.measure_cell

    def measure_then_signal(*args, **kwargs):
        row = measure(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)
        return row

    out = tmp_path / "stopped"
    monkeypatch.setattr(cells, "measure_cell", measure_then_signal)
    result = _invoke("variance", *TINY, "--out", out)
    assert result.exit_code == 130, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith(f"Interrupted (SIGINT): 1 of 4 cells saved in {out}; continue with: rgbench variance")
    assert line.endswith("--no-figures") and "--resume" in line and f"--out {out}" in line
    assert not (out / "variance.csv").exists()
    monkeypatch.setattr(cells, "measure_cell", measure)
    assert _invoke("variance", *TINY, "--out", out, "--resume").exit_code == 0
    pd.testing.assert_frame_equal(_non_timing(out), _non_timing(uninterrupted))


def test_sigterm_exits_143():
    assert store.Interrupted(signal.SIGTERM).exit_code == 143


def test_resume_refuses_other_options(uninterrupted, tmp_path):
    out = tmp_path / "other"
    shutil.copytree(uninterrupted, out)
    line = _one_error_line(_invoke("variance", *TINY[:-4], "--timing-repeats", "3", "--no-figures", "-q",
                                   "--out", out, "--resume"))
    assert "other options (timing_repeats: 2 there, 3 now)" in line
    assert "threads: 1 there, 2 now" in _one_error_line(_invoke("variance", *TINY, "--out", out, "--resume",
                                                                "--threads", "2"))


def test_force_replaces_a_finished_run(uninterrupted, tmp_path):
    out = tmp_path / "forced"
    shutil.copytree(uninterrupted, out)
    old_id = json.loads((out / "progress" / "run.json").read_text())["run_id"]
    result = _invoke("variance", *TINY[:2], "--sizes", "3", *TINY[4:], "--seed", "1", "--out", out, "--force")
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "variance.csv")
    assert set(frame["seed"]) == {1} and set(frame["n"]) == {3}
    assert len(list((out / "progress").glob("cell-*.json"))) == 2
    assert json.loads((out / "progress" / "run.json").read_text())["run_id"] != old_id


@pytest.fixture
def no_compute(monkeypatch):
    """Fail the test if the harness is reached: --out must be refused before any compute."""
    def refuse(*args, **kwargs):
        raise AssertionError("computed before checking --out")
    monkeypatch.setattr(cli, "run_variance", refuse)
    monkeypatch.setattr(cli, "run_speed", refuse)


def test_bad_out_is_refused_before_compute(uninterrupted, tmp_path, no_compute, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert "is a file, not a folder" in _one_error_line(_invoke("variance", *TINY, "--out", a_file))
    assert "already holds results; pass --resume" in _one_error_line(_invoke("variance", *TINY, "--out", uninterrupted))
    assert "already holds results" in _one_error_line(_invoke("speed", *SPEED, "--out", uninterrupted))
    assert "exclude each other" in _one_error_line(_invoke("variance", *TINY, "--out", tmp_path / "x", "--resume",
                                                           "--force"))
    monkeypatch.setattr(store.shutil, "disk_usage", lambda path: SimpleNamespace(free=2**20))
    assert "only 1.0 MiB free" in _one_error_line(_invoke("variance", *TINY, "--out", tmp_path / "full"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_is_refused_before_compute(tmp_path, no_compute):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        line = _one_error_line(_invoke("variance", *TINY, "--out", folder / "run"))
    finally:
        folder.chmod(0o700)
    assert "permission denied" in line


def test_resume_of_finished_results_without_progress_is_refused(uninterrupted, tmp_path):
    out = tmp_path / "old"
    shutil.copytree(uninterrupted, out)
    shutil.rmtree(out / "progress")
    assert "nothing to resume" in _one_error_line(_invoke("variance", *TINY, "--out", out, "--resume"))


def test_a_failed_write_leaves_the_old_files(uninterrupted, tmp_path, monkeypatch):
    """The disk fills while the results are rewritten: one-line error, old files intact,
    no temporary file left behind."""
    out = tmp_path / "full"
    shutil.copytree(uninterrupted, out)
    before = {name: (out / name).read_bytes() for name in ("variance.csv", "variance.json", "report.md")}
    results = Results.load(out, "variance")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.os, "fsync", no_space)
    with pytest.raises(store.OutputError, match="no space left on the device"):
        results.save(out)
    line = _one_error_line(_invoke("variance", *TINY, "--out", out, "--resume"))
    assert "cannot write" in line and "no space left" in line
    monkeypatch.undo()
    assert {name: (out / name).read_bytes() for name in before} == before
    assert not list(out.rglob("*.tmp"))


def test_a_csv_from_another_run_is_refused(uninterrupted, tmp_path):
    """A kill between the CSV's and the JSON's renames: the pair does not match."""
    out = tmp_path / "mixed"
    shutil.copytree(uninterrupted, out)
    frame = pd.read_csv(out / "variance.csv")
    frame["seed"] = 1
    frame.to_csv(out / "variance.csv", index=False)
    assert "does not belong to variance.json" in _one_error_line(_invoke("report", out))


def test_figures_are_written_atomically_in_their_format(uninterrupted, tmp_path):
    out = tmp_path / "figures"
    shutil.copytree(uninterrupted, out)
    result = _invoke("report", out, "-q")
    assert result.exit_code == 0, result.output
    assert (out / "figures" / "variance.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "figures" / "variance.pdf").read_bytes()[:4] == b"%PDF"
    assert not list(out.rglob("*.tmp"))


def test_unstable_timings_are_one_note(uninterrupted, tmp_path):
    out = tmp_path / "shaky"
    shutil.copytree(uninterrupted, out)
    results = Results.load(out, "variance")
    results.frame["time_lo_s"] = 0.0
    results.frame["time_hi_s"] = 10 * results.frame["time_median_s"]
    results.metadata.pop("run_id")
    shutil.rmtree(out / "progress")
    results.save(out)
    rendered = render(out, figures=False)
    timing = [w for w in rendered.warnings if "timing" in w or "ms of" in w or "var × s" in w]
    assert len(timing) == 1 and timing[0].startswith("timings unstable in 4 cell(s) (topk t-reinforce at n=3")
    assert "--threads 1" in timing[0]
    assert sum("timings unstable" in line for line in (out / "report.md").read_text().splitlines()) == 1


def test_speed_resumes_with_the_same_rows(tmp_path):
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert _invoke("speed", *SPEED, "--out", whole).exit_code == 0
    shutil.copytree(whole, part)
    rows = sorted((part / "progress").glob("operation-*.json"))
    assert len(rows) == 8 and json.loads((part / "progress" / "run.json").read_text())["total"] == 8
    for path in rows[3:6]:
        path.unlink()
    (part / "speed.json").unlink()
    assert "incomplete speed run (5 of 8 operations" in _one_error_line(_invoke("report", part))
    assert _invoke("speed", *SPEED, "--out", part, "--resume").exit_code == 0
    pd.testing.assert_frame_equal(_non_timing(part, "speed"), _non_timing(whole, "speed"))


@pytest.mark.parametrize("scale", ["inf", "-inf", "nan", "0"])
def test_scale_must_be_finite_and_positive(scale, tmp_path, no_compute):
    line = _one_error_line(_invoke("variance", *TINY, "--scale", scale, "--out", tmp_path / "x"))
    assert "--scale must be a finite positive number" in line


def test_empty_sizes_are_refused(tmp_path, no_compute):
    result = _invoke("variance", *TINY[:2], "--sizes", "3,,4", "--out", tmp_path / "x")
    assert result.exit_code == 2 and "empty value in '3,,4'" in result.output
    with pytest.raises(typer.BadParameter):
        parse_ints("3,4,", "--sizes")


def test_logits_on_the_meta_device_are_refused():
    from rgbench import distributions

    with pytest.raises(ValueError, match="TopK: logits must be on a cpu or cuda device, got device meta"):
        distributions.get("topk")(torch.zeros(4, device="meta"), k=2)


def test_an_interrupted_check_writes_nothing(tmp_path, monkeypatch):
    from rgbench.bench import check as checks

    def interrupted(*args, **kwargs):
        raise store.Interrupted(signal.SIGTERM)

    monkeypatch.setattr(checks, "run_check", interrupted)
    path = tmp_path / "baseline.json"
    result = _invoke("check", "--update", "--baseline", path, "--dists", "topk", "--sizes", "3", "-q")
    assert result.exit_code == 143 and "Interrupted (SIGTERM)" in result.output and not path.exists()


@pytest.mark.slow
def test_a_killed_process_resumes(uninterrupted, tmp_path):
    """A real process, SIGTERM once its first cell is on disk (polled, not slept), then -9."""
    out = tmp_path / "proc"
    args = [sys.executable, "-m", "rgbench.cli", "variance", *TINY[:-6], "--replicates", "20000",
            "--timing-repeats", "2", "--no-figures", "-q", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    process = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
    while not (out / "progress" / "cell-000000.json").exists() and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 143 and "Interrupted (SIGTERM)" in stderr
    process = subprocess.Popen(args + ["--resume"], env=env)
    while len(list((out / "progress").glob("cell-*.json"))) < 2 and process.poll() is None:
        time.sleep(0.05)
    process.kill()
    process.wait()
    assert subprocess.run(args + ["--resume"], env=env).returncode == 0
    assert len(pd.read_csv(out / "variance.csv")) == 4


def test_a_read_only_file_system_is_refused_before_compute(tmp_path, no_compute, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(store.tempfile, "mkstemp", read_only)
    line = _one_error_line(_invoke("variance", *TINY, "--out", tmp_path / "ro"))
    assert line == f"Error: --out {tmp_path / 'ro'}: the file system is read-only"
