"""The default config on the simulator's fault types, end to end (one fleet here; benchmarks/fault_types.py runs five
and the README has their table): every fault type caught, few false alerts, and each incident's top sensor one its
fault changed."""
from inference_pipeline.config import load_config
from inference_pipeline.jobs.fault_benchmark import fault_benchmark, fault_table
from tests.conftest import REPO
from training.simulate import FAULT_TYPES


def test_the_default_model_catches_every_fault_type_and_says_why(tmp_path):
    config = load_config(REPO / "configs" / "local.yaml", {"work_dir": str(tmp_path)})
    result = fault_benchmark(config, [0], devices=12, stream_s=3600.0, fault_rate=4.0, work=tmp_path)
    print("\n" + fault_table(result))
    incidents, explanations = result["incidents"], result["explanations"]
    assert sum(result["faults"].values()) >= 40 and all(result["faults"][kind] >= 6 for kind in FAULT_TYPES)
    assert all(incidents["recall_by_fault_type"][kind] >= 0.8 for kind in FAULT_TYPES), incidents
    assert incidents["precision"] >= 0.85
    assert explanations["share"] >= 0.8
