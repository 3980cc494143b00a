"""Nothing lost, nothing duplicated when the results database restarts mid-stream: a Beam pipeline writes device
batches through the PostgreSQL sink while a PRIVATE PostgreSQL (initdb into a temporary folder, on a free loopback
port, trust auth) is restarted under it, once cleanly (``pg_ctl stop -m fast``) and once as a crash (``-m
immediate``: a commit may be done without the writer hearing of it). The shared server on 5432 is never touched.

initdb refuses to run as root: when the tests run as root, initdb, pg_ctl and the server run as the ``postgres`` OS
user (``runuser -u postgres --``) in a folder under /tmp chowned to it (pytest's tmp_path, under a root-only folder,
is out of its reach)."""
from __future__ import annotations

import glob
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import apache_beam as beam
import numpy as np
import psycopg
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from features.window import WindowState
from inference_pipeline.builder import LOCAL_RUNNER
from inference_pipeline.connectors.postgres import PostgresRestore, PostgresSettings, write_tables
from inference_pipeline.results import ALERTS, PREDICTIONS, DeviceResults, DeviceSnapshot, Incident, PredictionBatch

pytestmark = pytest.mark.services

DEVICES = 10
BATCHES = 200
EVENTS_PER_BATCH = 5


def _binary(name: str) -> str | None:
    installed = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda path: int(path.split("/")[4]))
    return shutil.which(name) or (installed[-1] if installed else None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivatePostgres:
    """A PostgreSQL cluster of our own, started, stopped and restarted like a real outage."""

    def __init__(self, initdb: str, pg_ctl: str):
        self.initdb, self.pg_ctl = initdb, pg_ctl
        self.as_root = os.getuid() == 0
        self.folder = Path(tempfile.mkdtemp(prefix="iotml-pg-"))
        if self.as_root:
            shutil.chown(self.folder, "postgres", "postgres")
        self.data = self.folder / "data"
        self.log = self.folder / "postgres.log"
        self.port = _free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_root else []
        done = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=90)
        assert done.returncode == 0, f"{command[0]} failed:\n{done.stdout}\n{done.stderr}"

    def init(self) -> None:
        self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    def start(self) -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o",
                  f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def private_postgres():
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("initdb/pg_ctl are not installed")
    if os.getuid() == 0 and (shutil.which("runuser") is None or _uid("postgres") is None):
        pytest.skip("running as root without runuser or a postgres OS user to run initdb as")
    server = PrivatePostgres(initdb, pg_ctl)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.remove()


def _uid(user: str) -> int | None:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def _batch(i: int) -> DeviceResults:
    device = f"dev-{i % DEVICES}"
    ids = np.asarray([f"{device}-e{i}-{k}" for k in range(EVENTS_PER_BATCH)], dtype=object)
    times = float(i) + np.arange(EVENTS_PER_BATCH) / EVENTS_PER_BATCH
    prediction = PredictionBatch(device, ids, times, times, 1.0, np.zeros(EVENTS_PER_BATCH),
                                 np.zeros(EVENTS_PER_BATCH), 0.5, np.full(EVENTS_PER_BATCH, 30), 30, "m", "1")
    # every device's incident opens on its first batch and is updated by each later one
    incident = Incident(f"{device}:open", device, 0.0, None if i < BATCHES - DEVICES else float(i), 0.9, i,
                        "open" if i < BATCHES - DEVICES else "closed", "m", "1")
    snapshot = DeviceSnapshot(device, WindowState(np.zeros((2, 2)), float(times[-1])), {}, [incident], float(i))
    return DeviceResults(prediction, [incident], snapshot)


def _slowly(element: DeviceResults) -> DeviceResults:
    time.sleep(0.02)
    return element


def _counts(dsn: str, schema: str) -> tuple[int, int]:
    with psycopg.connect(dsn, connect_timeout=2) as connection:
        return connection.execute(
            f'SELECT COUNT(*), COUNT(DISTINCT (device_id, event_id)) FROM "{schema}".predictions').fetchone()


class Restarter(threading.Thread):
    """Restarts the server (``fast``, then ``immediate``) once the writer has committed past each threshold;
    records the rows committed at each restart."""

    def __init__(self, server: PrivatePostgres, schema: str, plan: list[tuple[int, str]]):
        super().__init__(daemon=True)
        self.server, self.schema, self.plan = server, schema, plan
        self.restarted_at: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for threshold, mode in self.plan:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        rows = _counts(self.server.dsn, self.schema)[0]
                    except psycopg.Error:
                        rows = 0
                    if rows >= threshold:
                        break
                    assert time.monotonic() < deadline, f"the writer never reached {threshold} rows"
                    time.sleep(0.02)
                self.server.stop(mode)
                self.restarted_at.append(rows)
                time.sleep(1.0)  # the writer meets a dead server for a while
                self.server.start()
        except BaseException as exc:  # reported by the test
            self.error = exc


def test_a_database_restart_mid_stream_loses_and_duplicates_nothing(private_postgres, caplog):
    caplog.set_level(logging.INFO, logger="inference_pipeline.connectors.postgres")
    settings = PostgresSettings(dsn=private_postgres.dsn, schema="iotml", batch_rows=4 * EVENTS_PER_BATCH,
                                retry={"initial_s": 0.05, "max_s": 0.5, "max_elapsed_s": 60})
    expected = BATCHES * EVENTS_PER_BATCH
    restarter = Restarter(private_postgres, "iotml", [(expected // 5, "fast"), (expected // 2, "immediate")])
    restarter.start()
    started = time.monotonic()
    with beam.Pipeline(options=PipelineOptions(runner=LOCAL_RUNNER)) as pipeline:
        _ = (pipeline | beam.Create([_batch(i) for i in range(BATCHES)]) | beam.Map(_slowly)
             | write_tables(settings, (PREDICTIONS, ALERTS)))
    elapsed = time.monotonic() - started
    restarter.join(120)
    assert restarter.error is None, restarter.error
    assert len(restarter.restarted_at) == 2 and all(0 < rows < expected for rows in restarter.restarted_at), (
        restarter.restarted_at)
    assert "retrying" in caplog.text and "reconnected" in caplog.text

    # a redelivered stretch of the stream, written again after the restarts, adds nothing
    with beam.Pipeline(options=PipelineOptions(runner=LOCAL_RUNNER)) as pipeline:
        _ = pipeline | beam.Create([_batch(i) for i in range(50)]) | write_tables(settings, (PREDICTIONS,))

    assert _counts(private_postgres.dsn, "iotml") == (expected, expected), f"after {elapsed:.1f} s"
    with psycopg.connect(private_postgres.dsn) as connection:
        alerts = connection.execute("SELECT COUNT(*), COUNT(*) FILTER (WHERE status = 'closed') "
                                    "FROM iotml.alerts").fetchone()
        states = connection.execute("SELECT COUNT(*), MAX(updated_at) FROM iotml.device_state").fetchone()
    # the redelivered stretch rewrote early device states (last write wins, as in SQLite); the incidents are whole
    assert alerts == (DEVICES, DEVICES)
    assert states[0] == DEVICES
    restore = PostgresRestore(settings, 3)
    assert [event for event, _ in restore.seen_ids("dev-1", 0.0)] == [
        f"dev-1-e{BATCHES - DEVICES + 1}-{k}" for k in range(2, EVENTS_PER_BATCH)]
