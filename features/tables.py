"""The one table reader (Parquet, JSON lines or CSV) and timestamp parsing, shared by training and streaming."""
from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

SEPARATORS: tuple[str, ...] = (",", ";", "\t", "|")
PARQUET_SUFFIXES: tuple[str, ...] = (".parquet", ".pq")
JSON_LINES_SUFFIXES: tuple[str, ...] = (".jsonl", ".ndjson")
ENCODING = "utf-8-sig"
_SNIFF_LINES = 50

TableFormat = Literal["parquet", "jsonl", "csv"]


def table_format(path: str | Path) -> TableFormat:
    """The format a path's suffix (any case) names: Parquet (.parquet, .pq), JSON lines (.jsonl, .ndjson) or CSV."""
    suffix = Path(path).suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix in JSON_LINES_SUFFIXES:
        return "jsonl"
    return "csv"


def detect_separator(lines: list[str]) -> str:
    """The separator among , ; tab | that splits the header into most fields, preferring ones consistent per line."""
    rows = [line for line in lines if line.strip()]
    if not rows:
        return ","
    counts = {sep: [row.count(sep) for row in rows] for sep in SEPARATORS}
    consistent = {sep: c[0] for sep, c in counts.items() if c[0] > 0 and len(set(c)) == 1}
    pool = consistent or {sep: c[0] for sep, c in counts.items()}
    best = max(pool, key=pool.get)
    return best if pool[best] > 0 else ","


def _read_csv(path: Path, text_columns: tuple[str, ...]) -> pd.DataFrame:
    with path.open(encoding=ENCODING, errors="replace") as handle:
        head = [line for _, line in zip(range(_SNIFF_LINES), handle)]
    return pd.read_csv(path, sep=detect_separator(head), encoding=ENCODING, float_precision="round_trip",
                       dtype={name: str for name in text_columns})


def _read_json_lines(path: Path, text_columns: tuple[str, ...]) -> pd.DataFrame:
    # dtype=False and convert_dates=False keep JSON's own types: "007" stays a string, epoch numbers stay numbers.
    frame = pd.read_json(path, lines=True, dtype=False, convert_dates=False, precise_float=True, encoding=ENCODING)
    for name in text_columns:
        if name in frame.columns:
            frame[name] = frame[name].map(str, na_action="ignore")
    return frame


def read_table(path: str | Path, text_columns: Iterable[str] = ()) -> pd.DataFrame:
    """A table from Parquet (.parquet, .pq), JSON lines (.jsonl, .ndjson: one object per line) or CSV (any other
    suffix: separator among , ; tab | detected from the first lines, UTF-8 with or without a BOM, floats read back
    exactly as written).

    ``text_columns`` present in a CSV or JSON-lines file are read as strings (ids such as "007" keep their zeros).
    A missing file raises FileNotFoundError, one that does not parse as its format ValueError; both name the path.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no file at {path}")
    text = (text_columns,) if isinstance(text_columns, str) else tuple(dict.fromkeys(text_columns))
    kind = table_format(path)
    try:
        if kind == "parquet":
            return pd.read_parquet(path)
        if kind == "jsonl":
            return _read_json_lines(path, text)
        return _read_csv(path, text)
    except (ValueError, OSError) as exc:
        raise ValueError(f"cannot read {path} as {kind}: {exc}") from exc


def timestamps_to_epoch(series: pd.Series) -> np.ndarray:
    """Epoch seconds as float64: numbers as they are, datetimes and strings parsed (naive ones are UTC)."""
    if pd.api.types.is_bool_dtype(series):
        raise ValueError(f"timestamp column {series.name!r} is boolean")
    if pd.api.types.is_numeric_dtype(series):
        return series.to_numpy(dtype=np.float64)
    if not pd.api.types.is_datetime64_any_dtype(series):
        numbers = pd.to_numeric(series, errors="coerce")
        if numbers.notna().all():
            return numbers.to_numpy(dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            parsed = pd.to_datetime(series, utc=True)
        except (ValueError, TypeError):
            try:
                parsed = pd.to_datetime(series, utc=True, format="mixed")
            except (ValueError, TypeError) as exc:
                raise ValueError(f"timestamp column {series.name!r} does not parse as datetimes: {exc}") from exc
    if parsed.isna().any():
        missing = int(parsed.isna().sum())
        raise ValueError(f"timestamp column {series.name!r} has {missing} missing or unparsable values")
    return ((parsed - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(dtype=np.float64)
