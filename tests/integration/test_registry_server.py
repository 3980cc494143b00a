"""`iotml registry serve`: MLflow's tracking server on the shared PostgreSQL (a fresh database, dropped after) with its
artifacts proxied. Clients know only its URL (`model.tracking_uri: http://...`): versions registered through it are
uploaded through it (`mlflow-artifacts:` sources), the champion resolves into an empty cache through it, and a live MQTT
stream follows a promotion made on it without a restart, every event predicted once. With `--basic-auth`, anonymous
clients and a wrong password are refused and MLflow's `MLFLOW_TRACKING_USERNAME` / `_PASSWORD` variables let one in."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from inference_pipeline.cli import main
from inference_pipeline.jobs.registry_server import (ServerOptions, backend_store, server_command, server_environment,
                                                     wait_until_healthy)
from model_handlers.resolve import resolve_model_version
from tests.integration.test_hot_swap import promote_and_wait, publish_while, swapped_predictions
from tests.integration.test_mqtt_live import (REPO, Stream, fleet_devices, free_port, kill, reachable,  # noqa: F401
                                              shared_broker, wait_until)
from tests.registry_versions import register, variant
from training.register import check_tracking_server, show_version
from training.simulate import simulate_fleet, write_frame

pytestmark = pytest.mark.services

POSTGRES = ("127.0.0.1", 5432)
NAME = "served"
WATCH_S = 2
DB_PASSWORD = "env-pa55word"  # the server's PGPASSWORD (unused by a trust-auth server): shown nowhere (conftest)
ADMIN_PASSWORD = "plant-secret-42"  # MLflow wants 12 characters at least


@dataclasses.dataclass(frozen=True)
class RegistryServer:
    url: str
    process: subprocess.Popen
    log: Path
    artifacts: Path
    launched: float = dataclasses.field(default_factory=time.monotonic)

    def wait(self) -> float:
        """Seconds from its launch until it answers /health."""
        wait_until_healthy(self.url, 90, self.process)
        return time.monotonic() - self.launched


def _drop(database: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(host=POSTGRES[0], port=POSTGRES[1], user="postgres", dbname="postgres",
                         autocommit=True) as db:
        db.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))


@contextlib.contextmanager
def registry_server(folder: Path, *options: str, env: dict[str, str] | None = None) -> Iterator[RegistryServer]:
    """`iotml registry serve` on a free port with a new database and ``folder``/server-artifacts, started (not yet
    answering); stopped with SIGTERM and its database dropped after."""
    if not reachable(*POSTGRES):
        pytest.skip(f"no PostgreSQL on {POSTGRES[0]}:{POSTGRES[1]}")
    database, port, artifacts = f"iotml_it_{uuid.uuid4().hex[:12]}", free_port(), folder / "server-artifacts"
    log = folder / "registry-server.log"
    command = [sys.executable, "-m", "inference_pipeline.cli", "registry", "serve", "--port", str(port),
               "--artifacts", str(artifacts), "--db-name", database, "--workers", "1", *options]
    process = subprocess.Popen(command, cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                               env={**os.environ, "PGPASSWORD": DB_PASSWORD, **(env or {})})
    try:
        yield RegistryServer(f"http://127.0.0.1:{port}", process, log, artifacts)
    finally:
        process.terminate()  # passed on to the server (SIGKILL would leave it running)
        try:
            code = process.wait(30)
        finally:
            kill(process)
            _drop(database)
    assert code == 0, log.read_text()[-3000:]
    assert not reachable("127.0.0.1", port), "the server outlived iotml registry serve"


def test_the_database_password_reaches_the_server_only_as_pgpassword(tmp_path):
    env = {"IOTML_REGISTRY_DB": f"postgresql://iotml:{DB_PASSWORD}@db.plant:6543/registry?sslmode=require",
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "key"}
    options = ServerOptions(tmp_path / "artifacts", basic_auth=True)
    child = server_environment(backend_store(env, "other"), options, env, tmp_path)
    assert child["MLFLOW_BACKEND_STORE_URI"] == "postgresql+psycopg://iotml@db.plant:6543/other?sslmode=require"
    assert child["PGPASSWORD"] == DB_PASSWORD and "IOTML_REGISTRY_DB" not in child
    assert DB_PASSWORD not in " ".join(server_command(options)) + (tmp_path / "basic_auth.ini").read_text()
    libpq = backend_store({"PGUSER": "iotml", "PGHOST": "db.plant", "PGPORT": "6543", "PGPASSWORD": DB_PASSWORD})
    assert libpq.render_as_string(hide_password=False) == "postgresql+psycopg://iotml@db.plant:6543/iotml_registry"


def _train_through(tracking: str, folder: Path) -> None:
    """`iotml train` with the server as its tracking URI: the run, its metrics and plots, and the version go there."""
    start = 1767225600.0
    write_frame(simulate_fleet(3, 1200, seed=5, start=start, fault_rate=0), folder / "train.csv")
    write_frame(simulate_fleet(3, 600, seed=5, start=start + 1200, fault_rate=4), folder / "eval.csv")
    assert main(["train", "--train-data", str(folder / "train.csv"), "--eval-data", str(folder / "eval.csv"),
                 "--work-dir", str(folder / "train-work"), "--set", "training.epochs=3",
                 "--set", f"model.tracking_uri={tracking}", "--set", "model.uri=models:/server-trained@champion"]) == 0
    version = show_version(tracking, "server-trained", "1")
    assert version.source.startswith("mlflow-artifacts:/") and "champion" in version.aliases
    assert "eval_f1" in version.metrics and not (folder / "train-work" / "mlartifacts").exists()


def _timed(action):
    began = time.monotonic()
    return action(), time.monotonic() - began


def test_versions_register_resolve_and_hot_swap_through_the_server(shared_broker, tmp_path, fleet_devices,  # noqa: F811
                                                                 request):
    with registry_server(tmp_path) as server:
        trained = request.getfixturevalue("trained")  # the model trains (once per session) while the server starts
        started_s = server.wait()
        tracking, first = server.url, trained.version
        second = variant(first, tmp_path / "v2", threshold=4 * first.threshold)
        _, register_s = _timed(lambda: [register(tracking, tmp_path, NAME, version) for version in (first, second)])
        sources = [show_version(tracking, NAME, number).source for number in ("1", "2")]
        assert all(source.startswith("mlflow-artifacts:/") for source in sources), sources
        assert not (tmp_path / "mlartifacts").exists() and len(list(server.artifacts.rglob("manifest.json"))) == 2

        resolved, download_s = _timed(lambda: resolve_model_version(f"models:/{NAME}@champion", tracking,
                                                                    tmp_path / "cache"))
        assert (resolved.version, resolved.threshold) == ("1", first.threshold)
        assert "GET /api/2.0/mlflow-artifacts/artifacts/" in server.log.read_text()
        _, train_s = _timed(lambda: _train_through(tracking, tmp_path))

        stream = Stream(tmp_path, shared_broker[1], first.path, fleet_devices)
        stream.overrides.update({"model.uri": f"models:/{NAME}@champion", "model.tracking_uri": tracking,
                                 "model.watch_s": WATCH_S, "work_dir": str(tmp_path / "work")})
        process, log = stream.start()
        try:
            published, totals, promoted_at = publish_while(
                stream, process, log, lambda: promote_and_wait(tracking, NAME, "2", process, log))
        finally:
            kill(process)
    _, summary = swapped_predictions(stream, published, totals, promoted_at, fleet_devices, within_s=30)
    print(f"\nregistry server: answered {started_s:.1f} s after launch (training alongside); {register_s:.2f} s per "
          f"version registered, champion downloaded in {download_s:.2f} s, iotml train through it {train_s:.1f} s; "
          f"hot swap: {summary}")


def test_basic_auth_lets_in_clients_with_mlflow_credentials_from_the_environment(tmp_path, request, monkeypatch):
    pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs Flask-WTF (pip install 'mlflow[auth]')")
    for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    secrets = {"MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD, "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex}
    with registry_server(tmp_path, "--basic-auth", env=secrets) as server:
        trained = request.getfixturevalue("trained")
        started_s = server.wait()
        with pytest.raises(ConnectionError, match="401"):
            check_tracking_server(server.url)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
        with pytest.raises(ConnectionError, match="401"):
            check_tracking_server(server.url)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
        check_tracking_server(server.url)
        _, register_s = _timed(lambda: register(server.url, tmp_path, NAME, trained.version))
        resolved, download_s = _timed(lambda: resolve_model_version(f"models:/{NAME}@champion", server.url,
                                                                    tmp_path / "cache"))
    print(f"\nbasic-auth: answered {started_s:.1f} s after launch; a version registered in {register_s:.2f} s, "
          f"downloaded in {download_s:.2f} s")
    assert resolved.version == "1"
    assert "basic-auth on" in server.log.read_text()
