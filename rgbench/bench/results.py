"""Tidy result tables, their schema, their metadata, and how they are saved and loaded.

A run's results are one pandas DataFrame with one row per cell (``variance``) or per
timed operation (``speed``), saved as ``<kind>.csv`` (the data) and ``<kind>.json``
(``{"format": "rgbench-results/2", "metadata": ..., "schema": ..., "rows": [...]}``).
Every column is documented in ``docs/results.md``.

The files are versioned by ``format`` (``rgbench-results/<major>``; a JSON without it is
format 1, what rgbench wrote before the field existed). Readers load every major version up
to :data:`FORMAT_MAJOR`: a known column a file lacks (a statistic added since) is filled with
its type's missing value (NaN, "" or NA) and listed in ``Results.missing_columns``, and a
column the schema does not know (one added by a newer minor version, or by a user) is kept,
after the known ones. A newer major version is refused in one line. Metadata records what is needed to
reproduce and judge a number: rgbench and torch versions, Python, platform, device name,
thread count, seed, command line, date (UTC), the run's configuration and, per statistic,
how its interval was computed. Floats are written in round-trip precision so
``load(save(r))`` gives identical values and the reports re-render byte for byte.
"""

from __future__ import annotations

import hashlib
import math
import platform
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

import rgbench
from rgbench.bench import store
from rgbench.bench.statistics import METHODS

#: statuses of a measured variance row: ``biased`` is an unbiased estimator whose bias
#: interval excludes 0 (its statistics are kept and shown, flagged)
MEASURED = ("ok", "biased")

#: column -> type ("str", "int", "float", "bool", or "Int64" for an int that skipped rows lack)
VARIANCE_SCHEMA: dict[str, str] = {
    "dist": "str",
    "n": "int",
    "task": "str",
    "estimator": "str",
    "K": "int",
    "device": "str",
    "dtype": "str",
    "seed": "int",
    "cell_seed": "int",
    "status": "str",
    "reason": "str",
    "unbiased": "bool",
    "replicates": "int",
    "level": "float",
    "reference": "str",
    "reference_samples": "int",
    "reference_norm": "float",
    "objective_mean": "float",
    "num_coords": "int",
    "num_free_coords": "int",
    "num_tests": "Int64",
    "bias": "float",
    "bias_lo": "float",
    "bias_hi": "float",
    "bias_z": "float",
    "num_fixed_biased": "Int64",
    "bias_flag_lo": "float",
    "bias_flag_hi": "float",
    "total_var": "float",
    "total_var_se": "float",
    "total_var_lo": "float",
    "total_var_hi": "float",
    "coord_var": "float",
    "coord_var_lo": "float",
    "coord_var_hi": "float",
    "snr": "float",
    "snr_lo": "float",
    "snr_hi": "float",
    "cosine": "float",
    "cosine_lo": "float",
    "cosine_hi": "float",
    "time_median_s": "float",
    "time_q25_s": "float",
    "time_q75_s": "float",
    "time_lo_s": "float",
    "time_hi_s": "float",
    "work_var": "float",
    "work_var_lo": "float",
    "work_var_hi": "float",
    "peak_memory_mb": "float",
    "warmup_s": "float",
    "reference_s": "float",
    "cell_s": "float",
}

#: columns that depend on the clock (or the allocator) and so differ between identical runs
VARIANCE_TIMING_COLUMNS = (
    "time_median_s",
    "time_q25_s",
    "time_q75_s",
    "time_lo_s",
    "time_hi_s",
    "work_var",
    "work_var_lo",
    "work_var_hi",
    "peak_memory_mb",
    "warmup_s",
    "reference_s",
    "cell_s",
)

SPEED_SCHEMA: dict[str, str] = {
    "dist": "str",
    "n": "int",
    "batch": "int",
    "operation": "str",
    "K": "int",
    "task": "str",
    "device": "str",
    "dtype": "str",
    "seed": "int",
    "status": "str",
    "reason": "str",
    "repeats": "int",
    "time_median_s": "float",
    "time_q25_s": "float",
    "time_q75_s": "float",
    "time_lo_s": "float",
    "time_hi_s": "float",
    "per_instance_us": "float",
    "peak_memory_mb": "float",
}

