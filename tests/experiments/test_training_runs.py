"""Training runs that survive interruption: checkpoints, --resume, --force, atomic files.

A resumed run must give the uninterrupted run's numbers exactly (same device): every column
but the clock's (``trainer.CLOCK_COLUMNS``). Interruptions are injected at a chosen step
through ``store.check_stop`` (deterministic), and once through a real SIGINT.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from rgbench.cli import app
from rgbench.distributions import get
from rgbench.estimators import exact_gradient
from rgbench.bench import store
from rgbench.experiments.trainer import CLOCK_COLUMNS
from rgbench.experiments.listops.data import ListOpsSettings, load_or_generate


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def stop_at(monkeypatch):
    """stop_at(k): the k-th safe point of the next command raises SIGINT's Interrupted."""

    def arm(k):
        calls = []

        def check_stop():
            calls.append(1)
            if len(calls) == k:
                raise store.Interrupted(signal.SIGINT)

        monkeypatch.setattr(store, "check_stop", check_stop)
        return lambda: monkeypatch.setattr(store, "check_stop", lambda: None)

    return arm


def _without_clock(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=[c for c in CLOCK_COLUMNS if c in frame.columns])


def _listops(out, cache, *extra):
    return _invoke("train", "listops", "--estimator", "t-loo", "--scale", "smoke", "--steps", 7,
                   "--out", out, "--cache", cache, "--quiet", *extra)


@pytest.mark.parametrize("stop", [3, 4])  # mid-interval (after step 2's evaluation) and right after step 3
def test_listops_resumed_after_an_interruption_equals_an_uninterrupted_run(tmp_path, stop_at, stop):
    cache = tmp_path / "cache"
    assert _listops(tmp_path / "full", cache).exit_code == 0
    disarm = stop_at(stop)
    interrupted = _listops(tmp_path / "cut", cache)
    disarm()
    assert interrupted.exit_code == 130
    assert "Interrupted (SIGINT)" in interrupted.output and "--resume" in interrupted.output
    assert json.loads((tmp_path / "cut" / "status.json").read_text())["status"] == "interrupted"
    assert (tmp_path / "cut" / "checkpoint.pt").is_file() and not (tmp_path / "cut" / "metrics.csv").exists()
    resumed = _listops(tmp_path / "cut", cache, "--resume")
    assert resumed.exit_code == 0, resumed.output
    full, cut = (pd.read_csv(tmp_path / d / "metrics.csv") for d in ("full", "cut"))
    pd.testing.assert_frame_equal(_without_clock(full), _without_clock(cut))
    summaries = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("full", "cut")]
    for summary in summaries:
        for key in CLOCK_COLUMNS:
            summary.pop(key, None)
    assert summaries[0] == summaries[1]
    assert not (tmp_path / "cut" / "checkpoint.pt").exists()  # the finished files replace it


def test_a_relax_critic_resumes_exactly(tmp_path, stop_at):
    args = ["optimize", "--dist", "matching", "--estimators", "relax", "--scale", "smoke", "--steps", 6, "--quiet"]
    assert _invoke(*args, "--out", tmp_path / "full").exit_code == 0
    disarm = stop_at(4)
    assert _invoke(*args, "--out", tmp_path / "cut").exit_code == 130
    disarm()
    assert _invoke(*args, "--out", tmp_path / "cut", "--resume").exit_code == 0
    full, cut = (pd.read_csv(tmp_path / d / "toy_curves.csv") for d in ("full", "cut"))
    pd.testing.assert_frame_equal(_without_clock(full), _without_clock(cut))
    table = [pd.read_csv(tmp_path / d / "toy_table.csv").drop(columns="wall_s") for d in ("full", "cut")]
    pd.testing.assert_frame_equal(*table)


def test_table_resumes_the_interrupted_run_and_reuses_the_finished_one(tmp_path, stop_at):
    args = ["table", "--paper", 3, "--scale", "smoke", "--seeds", 2, "--estimators", "t-loo", "--steps", 4,
            "--cache", tmp_path / "cache", "--quiet"]
    assert _invoke(*args, "--out", tmp_path / "full").exit_code == 0
    disarm = stop_at(6)  # seed 1's second step
    assert _invoke(*args, "--out", tmp_path / "cut").exit_code == 130
    disarm()
    first = tmp_path / "cut" / "runs" / "t-loo-seed0" / "summary.json"
    stamp = first.stat().st_mtime_ns
    assert len(pd.read_csv(tmp_path / "cut" / "table3_runs.csv")) == 1  # written as soon as a run ends
    assert _invoke(*args, "--out", tmp_path / "cut", "--resume").exit_code == 0
    assert first.stat().st_mtime_ns == stamp
    full, cut = (pd.read_csv(tmp_path / d / "table3_runs.csv") for d in ("full", "cut"))
    pd.testing.assert_frame_equal(_without_clock(full), _without_clock(cut))


def test_out_is_checked_before_training(tmp_path):
    (tmp_path / "file").write_text("x")
    result = _listops(tmp_path / "file", tmp_path / "cache")
    assert result.exit_code == 1 and "is a file" in result.output
    assert not (tmp_path / "cache").exists()  # refused before the data was made
    assert _listops(tmp_path / "run", tmp_path / "cache").exit_code == 0
    before = (tmp_path / "run" / "summary.json").read_text()
    refused = _listops(tmp_path / "run", tmp_path / "cache")
    assert refused.exit_code == 1 and "--resume" in refused.output and "--force" in refused.output
    assert (tmp_path / "run" / "summary.json").read_text() == before  # nothing lost
    assert _listops(tmp_path / "run", tmp_path / "cache", "--resume").exit_code == 0  # complete: returned as saved
    assert (tmp_path / "run" / "summary.json").read_text() == before
    changed = _invoke("train", "listops", "--estimator", "t-loo", "--scale", "smoke", "--steps", 5, "--out",
                      tmp_path / "run", "--cache", tmp_path / "cache", "--quiet", "--resume")
    assert changed.exit_code == 1 and "other settings" in changed.output


def test_a_real_sigint_leaves_a_checkpoint_that_resumes(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    command = [sys.executable, "-m", "rgbench.cli", "train", "listops", "--estimator", "t-loo", "--scale",
               "smoke", "--steps", "100000", "--out", str(out), "--cache", str(cache), "--quiet"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists():  # the first evaluation's checkpoint
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("Interrupted (SIGINT)") and "--resume" in lines[-1]
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "interrupted" and status["step"] >= 2
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == status["step"]


def test_a_corrupt_listops_cache_is_regenerated_with_a_note(tmp_path, capsys):
    settings = ListOpsSettings(num_train=20, num_valid=5, num_test=5, max_length=12, depths=(1, 2))
    data = load_or_generate(settings, tmp_path)
    (path,) = tmp_path.glob("listops-*.pt")
    path.write_bytes(path.read_bytes()[:100])  # truncated
    again = load_or_generate(settings, tmp_path)
    assert "unreadable" in capsys.readouterr().err
    assert torch.equal(again.train.tokens, data.train.tokens)
    assert torch.equal(load_or_generate(settings, tmp_path).test.labels, data.test.labels)  # rewritten whole


def test_exact_gradient_of_an_empty_batch_is_empty():
    logits = torch.zeros(2, 0, 4, requires_grad=True)
    value, grad = exact_gradient(get("topk")(logits, k=2), lambda ind: ind.sum(-1))
    assert value.shape == (2, 0) and grad.shape == (2, 0, 4)
