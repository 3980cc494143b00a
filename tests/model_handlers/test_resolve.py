"""Registry references resolve to model versions; a failed lookup names the registry without its credentials."""
import mlflow
import pytest

from model_handlers import resolve


def test_a_failed_lookup_never_prints_the_registry_password(monkeypatch, tmp_path):
    tracking = "postgresql://iotml:url-pa55word@db.example:5432/mlflow"

    class Unreachable:
        def __init__(self, **kwargs):
            pass

        def get_model_version_by_alias(self, name, alias):
            raise mlflow.exceptions.MlflowException(f"could not connect to {tracking}")

    monkeypatch.setattr(mlflow, "MlflowClient", Unreachable)
    with pytest.raises(LookupError) as error:
        resolve.resolve_model_version("models:/iot-anomaly@champion", tracking, tmp_path)
    message = str(error.value)
    assert "url-pa55word" not in message and "iotml@" not in message
    assert "postgresql://db.example:5432/mlflow" in message


def test_parse_model_uri_by_alias_and_by_version():
    assert resolve.parse_model_uri("models:/m@champion") == ("m", "champion", None)
    assert resolve.parse_model_uri("models:/m/3") == ("m", None, "3")
