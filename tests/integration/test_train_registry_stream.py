"""Train -> MLflow registry -> resolve champion -> stream, against the embedded MLflow store."""
from mlflow import MlflowClient

from inference_pipeline.builder import pipeline_options
from inference_pipeline.jobs.main_job import model_name
from model_handlers.resolve import resolve_model_version
from training.register import CHAMPION, register_run
from training.workflow import EVAL_METRIC, train_and_register


def test_training_registers_a_version_with_its_artifacts_and_champion_alias(trained):
    client = MlflowClient(tracking_uri=trained.config.tracking_uri, registry_uri=trained.config.tracking_uri)
    champion = client.get_model_version_by_alias("iot-anomaly", CHAMPION)
    assert str(champion.version) == trained.run.registration.version
    run = client.get_run(champion.run_id)
    assert EVAL_METRIC in run.data.metrics and "threshold" in run.data.metrics
    assert run.data.params["window"] == str(trained.config.features.window)
    artifacts = {a.path for a in client.list_artifacts(champion.run_id, "bundle")}
    assert {"bundle/model.safetensors", "bundle/model.json", "bundle/transform"} <= artifacts
    assert [a.path for a in client.list_artifacts(champion.run_id, "plots")] == ["plots/training.png"]
    assert trained.version.threshold == trained.run.metrics["threshold"]
    assert trained.run.metrics["eval_precision"] > 0.5 and trained.run.metrics["eval_recall"] > 0.3


def test_champion_moves_only_when_better_or_promoted(trained):
    config = trained.config
    before = resolve_model_version(config.model.uri, config.tracking_uri, config.work_path / "models")
    weaker = config.training.model_copy(update={"epochs": 1})
    second = train_and_register(trained.data.train, trained.data.eval, config.features, weaker, config.work_path,
                                config.tracking_uri, model_name(config), pipeline_options(config), progress=False)
    better = second.metrics[EVAL_METRIC] > trained.run.metrics[EVAL_METRIC]
    assert second.registration.promoted == better
    now = resolve_model_version(config.model.uri, config.tracking_uri, config.work_path / "models")
    assert now.version == (second.registration.version if better else before.version)

    forced = register_run(config.tracking_uri, config.training.experiment, config.work_path / "mlartifacts",
                          "iot-anomaly", trained.version.path, {}, {EVAL_METRIC: -1.0}, [], EVAL_METRIC, promote=True)
    assert forced.promoted and "--promote" in forced.reason
    assert resolve_model_version(config.model.uri, config.tracking_uri, config.work_path / "models").version == forced.version
    pinned = resolve_model_version(f"models:/iot-anomaly/{before.version}", config.tracking_uri, config.work_path / "models")
    assert pinned.version == before.version
