"""A tracking server that does not answer fails training before any work, quickly, naming the host only."""
import socket
import time

import pytest

from training.register import check_tracking_server


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_tracking_server_fails_at_once_without_its_password():
    port = closed_port()
    started = time.monotonic()
    with pytest.raises(ConnectionError) as failure:
        check_tracking_server(f"http://alice:s3cret-pw@127.0.0.1:{port}")
    message = str(failure.value)
    assert f"MLflow tracking server at 127.0.0.1:{port} is not usable" in message
    assert "s3cret-pw" not in message and "\n" not in message
    assert time.monotonic() - started < 30


def test_a_local_store_needs_no_server(tmp_path):
    check_tracking_server(f"sqlite:///{tmp_path / 'mlflow.db'}")
    check_tracking_server(str(tmp_path / "mlruns"))