SPEED_TIMING_COLUMNS = (
    "time_median_s",
    "time_q25_s",
    "time_q75_s",
    "time_lo_s",
    "time_hi_s",
    "per_instance_us",
    "peak_memory_mb",
)

SCHEMAS = {"variance": VARIANCE_SCHEMA, "speed": SPEED_SCHEMA}

#: the name of the results format; its major version changes only when a reader of the
#: previous one would misread the files (a column's meaning or unit changes, one is renamed)
FORMAT_NAME = "rgbench-results"
FORMAT_MAJOR = 2
FORMAT = f"{FORMAT_NAME}/{FORMAT_MAJOR}"
#: what a results JSON without a ``format`` field is: written before the field existed
LEGACY_FORMAT = f"{FORMAT_NAME}/1"


class FormatError(store.OutputError):
    """Results in a format this rgbench cannot read (a newer major version, or not results)."""


def format_major(name: str, path: str | Path = "results") -> int:
    """The major version of a format name like ``rgbench-results/2`` (or ``/2.1``)."""
    prefix, _, version = str(name).partition("/")
    major = version.split(".")[0]
    if prefix != FORMAT_NAME or not major.isdigit():
        raise FormatError(f"{path}: unknown results format {name!r} (expected {FORMAT_NAME}/<version>)")
    if int(major) > FORMAT_MAJOR:
        raise FormatError(f"{path} is in format {name}, newer than this rgbench reads ({FORMAT}); "
                          "upgrade rgbench to read it")
    return int(major)
TIMING_COLUMNS = {"variance": VARIANCE_TIMING_COLUMNS, "speed": SPEED_TIMING_COLUMNS}
_DTYPES = {"str": str, "int": "int64", "float": "float64", "bool": bool, "Int64": "Int64"}


def missing_columns(frame: pd.DataFrame, schema: dict[str, str]) -> list[str]:
    """The columns of ``schema`` that ``frame`` lacks, in the schema's order."""
    return [column for column in schema if column not in frame.columns]


