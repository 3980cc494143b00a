"""No password, token or credential-bearing URI in anything `iotml` writes: its own log lines, MLflow's (which has its
own handler on the ``mlflow`` logger, and on ``alembic`` and ``sqlalchemy.engine``), warnings, tracebacks and what
MLflow prints when a run ends. The tracking URI here carries a password, as ``http://user:pass@host`` does in a
plant; ``tests.conftest`` also fails the suite if a test password shows up in any captured output or ``*.log`` file.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

SECRET = "s3cret"
IOTML = Path(sys.executable).with_name("iotml")
TINY = ["--set", "simulation.devices=2", "--set", "simulation.duration_s=600", "--set",
        "simulation.train_duration_s=900", "--set", "training.epochs=1"]

IN_PROCESS = f"""
import logging, sys, warnings
from inference_pipeline.cli import main
assert main(["simulate", "--output", sys.argv[1] + "/fleet.csv", "--devices", "1", "--duration", "5"]) == 0
import mlflow
dsn = "postgresql://mlflow:{SECRET}@db.plant:5432/mlflow"
logging.getLogger("mlflow.store.db.utils").warning("SQLAlchemy engine could not be created for %s", dsn)
logging.getLogger("alembic.runtime.migration").warning("migrating " + dsn)
logging.getLogger("sqlalchemy.engine.Engine").warning("connect %s", dsn)
logging.getLogger("training.register").info("tracking at http://user:{SECRET}@mlflow.plant/")
later = logging.FileHandler(sys.argv[1] + "/later.log")
logging.getLogger("mlflow").addHandler(later)
logging.getLogger("mlflow.tracking.child").info("registered at %s", "http://:{SECRET}@mlflow.plant/")
try:
    raise ConnectionError("API request to http://user:{SECRET}@mlflow.plant/api failed")
except ConnectionError:
    logging.getLogger("mlflow.utils.rest_utils").exception("request failed")
warnings.warn("cannot reach " + dsn)
later.flush()
raise RuntimeError("uncaught: " + dsn)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_logged(command: list[str], log: Path, env: dict[str, str] | None = None, timeout: float = 300
               ) -> tuple[int, str]:
    """Run ``command`` with stdout and stderr into ``log``; (exit code, everything it wrote)."""
    with log.open("wb") as out:
        code = subprocess.run(command, check=False, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env,
                              timeout=timeout).returncode
    return code, log.read_text(errors="replace")


def test_records_of_every_logger_and_handler_warnings_and_tracebacks_are_masked(tmp_path):
    code, shown = run_logged([sys.executable, "-c", IN_PROCESS, str(tmp_path)], tmp_path / "in-process.log")
    later = (tmp_path / "later.log").read_text()
    assert code == 1 and "RuntimeError: uncaught: postgresql://mlflow:***@db.plant" in shown, shown[-3000:]
    for expected in ("could not be created for postgresql://mlflow:***@", "migrating postgresql://mlflow:***@",
                     "connect postgresql://mlflow:***@", "tracking at http://user:***@", "UserWarning: cannot reach",
                     "ConnectionError: API request to http://user:***@"):
        assert expected in shown, expected
    assert "registered at http://:***@mlflow.plant/" in later
    assert SECRET not in shown and SECRET not in later


@pytest.fixture
def tracking_server(tmp_path):
    """A real MLflow tracking server (SQLite store, local artifacts); its URI with a password in it."""
    port = free_port()
    log = (tmp_path / "mlflow-server.log").open("wb")
    server = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1",
                               "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow-server.db'}",
                               "--default-artifact-root", str(tmp_path / "mlflow-artifacts")],
                              stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.2)
    yield f"http://iotml:{SECRET}@127.0.0.1:{port}/"
    server.terminate()
    server.wait(30)


def test_training_and_streaming_with_a_password_in_the_tracking_uri_never_show_it(tracking_server, tmp_path):
    work = tmp_path / "work"
    uri = ["--set", f'model.tracking_uri="{tracking_server}"']
    code, trained = run_logged([str(IOTML), "train", "--work-dir", str(work), *TINY, *uri], tmp_path / "train.log")
    assert code == 0 and "registered iot-anomaly v1" in trained, trained[-3000:]
    code, streamed = run_logged([str(IOTML), "stream", "--work-dir", str(work), "--source",
                                 str(work / "data" / "stream.jsonl"), *uri], tmp_path / "stream.log")
    assert code == 0 and "streaming with iot-anomaly v1" in streamed, streamed[-3000:]
    assert SECRET not in trained and SECRET not in streamed


def test_an_unreachable_tracking_server_fails_without_showing_its_password(tmp_path):
    uri = ["--set", f'model.tracking_uri="http://iotml:{SECRET}@127.0.0.1:{free_port()}/"']
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    code, streamed = run_logged([str(IOTML), "stream", "--work-dir", str(tmp_path / "work"), "--source",
                                 str(tmp_path / "none.jsonl"), *uri], tmp_path / "stream.log", env)
    last = streamed.strip().splitlines()[-1]
    assert code == 2 and last.startswith("iotml stream: error: model.uri:") and "registry at http://" in last, \
        streamed[-3000:]
    code, trained = run_logged([str(IOTML), "train", "--work-dir", str(tmp_path / "work"), *TINY, *uri],
                               tmp_path / "train.log", env)
    last = trained.strip().splitlines()[-1]
    assert code == 2 and last.startswith("iotml train: error: MLflow tracking server at 127.0.0.1:"), trained[-3000:]
    assert "Connection refused" in last and "Traceback" not in trained, trained[-3000:]
    assert SECRET not in streamed and SECRET not in trained
