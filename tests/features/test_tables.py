"""The one table reader: CSV (any separator, BOM), Parquet and JSON lines, with id columns kept as text."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import features
from features.tables import detect_separator, read_table, table_format, timestamps_to_epoch


@pytest.mark.parametrize("sep", [",", ";", "\t", "|"])
def test_csv_separator_is_detected(tmp_path, sep):
    path = tmp_path / "readings.csv"
    path.write_text(sep.join(["ts", "pressure", "state"]) + "\n" + sep.join(["1", "2.5", "on"]) + "\n"
                    + sep.join(["2", "3.5", "off"]) + "\n")
    frame = read_table(path)
    assert frame.columns.tolist() == ["ts", "pressure", "state"]
    assert frame["pressure"].tolist() == [2.5, 3.5]
    assert frame["state"].tolist() == ["on", "off"]


def test_semicolon_csv_with_decimal_commas_in_text_is_not_split_on_commas(tmp_path):
    path = tmp_path / "skab_like.csv"
    path.write_text("datetime;note;value\n2020-03-09 10:14:33;a,b;1.5\n2020-03-09 10:14:34;c;2.5\n")
    frame = read_table(path)
    assert frame.columns.tolist() == ["datetime", "note", "value"]
    assert frame["note"].tolist() == ["a,b", "c"]


def test_tab_separated_file_with_any_suffix_reads_as_csv(tmp_path):
    path = tmp_path / "readings.tsv"
    path.write_text("device\tts\tx\npump-1\t1.0\t0.25\n")
    frame = read_table(path)
    assert frame.to_dict("list") == {"device": ["pump-1"], "ts": [1.0], "x": [0.25]}


def test_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("event_id;ts\n7;1.5\n".encode("utf-8-sig"))
    frame = read_table(path)
    assert frame.columns.tolist() == ["event_id", "ts"]
    assert frame["ts"].tolist() == [1.5]


def test_floats_round_trip_exactly_through_csv(tmp_path):
    values = np.random.default_rng(0).normal(size=200) * 1e3
    path = tmp_path / "floats.csv"
    pd.DataFrame({"x": values}).to_csv(path, index=False)
    assert np.array_equal(read_table(path)["x"].to_numpy(), values)


def test_text_columns_are_read_as_strings_when_present(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("event_id,device_id,ts,x\n007,001,1.0,2\n010,002,2.0,3\n")
    frame = read_table(path, text_columns=("event_id", "device_id", "fault_type"))
    assert frame["event_id"].tolist() == ["007", "010"]
    assert frame["device_id"].tolist() == ["001", "002"]
    assert "fault_type" not in frame.columns
    assert frame["x"].tolist() == [2, 3] and frame["x"].dtype.kind == "i"
    assert read_table(path)["event_id"].tolist() == [7, 10]
    assert read_table(path, text_columns="event_id")["event_id"].tolist() == ["007", "010"]


@pytest.mark.parametrize("name", ["table.parquet", "table.pq", "TABLE.PARQUET"])
def test_parquet_by_suffix(tmp_path, name):
    frame = pd.DataFrame({"event_id": ["007", "008"], "ts": [1.0, 2.0], "label": [0, 1]})
    path = tmp_path / name
    frame.to_parquet(path, index=False)
    pd.testing.assert_frame_equal(read_table(path, text_columns=("event_id",)), frame)


@pytest.mark.parametrize("suffix", [".jsonl", ".ndjson"])
def test_json_lines_keep_their_own_types(tmp_path, suffix):
    path = tmp_path / f"events{suffix}"
    path.write_text('{"event_id": "007", "device_id": "pump-1", "ts": 1767225600, "x": 0.1234567890123456}\n'
                    "\n"
                    '{"event_id": 8, "device_id": "pump-2", "ts": 1767225601, "x": null}\n')
    frame = read_table(path, text_columns=("event_id",))
    assert frame.columns.tolist() == ["event_id", "device_id", "ts", "x"]
    assert frame["event_id"].tolist() == ["007", "8"]
    assert frame["device_id"].tolist() == ["pump-1", "pump-2"]
    assert frame["ts"].tolist() == [1767225600, 1767225601] and frame["ts"].dtype.kind == "i"
    assert frame["x"].iloc[0] == 0.1234567890123456 and np.isnan(frame["x"].iloc[1])


def test_json_lines_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes('{"a": 1}\n{"a": 2}\n'.encode("utf-8-sig"))
    assert read_table(path)["a"].tolist() == [1, 2]


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nowhere.csv"
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        read_table(path)


@pytest.mark.parametrize("name, content", [
    ("broken.parquet", b"event_id,ts\n1,2\n"),
    ("broken.jsonl", b'{"a": 1}\nnot json\n'),
    ("empty.csv", b""),
])
def test_unreadable_file_is_a_value_error_naming_the_path(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        read_table(path)


def test_a_directory_is_not_a_table(tmp_path):
    with pytest.raises(ValueError, match=tmp_path.name):
        read_table(tmp_path)


def test_table_format_follows_the_suffix_in_any_case():
    assert [table_format(p) for p in ("a.parquet", "a.PQ", "a.jsonl", "a.NDJSON", "a.csv", "a.tsv", "a")] == [
        "parquet", "parquet", "jsonl", "jsonl", "csv", "csv", "csv"]


def test_detect_separator_prefers_the_one_consistent_on_every_line():
    assert detect_separator(["a;b;c\n", "1,5;2;3\n", "4;5,5;6\n"]) == ";"
    assert detect_separator(["a|b\n", "1|2\n"]) == "|"
    assert detect_separator(["a\tb\tc\n", "1\t2,5\t3\n"]) == "\t"
    assert detect_separator(["single\n", "1\n"]) == ","
    assert detect_separator([]) == ","


def test_timestamps_to_epoch_parses_strings_and_keeps_numbers():
    assert timestamps_to_epoch(pd.Series(["2026-01-01 00:00:00", "2026-01-01T00:00:01Z"])).tolist() == [
        1767225600.0, 1767225601.0]
    assert timestamps_to_epoch(pd.Series(["1767225600", "1.5"])).tolist() == [1767225600.0, 1.5]
    with pytest.raises(ValueError, match="'t'.*boolean"):
        timestamps_to_epoch(pd.Series([True], name="t"))
    with pytest.raises(ValueError, match="'t'"):
        timestamps_to_epoch(pd.Series(["2026-01-01", None], name="t"))


def test_features_does_not_import_training_or_the_pipeline():
    source = Path(features.__file__).with_name("tables.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"training", "inference_pipeline", "model_handlers"}
