import numpy as np
import pytest
import torch

from features.schema import EventBatch, FeatureBatch
from model_handlers.contract import ModelOutput, error_to_score
from model_handlers.networks import reconstruction_error
from model_handlers.torch_handler import TorchAnomalyHandler
from model_handlers.torch_model import padded_rows, resolve_device


def feature_batch(n, dim, seed):
    rng = np.random.default_rng(seed)
    events = EventBatch("d", np.arange(n).astype(str).astype(object), np.arange(n, dtype=float),
                        np.zeros((n, 1)), np.zeros(n))
    return FeatureBatch(events, rng.normal(size=(n, dim)).astype(np.float32), np.full(n, 30))


def test_one_forward_pass_scores_each_batch_separately(trained):
    handler = TorchAnomalyHandler(trained.version, device="cpu")
    model = handler.load_model()
    dim = len(trained.version.feature_spec.feature_names)
    batches = [feature_batch(n, dim, seed) for seed, n in enumerate((3, 1, 5))]
    results = list(handler.run_inference(batches, model))
    assert all(isinstance(r.inference, ModelOutput) for r in results)
    assert [len(r.inference) for r in results] == [3, 1, 5]
    alone = model.score(batches[2].features)
    assert np.allclose(results[2].inference.raw_score, alone.raw_score, rtol=1e-5)
    assert np.allclose(results[2].inference.anomaly_score, error_to_score(alone.raw_score, trained.version.threshold))
    assert results[0].model_id == f"{trained.version.name}/{trained.version.version}"
    assert results[0].inference.model.transform_id == trained.version.transform_id


def test_sensor_contributions_are_each_sensors_share_of_the_error(trained):
    model = TorchAnomalyHandler(trained.version, device="cpu").load_model()
    spec = trained.version.feature_spec
    features = feature_batch(6, len(spec.feature_names), 2).features
    features[:, 0] += 50.0
    output = model.score(features)
    assert output.sensor_names == spec.sensors
    assert np.allclose(output.sensor_contributions.sum(axis=1), 1.0)
    assert (output.sensor_contributions.argmax(axis=1) == 0).all()
    with torch.inference_mode():
        x = torch.from_numpy(features)
        squared = ((model.network(x) - x) ** 2).numpy()
    per_sensor = squared.reshape(len(features), len(spec.sensors), len(spec.stats)).sum(axis=2)
    assert np.allclose(output.sensor_contributions, per_sensor / per_sensor.sum(axis=1, keepdims=True), rtol=1e-5)
    assert np.allclose(output.raw_score, squared.mean(axis=1), rtol=1e-5)


def test_forward_passes_run_on_a_few_padded_shapes_and_give_the_unpadded_errors(trained):
    sizes = range(1, 3000)
    assert len({padded_rows(n) for n in sizes}) == 5 + 2
    assert all(n <= padded_rows(n) < max(2 * n, 64 + n, n + 1024) for n in sizes)
    model = TorchAnomalyHandler(trained.version, device="cpu").load_model()
    features = feature_batch(37, len(trained.version.feature_spec.feature_names), 4).features
    with torch.inference_mode():
        unpadded = reconstruction_error(model.network, torch.from_numpy(features)).numpy()
    assert model.score(features).raw_score.shape == (37,)
    assert np.allclose(model.score(features).raw_score, unpadded, rtol=1e-5, atol=1e-7)


def test_weights_are_safetensors_not_pickles(trained):
    files = {p.name for p in trained.version.path.iterdir()}
    assert "model.safetensors" in files
    assert not any(name.endswith((".pt", ".pkl", ".pickle")) for name in files)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_gpu_requested_without_cuda_fails_clearly():
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("gpu")
    assert resolve_device("auto").type == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_inference_matches_cpu(trained):
    dim = len(trained.version.feature_spec.feature_names)
    batch = [feature_batch(64, dim, 1)]
    cpu = TorchAnomalyHandler(trained.version, device="cpu")
    gpu = TorchAnomalyHandler(trained.version, device="gpu")
    gpu_model = gpu.load_model()
    assert gpu_model.device.type == "cuda"
    expected = list(cpu.run_inference(batch, cpu.load_model()))[0].inference.raw_score
    got = list(gpu.run_inference(batch, gpu_model))[0].inference.raw_score
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-6)
