"""Loaders for public data sets (SKAB, AI4I 2020) and for any time-series CSV, JSON-lines or Parquet file."""
from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from features.tables import read_table, timestamps_to_epoch

SKAB_SENSORS: tuple[str, ...] = (
    "Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature", "Thermocouple", "Voltage",
    "Volume Flow RateRMS",
)
AI4I_COLUMNS: tuple[str, ...] = (
    "udi", "product_id", "type", "air_temperature_k", "process_temperature_k", "rotational_speed_rpm", "torque_nm",
    "tool_wear_min", "machine_failure", "twf", "hdf", "pwf", "osf", "rnf",
)
TIMESTAMP_NAMES = frozenset({"timestamp", "datetime", "date", "time", "ts"})
LABEL_NAMES = frozenset({"anomaly", "anomalies", "changepoint", "label", "labels", "is_anomaly", "target"})
ROW_INDEX_COLUMN = "row_index"


@dataclasses.dataclass
class SkabRun:
    """One SKAB experiment: name like "valve1/0"; frame with ts (epoch s), the SKAB sensors and label (0/1)."""

    name: str
    frame: pd.DataFrame


def _snake_case(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


def _skab_files(path: Path) -> tuple[Path, list[Path]]:
    if path.is_dir():
        files = sorted(path.rglob("*.csv"))
        if not files:
            raise ValueError(f"no .csv files under {path}")
        return path, files
    if path.is_file():
        return path.parent.parent, [path]
    raise FileNotFoundError(f"no SKAB data at {path}")


def _skab_run(file: Path, root: Path) -> SkabRun:
    raw = pd.read_csv(file, sep=";")
    missing = [c for c in ("datetime", *SKAB_SENSORS) if c not in raw.columns]
    if missing:
        raise ValueError(f"{file} is not a SKAB file: missing columns {missing}")
    frame = pd.DataFrame({"ts": timestamps_to_epoch(raw["datetime"])})
    frame[list(SKAB_SENSORS)] = raw[list(SKAB_SENSORS)].to_numpy(dtype=np.float64)
    frame["label"] = raw["anomaly"].fillna(0).astype(np.int64) if "anomaly" in raw.columns else 0
    return SkabRun(name=file.relative_to(root).with_suffix("").as_posix(), frame=frame)


def load_skab(path: str | Path) -> list[SkabRun]:
    """SKAB runs from a data folder (all *.csv below it) or a single csv, sorted by name."""
    root, files = _skab_files(Path(path))
    return sorted((_skab_run(f, root) for f in files), key=lambda run: run.name)


def _ai4i_file(path: Path) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        candidates = sorted(path.glob("ai4i*.csv")) or sorted(path.glob("*.csv"))
        if len(candidates) == 1:
            return candidates[0]
        raise ValueError(f"expected one AI4I csv in {path}, found {[c.name for c in candidates]}")
    raise FileNotFoundError(f"no AI4I data at {path}")


def load_ai4i(path: str | Path) -> pd.DataFrame:
    """The AI4I 2020 predictive-maintenance table (a csv or its folder), columns in snake_case."""
    frame = pd.read_csv(_ai4i_file(Path(path)), encoding="utf-8-sig")
    frame.columns = [_snake_case(c) for c in frame.columns]
    missing = [c for c in AI4I_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} is not the AI4I 2020 table: missing columns {missing}")
    return frame


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _parses_as_datetimes(series: pd.Series) -> bool:
    if pd.api.types.is_datetime64_any_dtype(series):
        return True
    if _is_numeric(series) or pd.api.types.is_bool_dtype(series) or series.dropna().empty:
        return False
    try:
        timestamps_to_epoch(series)
    except ValueError:
        return False
    return pd.to_numeric(series, errors="coerce").isna().all()


def _find_timestamp_column(frame: pd.DataFrame) -> str | None:
    for column in frame.columns:
        name = _snake_case(str(column))
        if name in TIMESTAMP_NAMES or any(token in TIMESTAMP_NAMES for token in name.split("_")):
            return column
    return next((column for column in frame.columns if _parses_as_datetimes(frame[column])), None)


def read_time_series(path: str | Path, timestamp_column: str | None = None,
                     value_columns: list[str] | None = None) -> tuple[pd.DataFrame, str, list[str]]:
    """Read a CSV (separator auto-detected), JSON-lines or Parquet time series (``features.tables.read_table``);
    returns (frame, timestamp column, value columns).

    Without a timestamp column given, the first column named like a timestamp, else the first column holding
    datetimes, is used; failing both, a ``row_index`` column (seconds since the first row) is added. Without value
    columns given, all numeric columns except the timestamp and label columns (anomaly, changepoint, ...) are used.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path}")
    frame = read_table(path)
    if timestamp_column is not None:
        if timestamp_column not in frame.columns:
            columns = list(frame.columns)
            raise ValueError(f"timestamp column {timestamp_column!r} not in {path.name}; columns: {columns}")
        timestamps_to_epoch(frame[timestamp_column])
    else:
        timestamp_column = _find_timestamp_column(frame)
        if timestamp_column is None:
            timestamp_column = ROW_INDEX_COLUMN
            while timestamp_column in frame.columns:
                timestamp_column = f"_{timestamp_column}"
            frame[timestamp_column] = np.arange(len(frame), dtype=np.float64)
    if value_columns is not None:
        for column in value_columns:
            if column not in frame.columns:
                raise ValueError(f"value column {column!r} not in {path.name}; columns: {list(frame.columns)}")
            if not _is_numeric(frame[column]):
                raise ValueError(f"value column {column!r} is not numeric (dtype {frame[column].dtype})")
        return frame, timestamp_column, list(value_columns)
    values = [
        column for column in frame.columns
        if column != timestamp_column and _snake_case(str(column)) not in LABEL_NAMES and _is_numeric(frame[column])
    ]
    if not values:
        raise ValueError(f"no numeric value columns in {path.name} besides {timestamp_column!r}")
    return frame, timestamp_column, values


LOG = logging.getLogger(__name__)
LABEL_COLUMN_PREFERENCE: tuple[str, ...] = ("anomaly", "label", "is_anomaly", "labels", "anomalies", "target")


@dataclasses.dataclass
class LabelledSeries:
    """One labelled time series, rows in time order: ``times`` epoch seconds (float64, ascending), ``values``
    (rows, sensors) float64 in ``sensors`` order, ``labels`` (rows,) int8 0/1."""

    name: str
    times: np.ndarray
    values: np.ndarray
    sensors: tuple[str, ...]
    labels: np.ndarray


def read_labelled_series(path: str | Path, timestamp_column: str | None = None, label_column: str | None = None,
                         value_columns: list[str] | None = None) -> list[LabelledSeries]:
    """Labelled series from one file (any ``read_time_series`` reads; named by its stem) or a folder (every *.csv
    below it, sorted; named by relative path without suffix, e.g. "valve1/0").

    The label column is ``label_column``, else the first of ``LABEL_COLUMN_PREFERENCE`` (snake_case names) present;
    it must hold only 0 and 1 (a NaN is an error). Timestamps and value columns are found as ``read_time_series``
    finds them, the label column never among the values. Rows are sorted by time (stable). A file without a label
    column raises ValueError, except in a folder, where it is skipped with a warning (SKAB's anomaly-free.csv) as
    long as some other file has labels.
    """
    path = Path(path)
    folder = path.is_dir()
    files = sorted(path.rglob("*.csv")) if folder else [path]
    if folder and not files:
        raise ValueError(f"no .csv files under {path}")
    wanted = repr(label_column) if label_column is not None else f"one of {list(LABEL_COLUMN_PREFERENCE)}"
    series: list[LabelledSeries] = []
    for file in files:
        frame, time_column, values = read_time_series(file, timestamp_column, value_columns)
        by_name = {_snake_case(str(c)): c for c in reversed(frame.columns)}
        if label_column is not None:
            label = label_column if label_column in frame.columns else None
        else:
            label = next((by_name[n] for n in LABEL_COLUMN_PREFERENCE if n in by_name), None)
        if label is None:
            if folder:
                LOG.warning("skipping %s: no label column (%s)", file, wanted)
                continue
            raise ValueError(f"{file} has no label column ({wanted}); columns: {list(frame.columns)}")
        if value_columns is not None and label in value_columns:
            raise ValueError(f"{file}: label column {label!r} is also given as a value column")
        sensors = [c for c in values if c != label]
        if not sensors:
            raise ValueError(f"{file}: no value columns besides the label column {label!r}")
        bad = ~pd.to_numeric(frame[label], errors="coerce").isin((0, 1)).to_numpy()
        if bad.any():
            row = int(np.argmax(bad))
            raise ValueError(f"{file}: label column {label!r} must hold only 0 or 1; data row {row} (0-based) "
                             f"holds {frame[label].iloc[row]!r}")
        times = timestamps_to_epoch(frame[time_column])
        if not np.isfinite(times).all():
            raise ValueError(f"{file}: timestamp column {time_column!r} has missing values")
        order = np.argsort(times, kind="stable")
        name = file.relative_to(path).with_suffix("").as_posix() if folder else file.stem
        series.append(LabelledSeries(
            name=name, times=times[order], values=frame[sensors].to_numpy(dtype=np.float64)[order],
            sensors=tuple(str(c) for c in sensors),
            labels=pd.to_numeric(frame[label]).to_numpy()[order].astype(np.int8),
        ))
    if not series:
        raise ValueError(f"no labelled series under {path}: none of its {len(files)} .csv files has a label column "
                         f"({wanted})")
    return series
