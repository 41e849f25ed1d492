"""Result files shared by the experiments: atomic CSVs and the "is this run complete" test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from rgbench.bench import store


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    store.atomic_write(path, lambda temporary: frame.to_csv(temporary, index=False))


def run_is_complete(run_dir: Path) -> dict[str, Any] | None:
    """The summary of the complete run in ``run_dir``, else None (a run killed with -9 still
    says ``running``: it is not complete, and ``--resume`` continues it)."""
    status, summary = run_dir / "status.json", run_dir / "summary.json"
    if status.exists() and summary.exists() and store.read_json(status).get("status") == "complete":
        return store.read_json(summary)
    return None
