"""Saved results stay readable: folders written by older rgbench (format 1, before the
``format`` field), files missing a column or carrying an unknown one, and a refusal of a
format newer than the reader."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from rgbench.bench import Results
from rgbench.bench.results import FORMAT, LEGACY_FORMAT, SPEED_SCHEMA, VARIANCE_SCHEMA, FormatError
from rgbench.cli import app
from rgbench.reports import render

DATA = Path(__file__).parent / "data"


def _copy(name: str, tmp_path: Path) -> Path:
    folder = tmp_path / name
    shutil.copytree(DATA / name, folder)
    return folder


@pytest.mark.parametrize("name, kind", [("variance-v1", "variance"), ("speed-v1", "speed")])
def test_format_1_folders_load_and_render(name, kind, tmp_path):
    from typer.testing import CliRunner

    folder = _copy(name, tmp_path)
    results = Results.load(folder, kind)
    assert results.format == LEGACY_FORMAT and not results.extra_columns
    assert list(results.frame.columns)[: len(VARIANCE_SCHEMA if kind == "variance" else SPEED_SCHEMA)] == list(
        VARIANCE_SCHEMA if kind == "variance" else SPEED_SCHEMA)
    outcome = CliRunner().invoke(app, ["report", str(folder)])
    assert outcome.exit_code == 0, outcome.output
    report = (folder / "report.md").read_text()
    assert f"results format: {LEGACY_FORMAT}" in report
    assert (folder / "figures").is_dir()
    tables = (folder / ("tables.md" if kind == "variance" else "speed_tables.md")).read_text()
    assert "topk" in tables and ("t-loo" in tables if kind == "variance" else "sample" in tables)


def test_format_1_numbers_survive_a_resave(tmp_path):
    folder = _copy("variance-v1", tmp_path)
    results = Results.load(folder, "variance")
    results.save(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "variance.json").read_text())["format"] == FORMAT
    again = Results.load(tmp_path / "again", "variance")
    assert again.format == FORMAT
    pd.testing.assert_frame_equal(again.frame, results.frame)
    original = pd.read_csv(DATA / "variance-v1" / "variance.csv", keep_default_na=False, na_values=[""])
    assert again.frame["total_var"].tolist() == original["total_var"].tolist()


def _rewrite(folder: Path, kind: str, change) -> None:
    """Apply ``change`` to the saved CSV frame and keep the JSON's checksum in step."""
    import hashlib

    csv_path, json_path = folder / f"{kind}.csv", folder / f"{kind}.json"
    frame = change(pd.read_csv(csv_path, keep_default_na=False, na_values=[""]))
    text = frame.to_csv(index=False)
    csv_path.write_text(text)
    document = json.loads(json_path.read_text())
    document["metadata"]["csv_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    json_path.write_text(json.dumps(document))


def test_missing_and_unknown_columns_load(tmp_path):
    folder = _copy("variance-v1", tmp_path)

    dropped = ["snr", "snr_lo", "reason", "num_tests", "replicates", "unbiased"]
    written = set(pd.read_csv(folder / "variance.csv", nrows=0).columns)  # format 1 lacks later columns

    def change(frame):
        frame = frame.drop(columns=dropped)
        frame["future_stat"] = [0.01, 0.02]  # a statistic this reader does not know
        return frame

    _rewrite(folder, "variance", change)
    results = Results.load(folder, "variance")
    frame = results.frame
    assert set(dropped) <= set(results.missing_columns)
    assert results.missing_columns == tuple(c for c in VARIANCE_SCHEMA if c in dropped or c not in written)
    assert results.extra_columns == ("future_stat",)
    assert list(frame.columns) == [*VARIANCE_SCHEMA, "future_stat"]  # known first, extras after
    assert frame["snr"].isna().all() and frame["snr_hi"].notna().all()
    assert (frame["reason"] == "").all() and frame["num_tests"].isna().all()
    assert frame["replicates"].isna().all() and frame["unbiased"].isna().all()
    assert frame["future_stat"].tolist() == [0.01, 0.02]
    rendered = render(folder, figures=False)
    report = (folder / "report.md").read_text()
    assert "snr_lo" in report and "future_stat" in report
    assert rendered.paths
    # The extra column survives a save and a load.
    results.save(tmp_path / "again")
    assert Results.load(tmp_path / "again", "variance").frame["future_stat"].tolist() == [0.01, 0.02]


def test_a_newer_format_is_refused_in_one_line(tmp_path):
    from typer.testing import CliRunner

    folder = _copy("speed-v1", tmp_path)
    path = folder / "speed.json"
    document = json.loads(path.read_text())
    document["format"] = "rgbench-results/3"
    path.write_text(json.dumps(document))
    with pytest.raises(FormatError, match="newer than this rgbench reads"):
        Results.load(folder, "speed")
    outcome = CliRunner().invoke(app, ["report", str(folder)])
    assert outcome.exit_code != 0
    assert "rgbench-results/3" in outcome.output and "Traceback" not in outcome.output
    # A minor version of the current major reads.
    document["format"] = f"{FORMAT}.1"
    path.write_text(json.dumps(document))
    assert Results.load(folder, "speed").format == f"{FORMAT}.1"
    document["format"] = "something-else/1"
    path.write_text(json.dumps(document))
    with pytest.raises(FormatError, match="unknown results format"):
        Results.load(folder, "speed")




def test_every_column_is_documented():
    import re

    from rgbench.bench.results import SPEED_TIMING_COLUMNS, VARIANCE_TIMING_COLUMNS

    text = (Path(__file__).parents[2] / "docs" / "results.md").read_text()
    for kind, schema, timing in (("variance", VARIANCE_SCHEMA, VARIANCE_TIMING_COLUMNS),
                                 ("speed", SPEED_SCHEMA, SPEED_TIMING_COLUMNS)):
        section = text.split(f"## `{kind}` columns")[1].split("\n## ")[0]
        rows = {name: line for line in section.splitlines() if line.startswith("| `")
                for name in re.findall(r"`([A-Za-z0-9_]+)`", line.split("|")[1])}
        assert set(rows) == set(schema), (kind, set(schema) ^ set(rows))
        for column, kind_name in schema.items():
            assert f"| {kind_name} |" in rows[column], column
            assert ("*timing*" in rows[column]) == (column in timing), column
