"""``iotml registry serve``: MLflow's tracking server on PostgreSQL, with its artifacts proxied (``mlflow-artifacts:``).

Runs ``mlflow server`` with a PostgreSQL backend store (runs, the model registry and, with ``--basic-auth``, MLflow's
users) and a local artifact folder that clients reach only through the server, so a training or streaming host needs
the server's URL and no access to its files. Credentials come from the environment only, never from the command line
or a file: the database from ``IOTML_REGISTRY_DB`` (a SQLAlchemy URI) or libpq's ``PGUSER``, ``PGPASSWORD``,
``PGHOST``, ``PGPORT``, ``PGDATABASE``; the server's processes get the database password as ``PGPASSWORD`` (the store
URI they see carries none, and neither does the basic-auth config file written for them); clients authenticate with
MLflow's ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (or ``MLFLOW_TRACKING_TOKEN``).

Own code around ``mlflow server`` because it creates no database and takes its store URI, password included, on its
command line (visible to every user of the host): here the database is created when missing, the URI travels in the
environment without its password, and everything the server writes is masked before it is shown, in case a library
quotes a credential.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from sqlalchemy.engine import URL, make_url

from inference_pipeline.connectors.mqtt.redact import RedactingStream
from model_handlers.resolve import without_credentials

DB_VARIABLE = "IOTML_REGISTRY_DB"
DEFAULT_DATABASE = "iotml_registry"
MAINTENANCE_DATABASE = "postgres"
DRIVER = "postgresql+psycopg"
# Secrets the server's environment may hold: masked in everything it prints.
SECRET_VARIABLES = ("PGPASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY",
                    "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """Where the server listens, where its artifacts live, which database holds its runs and registry."""

    artifacts: Path
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 4
    db_name: str | None = None
    basic_auth: bool = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def backend_store(env: Mapping[str, str], db_name: str | None = None) -> URL:
    """The backend store: ``IOTML_REGISTRY_DB``, else built from libpq's variables (user ``postgres`` at
    127.0.0.1:5432 by default; a password stays in ``PGPASSWORD``, where libpq reads it); ``db_name`` replaces its
    database (default ``iotml_registry``). ValueError for anything but PostgreSQL."""
    if env.get(DB_VARIABLE):
        url = make_url(env[DB_VARIABLE])
    else:
        url = URL.create(DRIVER, username=env.get("PGUSER") or "postgres", host=env.get("PGHOST") or "127.0.0.1",
                         port=int(env.get("PGPORT") or 5432), database=env.get("PGDATABASE"))
    if url.get_backend_name() != "postgresql":
        raise ValueError(f"{DB_VARIABLE}: a postgresql:// URI is expected, not {url.drivername}://")
    if url.drivername == "postgresql":  # SQLAlchemy's default driver (psycopg2) is not installed; psycopg 3 is
        url = url.set(drivername=DRIVER)
    return url.set(database=db_name or url.database or DEFAULT_DATABASE)


def _where(url: URL) -> str:
    return without_credentials(url.render_as_string(hide_password=False))


def create_database(url: URL, env: Mapping[str, str] = os.environ) -> bool:
    """Create ``url``'s database unless it exists (connected to the server's maintenance database; the password is
    the URI's, else ``env``'s ``PGPASSWORD``); whether it was created. ConnectionError naming the server (never the
    password) when PostgreSQL refuses."""
    import psycopg
    from psycopg import sql

    password = url.password or env.get("PGPASSWORD")
    params = {"host": url.host, "port": url.port, "user": url.username, "password": password}
    params.update({key: value for key, value in url.query.items() if isinstance(value, str)})
    params = {key: value for key, value in params.items() if value is not None}
    try:
        with psycopg.connect(dbname=MAINTENANCE_DATABASE, autocommit=True, connect_timeout=10, **params) as db:
            if db.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.database,)).fetchone():
                return False
            db.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(url.database)))
            return True
    except psycopg.Error as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if password:
            first_line = first_line.replace(password, "***")
        raise ConnectionError(f"PostgreSQL for the registry ({_where(url)}) is not usable: {first_line}") from None


def server_command(options: ServerOptions) -> list[str]:
    """``mlflow server`` proxying artifacts from ``options.artifacts`` (the store URI is not in it: see
    ``server_environment``)."""
    command = [sys.executable, "-m", "mlflow", "server", "--host", options.host, "--port", str(options.port),
               "--workers", str(options.workers), "--serve-artifacts",
               "--artifacts-destination", str(options.artifacts.resolve())]
    return command + (["--app-name", "basic-auth"] if options.basic_auth else [])


def server_environment(url: URL, options: ServerOptions, env: Mapping[str, str], folder: Path) -> dict[str, str]:
    """The server's environment: the store URI without its password (``MLFLOW_BACKEND_STORE_URI``), the password
    as ``PGPASSWORD``, MLflow's telemetry and job runner off unless set, and with ``basic_auth`` a config file in
    ``folder`` keeping MLflow's users in the same database (the admin's password comes from
    ``MLFLOW_AUTH_ADMIN_PASSWORD``) and caching a checked password for 60 s (each check is a deliberately slow hash:
    uncached, every request waits for one; a password changed through the API takes up to that long to reach the
    other workers)."""
    store = url._replace(password=None).render_as_string(hide_password=False)
    child = {name: value for name, value in env.items() if name != DB_VARIABLE}
    child["MLFLOW_BACKEND_STORE_URI"] = store
    child.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    child.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # GenAI scoring jobs: eight idle processes here
    if url.password:
        child["PGPASSWORD"] = url.password
    if options.basic_auth:
        if not env.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
            raise ValueError("--basic-auth needs MLFLOW_FLASK_SERVER_SECRET_KEY in the environment (and, on the "
                             "first start, MLFLOW_AUTH_ADMIN_PASSWORD for the admin user it creates)")
        config = folder / "basic_auth.ini"
        config.write_text("[mlflow]\ndefault_permission = READ\nadmin_username = admin\n"
                          f"database_uri = {store.replace('%', '%%')}\n"
                          "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                          "auth_cache_ttl_seconds = 60\n")
        child["MLFLOW_AUTH_CONFIG_PATH"] = str(config)
    return child


def wait_until_healthy(url: str, timeout_s: float = 60, process: subprocess.Popen | None = None) -> float:
    """Seconds until ``url``/health answers OK; RuntimeError if ``process`` exits first, TimeoutError after
    ``timeout_s``."""
    started = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the registry server exited with code {process.returncode} before answering")
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"the registry server at {url} did not answer /health within {timeout_s:.0f} s")
        time.sleep(0.2)


def serve(options: ServerOptions, env: Mapping[str, str] = os.environ, out: TextIO = sys.stdout) -> int:
    """Create the database if missing and run the server in the foreground until it stops (SIGINT and SIGTERM are
    passed on to it); its output goes to ``out`` with every credential masked. The server's exit code."""
    url = backend_store(env, options.db_name)
    masked = RedactingStream(out, [url.password, *(env.get(name) for name in SECRET_VARIABLES)])
    with tempfile.TemporaryDirectory(prefix="iotml-registry-") as folder:
        child_env = server_environment(url, options, env, Path(folder))
        created = create_database(url, env)
        options.artifacts.mkdir(parents=True, exist_ok=True)
        masked.write(f"registry server: {options.url} (backend {_where(url)}{', created' if created else ''}; "
                     f"artifacts {options.artifacts.resolve()}; basic-auth {'on' if options.basic_auth else 'off'})\n")
        masked.flush()
        process = subprocess.Popen(server_command(options), env=child_env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1, process_group=0)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda number, _frame: process.send_signal(number))
        for line in process.stdout:
            masked.write(line)
            masked.flush()
        return process.wait()
