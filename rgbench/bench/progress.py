"""A run's finished units, saved one file each as soon as they are done, so a run resumes.

Layout under ``OUT/progress/``:

* ``run.json``: ``{"kind", "config", "total", "unit", "run_id", "resume"}``, the options that
  decide the numbers (the grid, the thread count; never the output options), how many
  units the run has, a random id the final results' metadata repeats, and the command
  that continues it;
* ``<unit>-<index>.json``: ``{"key": ..., "row": ...}``, one finished unit (a variance
  cell, a speed operation) by its index in the run's fixed order.

Every file is written atomically (``store.write_json``), so ``kill -9`` at any moment leaves
complete files only: ``--resume`` loads them, checks that the configuration is the one
stored, and computes the rest. A folder whose ``run.json`` has no final results with the
same ``run_id`` is incomplete (:func:`incomplete_reason`).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from rgbench.bench import store
from rgbench.bench.results import SCHEMAS, row_from_json, row_to_json

FOLDER = "progress"


def _plain(document):
    """``document`` as JSON would give it back (tuples as lists), for comparisons."""
    return json.loads(json.dumps(document))


def _differences(stored: dict, current: dict) -> str:
    keys = sorted(set(stored) | set(current))
    changed = [f"{key}: {stored.get(key)!r} there, {current.get(key)!r} now" for key in keys
               if stored.get(key) != current.get(key)]
    return "; ".join(changed[:3]) + (f" (and {len(changed) - 3} more)" if len(changed) > 3 else "")


class CellStore:
    """The finished units of one run in ``OUT/progress`` (module docstring).

    Open it with :meth:`open` before any compute; :meth:`get` gives a saved row (None when
    not done), :meth:`put` saves one the moment it is finished.
    """

    def __init__(self, out: Path, kind: str, unit: str, total: int, run_id: str, done: dict[int, dict]):
        self.out, self.kind, self.unit, self.total, self.run_id = out, kind, unit, total, run_id
        self._done = done

    @property
    def folder(self) -> Path:
        return self.out / FOLDER

    @classmethod
    def open(cls, out: str | Path, kind: str, config: dict, *, total: int, unit: str, resume: bool,
             resume_command: str = "") -> "CellStore":
        """Start a run's progress (clearing a previous run's) or, with ``resume``, continue it.

        Raises ``store.OutputError`` when ``resume`` meets another configuration, another
        kind of run, or final results with no progress to continue.
        """
        out = Path(out)
        folder = out / FOLDER
        run_path = folder / "run.json"
        config = _plain(config)
        if resume and run_path.is_file():
            stored = store.read_json(run_path)
            if stored.get("kind") != kind:
                raise store.OutputError(f"--resume: {out} holds a `rgbench {stored.get('kind')}` run, not {kind}; "
                                        "use another --out or --force to replace it")
            if stored.get("config") != config:
                raise store.OutputError(f"--resume: {out} was started with other options ("
                                        f"{_differences(stored.get('config', {}), config)}); rerun with those "
                                        "options, or pass --force to replace it")
            return cls(out, kind, unit, total, stored["run_id"], cls._load(folder, unit, total))
        if resume and any((out / f"{kind}{suffix}").is_file() for suffix in (".csv", ".json")):
            raise store.OutputError(f"--resume: {out} holds finished results without progress/run.json; "
                                    "nothing to resume (pass --force to recompute them)")
        folder.mkdir(parents=True, exist_ok=True)
        for stale in [*folder.glob(f"{unit}-*.json"), run_path]:  # a previous run's units
            stale.unlink(missing_ok=True)
        run_id = uuid.uuid4().hex
        store.write_json(run_path, {"kind": kind, "config": config, "total": total, "unit": unit,
                                    "run_id": run_id, "resume": resume_command})
        return cls(out, kind, unit, total, run_id, {})

    @staticmethod
    def _load(folder: Path, unit: str, total: int) -> dict[int, dict]:
        done = {}
        for path in folder.glob(f"{unit}-*.json"):
            index = int(path.stem.rsplit("-", 1)[1])
            if index < total:
                done[index] = store.read_json(path)
        return done

    def __len__(self) -> int:
        return len(self._done)

    def get(self, index: int, key: dict) -> dict | None:
        """The saved row of unit ``index``, or None when not done (or saved for another key)."""
        saved = self._done.get(index)
        if saved is None or saved.get("key") != _plain(key):
            return None
        return row_from_json(saved["row"], SCHEMAS[self.kind])

    def put(self, index: int, key: dict, row: dict) -> dict:
        """Save a finished unit atomically; the row as :meth:`get` will give it back, so a
        resumed run and an uninterrupted one hold identical values."""
        document = _plain({"key": key, "row": row_to_json(row)})
        store.write_json(self.folder / f"{self.unit}-{index:06d}.json", document)
        self._done[index] = document
        return row_from_json(document["row"], SCHEMAS[self.kind])


def incomplete_reason(out: str | Path) -> str | None:
    """Why ``out`` holds an unfinished run (progress without its final results), or None."""
    out = Path(out)
    run_path = out / FOLDER / "run.json"
    if not run_path.is_file():
        return None
    run = store.read_json(run_path)
    kind = run.get("kind", "")
    final = out / f"{kind}.json"
    if final.is_file():
        try:
            if store.read_json(final).get("metadata", {}).get("run_id") == run.get("run_id"):
                return None
        except store.OutputError:
            pass
    saved = len(list((out / FOLDER).glob(f"{run.get('unit', 'cell')}-*.json")))
    command = run.get("resume") or f"rgbench {kind} ... --resume"
    return (f"{out} holds an incomplete {kind} run ({saved} of {run.get('total', '?')} {run.get('unit', 'cell')}s "
            f"saved, no final results); continue it with: {command}")
