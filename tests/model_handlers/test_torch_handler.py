import numpy as np
import pytest
import torch

from features.schema import EventBatch, FeatureBatch
from model_handlers.model_version import ModelBundle
from model_handlers.networks import error_to_score, reconstruction_error
from model_handlers.torch_handler import TorchAnomalyHandler
from model_handlers.torch_model import padded_rows, resolve_device


def feature_batch(n, dim, seed):
    rng = np.random.default_rng(seed)
    events = EventBatch("d", np.arange(n).astype(str).astype(object), np.arange(n, dtype=float),
                        np.zeros((n, 1)), np.zeros(n))
    return FeatureBatch(events, rng.normal(size=(n, dim)).astype(np.float32), np.full(n, 30))


def test_one_forward_pass_scores_each_batch_separately(trained):
    handler = TorchAnomalyHandler(trained.bundle, device="cpu")
    model = handler.load_model()
    dim = len(trained.bundle.feature_spec.feature_names)
    batches = [feature_batch(n, dim, seed) for seed, n in enumerate((3, 1, 5))]
    results = list(handler.run_inference(batches, model))
    assert [len(r.inference[0]) for r in results] == [3, 1, 5]
    alone = model.errors(batches[2].features)
    assert np.allclose(results[2].inference[0], alone, rtol=1e-5)
    assert np.allclose(results[2].inference[1], error_to_score(alone, trained.bundle.threshold))
    assert results[0].model_id == f"{trained.bundle.name}/{trained.bundle.version}"


def test_forward_passes_run_on_a_few_padded_shapes_and_give_the_unpadded_errors(trained):
    sizes = range(1, 3000)
    assert len({padded_rows(n) for n in sizes}) == 5 + 2
    assert all(n <= padded_rows(n) < max(2 * n, 64 + n, n + 1024) for n in sizes)
    model = TorchAnomalyHandler(trained.bundle, device="cpu").load_model()
    features = feature_batch(37, len(trained.bundle.feature_spec.feature_names), 4).features
    with torch.inference_mode():
        unpadded = reconstruction_error(model.network, torch.from_numpy(features)).numpy()
    assert model.errors(features).shape == (37,)
    assert np.allclose(model.errors(features), unpadded, rtol=1e-5, atol=1e-7)


def test_bundle_weights_are_safetensors_not_pickles(trained):
    files = {p.name for p in trained.bundle.path.iterdir()}
    assert {"model.safetensors", "model.json", "transform"} <= files
    assert not any(name.endswith((".pt", ".pkl", ".pickle")) for name in files)
    reopened = ModelBundle.open(trained.bundle.path)
    assert reopened.feature_spec == trained.bundle.feature_spec


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_gpu_requested_without_cuda_fails_clearly():
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("gpu")
    assert resolve_device("auto").type == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_inference_matches_cpu(trained):
    dim = len(trained.bundle.feature_spec.feature_names)
    batch = [feature_batch(64, dim, 1)]
    cpu = TorchAnomalyHandler(trained.bundle, device="cpu")
    gpu = TorchAnomalyHandler(trained.bundle, device="gpu")
    gpu_model = gpu.load_model()
    assert gpu_model.device.type == "cuda"
    expected = list(cpu.run_inference(batch, cpu.load_model()))[0].inference[0]
    got = list(gpu.run_inference(batch, gpu_model))[0].inference[0]
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-6)