def apply_schema(frame: pd.DataFrame, schema: dict[str, str]) -> pd.DataFrame:
    """The columns of ``schema`` in its order and types, then any other columns as they are.

    A schema column the frame lacks (results written before it existed) is filled with its
    type's missing value: NaN for floats, "" for strings, NA for ints and bools (whose
    columns then become the nullable ``Int64`` / ``boolean``). Extra columns are kept after
    the known ones, unchanged, so a statistic added by a newer rgbench survives a re-save.
    """
    out = frame.copy()
    for column in missing_columns(frame, schema):
        out[column] = "" if schema[column] == "str" else (float("nan") if schema[column] == "float" else pd.NA)
    extra = [column for column in frame.columns if column not in schema]
    out = out[list(schema) + extra]
    for column, kind in schema.items():
        if kind == "str":
            values = out[column].astype(object)
            out[column] = values.where(values.notna(), "").astype(str)
        elif kind == "bool":
            values = out[column]
            if values.dtype == object:
                values = values.map(lambda v: v if v is pd.NA or v is None else
                                    (str(v) == "True" if isinstance(v, str) else bool(v)))
            out[column] = values.astype("boolean") if values.isna().any() else values.astype(bool)
        elif kind == "int" and out[column].isna().any():
            out[column] = out[column].astype("Int64")
        else:
            out[column] = out[column].astype(_DTYPES[kind])
    return out


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def make_metadata(kind: str, config: dict, device: str, seed: int, command: str | None = None) -> dict:
    """Everything needed to reproduce and judge the numbers of a run."""
    return {
        "kind": kind,
        "rgbench_version": rgbench.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "seed": seed,
        "command": command if command is not None else " ".join(sys.argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "intervals": {"level": 0.95, **METHODS} if kind == "variance" else {"time": METHODS["time"]},
        "timing_columns": list(TIMING_COLUMNS[kind]),
    }


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if hasattr(value, "item"):  # numpy / pandas scalars
        return _jsonable(value.item())
    if value is pd.NA:
        return None
    return value


@dataclass
class Results:
    """A tidy frame of one kind (``variance`` or ``speed``) and its metadata."""

    kind: str
    frame: pd.DataFrame
    metadata: dict
    #: the format the results were read in (``FORMAT`` for results made in this process)
    format: str = FORMAT
    #: known columns the source lacked, filled with missing values (set from the frame)
    missing_columns: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in SCHEMAS:
            raise ValueError(f"Results: kind must be one of {sorted(SCHEMAS)}, got {self.kind!r}")
        self.missing_columns = tuple(missing_columns(self.frame, SCHEMAS[self.kind]))
        self.frame = apply_schema(self.frame, SCHEMAS[self.kind])

    @property
    def extra_columns(self) -> tuple[str, ...]:
        """Columns kept from the source that the schema does not know."""
        return tuple(column for column in self.frame.columns if column not in SCHEMAS[self.kind])

    @property
    def timing_columns(self) -> tuple[str, ...]:
        return TIMING_COLUMNS[self.kind]

    def save(self, out_dir: str | Path) -> list[Path]:
        """Write ``<kind>.csv`` and ``<kind>.json`` under ``out_dir`` (created if needed).

        Each file is written atomically (``store.atomic_write``); the JSON records the CSV's
        SHA-256, so a kill between the two renames leaves a pair :meth:`load` refuses
        instead of numbers under another run's metadata. An OSError is an ``OutputError``.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        csv_path, json_path = out / f"{self.kind}.csv", out / f"{self.kind}.json"
        text = self.frame.to_csv(index=False, float_format=None)
        rows = [row_to_json(row) for row in self.frame.to_dict("records")]
        metadata = {**self.metadata, "csv_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
        document = {"format": FORMAT, "metadata": metadata, "schema": SCHEMAS[self.kind], "rows": rows}
        store.write_text(csv_path, text)
        store.write_json(json_path, document)
        return [csv_path, json_path]

    @classmethod
    def load(cls, out_dir: str | Path, kind: str) -> "Results":
        """Read what :meth:`save` wrote (the CSV is the data, the JSON the metadata), in
        any format up to :data:`FORMAT_MAJOR`; a newer one is a :class:`FormatError`."""
        out = Path(out_dir)
        csv_path, json_path = out / f"{kind}.csv", out / f"{kind}.json"
        for path in (csv_path, json_path):
            if not path.is_file():
                raise FileNotFoundError(f"no saved {kind} results: {path} does not exist")
        document = store.read_json(json_path)
        if not isinstance(document, dict) or not isinstance(document.get("metadata"), dict):
            raise FormatError(f"{json_path} is not rgbench results (no metadata)")
        version = document.get("format", LEGACY_FORMAT)
        format_major(version, json_path)
        metadata = document["metadata"]
        digest = metadata.get("csv_sha256")
        if digest is not None and hashlib.sha256(csv_path.read_bytes()).hexdigest() != digest:
            raise store.OutputError(f"{csv_path} does not belong to {json_path.name} (a run was stopped while "
                                    "saving); rerun the command with --resume to write both again")
        try:
            frame = pd.read_csv(csv_path, keep_default_na=False, na_values=[""])
        except (pd.errors.EmptyDataError, pd.errors.ParserError) as error:
            raise store.OutputError(f"cannot read {csv_path}: {error}") from error
        return cls(kind, frame, metadata, format=version)


def row_to_json(row: dict) -> dict:
    """A result row as JSON values (NaN and NA as null, infinities as "inf" / "-inf")."""
    return {key: _jsonable(value) for key, value in row.items()}


def row_from_json(row: dict, schema: dict[str, str]) -> dict:
    """The inverse of :func:`row_to_json` for the columns of ``schema``."""
    out = dict(row)
    for column, kind in schema.items():
        value = out.get(column)
        if kind == "float":
            out[column] = float("nan") if value is None else float(value)
        elif kind == "Int64" and value is None:
            out[column] = pd.NA
    return out


def saved_kinds(out_dir: str | Path) -> list[str]:
    """The result kinds saved under ``out_dir``, in a fixed order."""
    return [kind for kind in SCHEMAS if (Path(out_dir) / f"{kind}.csv").is_file()]
