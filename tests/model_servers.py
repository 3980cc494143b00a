"""A real model server for the remote handler tests: ``mlflow models serve --env-manager local`` of a registered
version (or a version folder), on a free loopback port, stopped (or killed, for fault tests) on demand."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

MLFLOW = Path(sys.executable).with_name("mlflow")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ModelServer:
    """``mlflow models serve -m <model_uri>`` with the registry at ``tracking_uri``; its log in ``log``."""

    def __init__(self, model_uri: str, tracking_uri: str | None, log: Path, port: int | None = None):
        self.model_uri = model_uri
        self.tracking_uri = tracking_uri
        self.log = log
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/invocations"

    def start(self, timeout_s: float = 120) -> ModelServer:
        # the server execs ``uvicorn`` by name: this environment's bin folder first on its PATH
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PATH": f"{MLFLOW.parent}{os.pathsep}{os.environ['PATH']}"}
        for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # mlflow.set_*_uri in a test sets them
            env.pop(variable, None)
            if self.tracking_uri:
                env[variable] = self.tracking_uri
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [str(MLFLOW), "models", "serve", "-m", self.model_uri, "--env-manager", "local", "-h", "127.0.0.1",
                 "-p", str(self.port), "-w", "1"], env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mlflow models serve did not come up:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        return self

    def ready(self) -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{self.port}/ping", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def kill(self) -> None:
        """SIGKILL the server and its workers (a crash, not a shutdown)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
