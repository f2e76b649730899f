"""Experiment trackers through the Trainer (train.report_to): a real MLflow store, and the one-line errors."""

import json

import pytest
import yaml

from conftest import write_config


def test_mlflow_run_holds_lorafit_config_and_every_evaluation(cli, tiny_config, tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="pip install mlflow-skinny (in lorafit's dev extra)")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # what a user sets; the Trainer's MLflowCallback reads it
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "lorafit-tests")
    result = cli("train", tiny_config, "--train.report_to", "mlflow,tensorboard")
    assert result.code == 0, result.err

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("lorafit-tests")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "tiny" and run.info.status == "FINISHED"
    params = run.data.params
    assert params["lorafit.lora.r"] == "4" and params["lorafit.train.max_steps"] == "12"
    assert params["lorafit.train.report_to"] == "['mlflow', 'tensorboard']"
    assert params["learning_rate"] == "0.001"  # the Trainer's own arguments are there too

    run_dir = tmp_path / "runs" / "tiny"
    curve = [json.loads(line) for line in (run_dir / "eval_curve.jsonl").read_text().splitlines()]
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "eval_accuracy"))
    assert history == [(row["step"], pytest.approx(row["accuracy"])) for row in curve]
    assert [step for step, _ in history] == [6, 12]  # one entry per evaluation
    # TensorBoard, named beside it, still writes into the run folder
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_report_to_becomes_the_trainers_report_to_and_run_name(tiny_config, tmp_path):
    from lorafit.config import load_config
    from lorafit.train import _installed, trackers, training_arguments

    def args(report_to):
        return training_arguments(load_config(tiny_config, {"train.report_to": report_to}), tmp_path / "run")

    assert trackers(["auto"]) == (["tensorboard"] if _installed("tensorboard") else [])
    assert args("none").report_to == [] and args("auto").report_to == []  # TensorBoard is lorafit's own callback
    if _installed("mlflow"):
        named = args("mlflow,tensorboard")
        assert named.report_to == ["mlflow"] and named.run_name == "tiny"


def test_tracker_mistakes_are_one_line_errors_before_anything_is_written(cli, tiny_config, tmp_path, tiny_roberta,
                                                                         small_agnews):
    from lorafit.train import TRACKER_PACKAGES, _installed

    missing = next(name for name, (module, _) in TRACKER_PACKAGES.items() if not _installed(module))
    result = cli("train", tiny_config, "--train.report_to", missing)
    assert result.code == 2
    assert result.err.count("\n") == 1 and f"report_to names {missing}, which is not installed" in result.err
    assert f"pip install {TRACKER_PACKAGES[missing][1]}" in result.err
    assert not (tmp_path / "runs").exists()

    typo = cli("train", tiny_config, "--train.report_to", "mlfow")
    assert typo.code == 2 and "did you mean 'mlflow'" in typo.err
    alone = cli("train", tiny_config, "--train.report_to", "none,mlflow")
    assert alone.code == 2 and "'none' stands alone" in alone.err

    # a sweep fails as a whole before any trial (every trial would fail the same way)
    base = yaml.safe_load(tiny_config.read_text())
    sweep = write_config(tmp_path / "sweep.yaml", name="tracked", base=base,
                         overrides={"train.report_to": missing}, grid={"axes": {"lora.r": [2]}})
    swept = cli("sweep", sweep, "--output-dir", tmp_path / "sweeps")
    assert swept.code == 2 and "which is not installed" in swept.err
    assert not (tmp_path / "sweeps").exists()


def test_a_resumed_runs_tensorboard_shows_each_step_once(cli, tmp_path, tiny_roberta, small_agnews):
    """A hard kill after step 4's logs but before its checkpoint was kept: the resumed run logs steps 3-4 again.
    Its writer marks the resume step (purge_step), so TensorBoard shows each step once, the resumed run's values."""
    pytest.importorskip("tensorboard", reason="pip install tensorboard (lorafit's tensorboard extra)")
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from conftest import tiny_run_config

    config = tiny_run_config(tmp_path, small_agnews, model=tiny_roberta, logging_steps=1, report_to=["tensorboard"])
    assert cli("train", config).code == 0
    run_dir = tmp_path / "runs" / "tiny"
    # what a SIGKILL in step 4's save leaves: steps 1-4 logged, the checkpoint of step 2 the last whole one
    shutil.rmtree(run_dir / "checkpoints" / "checkpoint-4")
    shutil.rmtree(run_dir / "adapter")
    (run_dir / "result.json").unlink()
    resumed = cli("train", config)
    assert resumed.code == 0, resumed.err
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    for tag in ("train/loss", "eval/accuracy"):
        steps = [event.step for event in events.Scalars(tag)]
        assert steps == sorted(set(steps)), (tag, steps)
    assert [event.step for event in events.Scalars("train/loss")] == [1, 2, 3, 4]
    final = json.loads((run_dir / "result.json").read_text())["final_eval_accuracy"]
    assert events.Scalars("eval/accuracy")[-1].value == pytest.approx(final)
