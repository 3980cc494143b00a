import json

import pandas as pd
import pytest

from features.schema import EventRules, RawEvent, parse_events
from inference_pipeline.connectors.replay import ReadReplay, read_payloads


def test_csv_rows_become_events_with_their_own_timestamps(tmp_path):
    frame = pd.DataFrame({"machine": ["m1", "m2", "m1"], "time": ["2026-01-01T00:00:00", "2026-01-01 00:00:01",
                          "2026-01-01T00:00:02Z"], "temp": [20.5, 21.0, 22.0], "load": [1, 2, 3]})
    frame.to_csv(tmp_path / "rows.csv", index=False)
    payloads = read_payloads(tmp_path / "rows.csv", "machine", "time", ("temp", "load"), None)
    assert [json.loads(p)["ts"] for p in payloads] == [1767225600.0, 1767225601.0, 1767225602.0]
    batches, dead = parse_events([RawEvent(p, 0.0) for p in payloads], EventRules(("temp", "load")), 1e10)
    assert dead == [] and {b.device_id: b.values.tolist() for b in batches} == {
        "m1": [[20.5, 1.0], [22.0, 3.0]], "m2": [[21.0, 2.0]]}


def test_parquet_rows_keep_event_ids(tmp_path):
    pd.DataFrame({"device_id": ["a"], "ts": [5.0], "x": [1.0], "event_id": ["e-1"]}).to_parquet(tmp_path / "r.parquet")
    (payload,) = read_payloads(tmp_path / "r.parquet", "device_id", "ts", ("x",), "event_id")
    assert json.loads(payload) == {"device_id": "a", "ts": 5.0, "event_id": "e-1", "readings": {"x": 1.0}}


def test_jsonl_lines_are_replayed_verbatim_even_when_broken(tmp_path):
    (tmp_path / "e.jsonl").write_text('{"device_id": "a"}\nnot json\n\n')
    assert read_payloads(tmp_path / "e.jsonl", "device_id", "ts", ("x",), None) == ['{"device_id": "a"}', "not json"]


def test_missing_columns_and_files_are_named(tmp_path):
    pd.DataFrame({"device_id": ["a"], "ts": [1.0]}).to_csv(tmp_path / "r.csv", index=False)
    with pytest.raises(ValueError, match="pressure"):
        read_payloads(tmp_path / "r.csv", "device_id", "ts", ("pressure",), None)
    with pytest.raises(FileNotFoundError, match="source.path"):
        ReadReplay(tmp_path / "missing.csv", ("x",))
