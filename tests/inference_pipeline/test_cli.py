"""The iotml subcommands as a user calls them (in process)."""
import json
import logging
import socket
import sqlite3
import time

import pandas as pd

from inference_pipeline.cli import main
from tests.conftest import REPO
from training.simulate import simulate_fleet, write_frame


def test_simulate_writes_a_labelled_csv(tmp_path, capsys):
    out = tmp_path / "fleet.csv"
    assert main(["simulate", "--output", str(out), "--devices", "2", "--duration", "120", "--fault-rate", "0"]) == 0
    frame = pd.read_csv(out)
    assert len(frame) == 240 and set(frame["label"]) == {0}
    assert "wrote 240 events" in capsys.readouterr().out


def test_bad_config_fails_before_work_naming_the_field(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("alerting:\n  close_after: -1\n")
    assert main(["run", "--config", str(config), "--work-dir", str(tmp_path / "w")]) == 2
    assert "alerting.close_after" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_train_from_csv_tables_then_stream_a_replay(tmp_path, capsys):
    start = 1767225600.0
    write_frame(simulate_fleet(3, 1200, seed=5, start=start, fault_rate=0), tmp_path / "train.csv")
    write_frame(simulate_fleet(3, 600, seed=5, start=start + 1200, fault_rate=4), tmp_path / "eval.csv")
    replay = write_frame(simulate_fleet(3, 300, seed=5, start=start + 1800), tmp_path / "replay.csv")
    common = ["--work-dir", str(tmp_path / "work"), "--set", "training.epochs=3"]
    assert main(["train", "--train-data", str(tmp_path / "train.csv"), "--eval-data", str(tmp_path / "eval.csv"),
                 *common]) == 0
    assert "registered iot-anomaly v1" in capsys.readouterr().out
    assert main(["stream", "--source", str(replay), *common]) == 0
    with sqlite3.connect(tmp_path / "work" / "results.db") as db:
        count, versions = db.execute("SELECT COUNT(*), GROUP_CONCAT(DISTINCT model_version) FROM predictions").fetchone()
    assert (count, versions) == (900, "1")


def test_score_cli_writes_scores(tmp_path):
    frame = pd.DataFrame({"t": range(600), "v": [float(i % 17) for i in range(600)]})
    frame.to_csv(tmp_path / "in.csv", index=False)
    assert main(["score", "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out.csv"),
                 "--timestamp-column", "t", "--value-columns", "v"]) == 0
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns) == ["t", "v", "anomaly_score", "is_anomaly"] and len(out) == 600


def test_missing_input_is_a_clear_error(tmp_path, capsys):
    assert main(["score", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_score_refuses_to_overwrite_its_input(tmp_path, capsys):
    data = tmp_path / "in.csv"
    pd.DataFrame({"t": range(10), "v": [1.0] * 10}).to_csv(data, index=False)
    before = data.read_bytes()
    assert main(["score", "--input", str(data), "--output", str(data)]) == 2
    assert "is the input" in capsys.readouterr().err and data.read_bytes() == before


def test_an_invalid_set_value_is_a_one_line_error(capsys):
    assert main(["stream", "--set", "features.sensors=[a, b"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "features.sensors" in err


def test_stream_fails_at_start_when_the_broker_does_not_answer(trained, tmp_path, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    started = time.monotonic()
    code = main(["stream", "--config", str(REPO / "configs" / "mqtt.yaml"), "--work-dir", str(tmp_path),
                 "--set", f"model.uri={trained.version.path}", "--set", f"source.mqtt.port={closed_port}",
                 "--set", "source.mqtt.connect_timeout_s=2", "--set", "sinks.results.path=" + str(tmp_path / "r.db")])
    assert code == 2 and time.monotonic() - started < 60
    err = capsys.readouterr().err
    assert f"MQTT broker 127.0.0.1:{closed_port} did not answer" in err and len(err.strip().splitlines()) == 1


def test_errors_and_logs_never_show_a_password(monkeypatch, capsys, caplog):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    url = f"mqtt://iotml:url-pa55word@127.0.0.1:{closed_port}/x?connect_timeout_s=1"
    assert main(["simulate", "--publish", url, "--rate", "10", "--duration", "1"]) == 2
    assert "did not answer" in capsys.readouterr().err
    monkeypatch.setenv("IOTML_MQTT_PASSWORD", "env-pa55word")
    logging.getLogger("inference_pipeline").warning("cannot reach %s with %s", url, "env-pa55word")
    shown = "\n".join(handler.format(record) for record in caplog.records
                      for handler in logging.getLogger().handlers[:1]) + capsys.readouterr().err
    assert "url-pa55word" not in shown and "env-pa55word" not in shown and "iotml:***@" in shown


def test_models_list_show_and_promote(trained, tmp_path, capsys):
    from tests.registry_versions import register, variant

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    register(tracking, tmp_path, "press", trained.version)
    register(tracking, tmp_path, "press", variant(trained.version, tmp_path / "v2", threshold=1.0))
    common = ["--work-dir", str(tmp_path / "work"), "--set", f"model.tracking_uri={tracking}",
              "--set", "model.uri=models:/press@champion"]
    assert main(["models", "list", *common]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split()[:4] == ["name", "version", "aliases", "created"] and "eval_f1" in listing[0]
    assert [line.split()[:3] for line in listing[1:]] == [["press", "1", "champion"], ["press", "2", "-"]]
    assert main(["models", "promote", "press", "2", *common]) == 0
    assert "press@champion: v2 (was v1)" in capsys.readouterr().out
    assert main(["models", "show", *common]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["version"], shown["aliases"], shown["metrics"]["eval_f1"]) == ("2", ["champion"], 0.5)
    assert main(["models", "promote", "press", "9", *common]) == 2
    assert "press v9 is not registered" in capsys.readouterr().err
