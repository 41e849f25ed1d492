"""The sweep of a paper artefact: reuse matching complete runs, train the rest, in grid order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rgbench.experiments.sweep import Run, run_sweep

CALLS: list[str] = []


def _fake_train(*, value, steps, out, progress, resume):
    """A run that writes what the trainer writes for a complete run."""
    CALLS.append(out.name)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"value": value, "steps": steps}
    (out / "summary.json").write_text(json.dumps(summary))
    (out / "status.json").write_text(json.dumps({"status": "complete"}))
    return summary


def _runs(steps: int) -> list[Run]:
    return [Run(f"run{value}", {"value": value, "steps": steps}, {"steps": steps}) for value in range(3)]


def test_resume_reuses_matching_runs_and_retrains_the_rest(tmp_path: Path):
    CALLS.clear()
    seen = []
    rows = run_sweep(_runs(5), _fake_train, tmp_path, resume=False, progress=False, on_rows=seen.append)
    assert [row["value"] for row in rows] == [0, 1, 2] and CALLS == ["run0", "run1", "run2"]
    assert [len(partial) for partial in seen] == [1, 2, 3]

    CALLS.clear()
    (tmp_path / "runs" / "run1" / "status.json").write_text(json.dumps({"status": "running"}))
    rows = run_sweep(_runs(5), _fake_train, tmp_path, resume=True, progress=False)
    assert CALLS == ["run1"] and [row["value"] for row in rows] == [0, 1, 2]

    CALLS.clear()  # other settings: nothing is reusable
    rows = run_sweep(_runs(7), _fake_train, tmp_path, resume=True, progress=False)
    assert CALLS == ["run0", "run1", "run2"] and {row["steps"] for row in rows} == {7}


def test_without_resume_every_run_is_trained(tmp_path: Path):
    run_sweep(_runs(5), _fake_train, tmp_path, resume=False, progress=False)
    CALLS.clear()
    run_sweep(_runs(5), _fake_train, tmp_path, resume=False, progress=False)
    assert CALLS == ["run0", "run1", "run2"]


def test_duplicate_folders_are_refused(tmp_path: Path):
    runs = [Run("same", {"value": 0, "steps": 1}), Run("same", {"value": 1, "steps": 1})]
    with pytest.raises(ValueError, match="distinct folders"):
        run_sweep(runs, _fake_train, tmp_path, resume=False, progress=False)
