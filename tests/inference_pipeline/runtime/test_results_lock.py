"""`iotml run` never deletes a results database that a running stream writes: it refuses (exit 2, one line naming
the file) while another process holds the database's results lock, and runs once the lock is free."""
from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inference_pipeline.cli import main
from inference_pipeline.jobs import main_job
from inference_pipeline.runtime.results_lock import (
    ResultsInUse,
    hold_results,
    lock_path,
)
from tests.conftest import REPO

HOLDER = """
import sys
from pathlib import Path
from inference_pipeline.runtime.results_lock import hold_results
with hold_results([Path(sys.argv[1])]):
    print("held", flush=True)
    sys.stdin.read()
"""


def make_database(path: Path) -> str:
    """A results database with a row in it (WAL mode, as the sink writes it); its files' digest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE TABLE predictions (event_id TEXT)")
        connection.execute("INSERT INTO predictions VALUES ('e-1')")
    return digest(path)


def digest(path: Path) -> str:
    files = sorted(path.parent.glob(path.name + "*"))
    return hashlib.sha256(b"".join(f.name.encode() + f.read_bytes() for f in files if f.suffix != ".lock")).hexdigest()


def refused_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_iotml_run_refuses_while_another_process_holds_the_lock_and_runs_once_it_is_free(tmp_path, capsys,
                                                                                           monkeypatch):
    work = tmp_path / "work"
    db = work / "results.db"
    before = make_database(db)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], cwd=REPO, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["run", "--work-dir", str(work)]) == 2
        line = refused_line(capsys)
        assert line.startswith("iotml run: error: results database ") and str(db.resolve()) in line
        assert "in use by a running stream" in line
        assert digest(db) == before
    finally:
        holder.stdin.close()
        holder.wait(10)

    def reached_training(*args, **kwargs):
        raise ValueError("reached training")

    monkeypatch.setattr(main_job, "train_simulated", reached_training)
    assert main(["run", "--work-dir", str(work)]) == 2
    assert refused_line(capsys) == "iotml run: error: reached training"
    assert not [f for f in work.glob("results.db*") if f.suffix != ".lock"]


def test_streams_share_the_lock_and_a_replacing_job_excludes_them(tmp_path):
    db = tmp_path / "results.db"
    with hold_results([db]), hold_results([db]):
        with pytest.raises(ResultsInUse, match="in use by a running stream"), \
                hold_results([tmp_path / "other.db", db], exclusive=True):
            pass
        assert lock_path(db) == db.resolve().with_name("results.db.lock")
    with hold_results([db], exclusive=True), pytest.raises(ResultsInUse, match="replacing it"), hold_results([db]):
        pass
    with hold_results([db], exclusive=True):
        pass


def prediction_rows(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as connection:
        return connection.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]


def test_a_running_iotml_stream_holds_the_lock_of_its_sqlite_sink(trained, tmp_path, capsys, monkeypatch):
    db = tmp_path / "live.db"
    events = sum(1 for _ in trained.data.stream_events.open())
    command = [sys.executable, "-m", "inference_pipeline.cli", "stream", "--config", str(REPO / "configs" / "local.yaml"),
               "--work-dir", str(tmp_path / "stream"), "--source", str(trained.data.stream_events),
               "--set", f"model.uri={json.dumps(str(trained.version.path))}", "--set", f"source.rate={events / 10}",
               "--set", f"sinks.results.path={json.dumps(str(db))}"]
    log = tmp_path / "stream.log"
    stream = subprocess.Popen(command, cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    monkeypatch.setattr(main_job, "train_simulated", lambda *args, **kwargs: pytest.fail("iotml run got past the lock"))
    try:
        deadline = time.monotonic() + 120
        while "streaming with" not in log.read_text():
            assert stream.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        assert main(["run", "--work-dir", str(tmp_path / "job"), "--set", f"sinks.results.path={json.dumps(str(db))}"]
                    ) == 2
        assert str(db.resolve()) in refused_line(capsys)
        assert stream.poll() is None, "the stream ended before the check: replay more slowly"
        assert stream.wait(120) == 0, log.read_text()[-3000:]
    finally:
        stream.kill()
    assert prediction_rows(db) > 0.9 * events
    with hold_results([db], exclusive=True):
        pass
