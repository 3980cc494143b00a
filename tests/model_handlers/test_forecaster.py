"""The PatchTST forecaster: it replaces each channel's newest readings by their forecast from the lags before them (and
nothing else), serves through the `transformers` kind only, scores the same as its MLflow pyfunc model, and learns
the fleet's normal dynamics (faults forecast worse than normal rows)."""
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from model_handlers.forecaster import lag_columns, load_forecaster
from model_handlers.torch_handler import TorchSettings, torch_handler
from model_handlers.transformers_handler import TransformersHandler, TransformersSettings, transformers_handler


def test_the_forecast_replaces_only_the_newest_readings(trained_forecaster):
    version = trained_forecaster.version
    spec = version.feature_spec
    network = load_forecaster(version)
    x = torch.randn(5, len(spec.feature_names))
    with torch.inference_mode():
        out = network(x)
        past, target = lag_columns(spec)
        expected = network.model(past_values=x[:, past]).prediction_outputs  # (rows, horizon, channels)
    assert len(past) == len(target) == spec.lags // 2
    others = np.setdiff1d(np.arange(x.shape[1]), np.ravel(target))
    assert torch.equal(out[:, others], x[:, others])
    assert torch.allclose(out[:, np.ravel(target)], expected.reshape(5, -1))
    assert [spec.feature_names[i] for i in past[0]] == [f"{c}__lag{spec.lags - 1}" for c in spec.channels]
    assert [spec.feature_names[i] for i in target[-1]] == [f"{c}__lag0" for c in spec.channels]


def test_only_the_transformers_kind_serves_it_and_it_scores_as_its_pyfunc_model(trained_forecaster, trained):
    version = trained_forecaster.version
    with pytest.raises(ValueError, match="set model.handler to the kind that serves it"):
        torch_handler(TorchSettings(), version)
    with pytest.raises(ValueError, match="transformers serves 'patchtst'"):
        transformers_handler(TransformersSettings(), trained.version)
    handler = transformers_handler(TransformersSettings(device="cpu"), version)
    assert isinstance(handler, TransformersHandler) and handler.get_metrics_namespace() == "iotml_transformers"
    rows = np.random.default_rng(4).normal(size=(300, len(version.feature_spec.feature_names))).astype(np.float32)
    output = handler.score(rows, handler.load_model())
    frame = pd.DataFrame(rows, columns=version.feature_spec.feature_names)
    served = mlflow.pyfunc.load_model(str(version.path)).predict(frame)
    assert np.allclose(served["raw_score"], output.raw_score, rtol=1e-5)
    assert output.sensor_names == version.feature_spec.channels
    assert np.allclose(output.sensor_contributions.sum(axis=1), 1.0, atol=1e-5)


def test_it_learns_the_normal_dynamics(trained_forecaster):
    metrics = trained_forecaster.run.metrics
    prior = pd.read_parquet(trained_forecaster.data.eval)["label"].mean()
    assert metrics["eval_average_precision"] > 1.4 * prior, (metrics, prior)  # 4 epochs on a small fleet


def test_patches_longer_than_the_context_fail_at_load_naming_the_fields(tmp_path):
    from inference_pipeline.config import ConfigError, load_config
    from tests.conftest import REPO

    with pytest.raises(ConfigError, match=r"training.patchtst.patch_length \(4\) must be below .* \(4\)"):
        load_config(REPO / "configs" / "transformer.yaml", {"work_dir": str(tmp_path), "features.lags": 8,
                                                             "training.patchtst.patch_length": 4})
    with pytest.raises(ConfigError, match="features.lags is 1: a forecaster needs at least 2"):
        load_config(REPO / "configs" / "transformer.yaml", {"work_dir": str(tmp_path), "features.lags": 1})
