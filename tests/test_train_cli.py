"""train -> evaluate -> predict on a tiny random RoBERTa: the run folder contract and the CLI forms."""

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import write_config


@pytest.fixture
def trained_run(cli, tiny_config, tmp_path):
    result = cli("train", tiny_config)
    assert result.code == 0, result.err
    return tmp_path / "runs" / "tiny", json.loads(result.out)


def test_run_folder_holds_everything_a_user_reads(trained_run):
    run, printed = trained_run
    result = json.loads((run / "result.json").read_text())
    for key in ("best_eval_accuracy", "trainable_params", "train_examples_per_second", "status",
                "final_eval_accuracy", "best_step", "global_step"):
        assert key in result
    assert result["status"] == "completed" and result["global_step"] == 12
    assert printed["best_eval_accuracy"] == result["best_eval_accuracy"]
    curve = [json.loads(line) for line in (run / "eval_curve.jsonl").read_text().splitlines()]
    assert [row["step"] for row in curve] == [6, 12]
    assert result["best_eval_accuracy"] == max(row["accuracy"] for row in curve)
    assert result["final_eval_accuracy"] == curve[-1]["accuracy"]

    manifest = json.loads((run / "manifest.json").read_text())
    assert {"torch", "transformers", "peft"} <= set(manifest["versions"])
    assert manifest["data"]["train_rows"] + manifest["data"]["eval_rows"] == 600
    assert manifest["data"]["eval_rows"] == 60  # min(5000, 10% of 600), stratified
    assert manifest["trainable_params"]["total"] == result["trainable_params"]
    assert manifest["wall_seconds"] > 0 and manifest["device"].startswith(("cpu", "cuda"))

    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["lora"]["r"] == 4 and resolved["train"]["max_steps"] == 12
    assert json.loads((run / "labels.json").read_text()) == ["0", "1", "2", "3"]
    adapter = run / "adapter"
    assert (adapter / "adapter_model.safetensors").exists() and (adapter / "adapter_config.json").exists()
    assert not list(adapter.glob("*.bin")), "weights are saved as safetensors only"


def test_validation_split_is_stratified_and_seeded(tiny_config, small_agnews):
    from lorafit.config import load_config
    from lorafit.data import carve_validation, load_labelled

    cfg = load_config(tiny_config)
    data = load_labelled(cfg.data, 4, path=str(small_agnews))
    train_a, eval_a = carve_validation(data, cfg.data, seed=1)
    train_b, eval_b = carve_validation(data, cfg.data, seed=1)
    assert eval_a.texts == eval_b.texts and not set(eval_a.texts) & set(train_a.texts)
    share = np.bincount(data.labels, minlength=4) / len(data)
    eval_share = np.bincount(eval_a.labels, minlength=4) / len(eval_a)
    assert np.abs(share - eval_share).max() < 0.03


def test_evaluate_writes_metrics_and_confusion_png(cli, trained_run, small_agnews):
    run, _ = trained_run
    result = cli("evaluate", run, "--data", small_agnews, "--json")
    assert result.code == 0, result.err
    metrics = json.loads(result.out)
    assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["macro_f1"] <= 1
    assert np.asarray(metrics["confusion_matrix"]).sum() == 600
    assert set(metrics["per_class"]) == {"0", "1", "2", "3"}
    assert (run / "evaluation" / "small.json").exists()
    assert (run / "evaluation" / "small-confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = cli("evaluate", run, "--data", small_agnews)
    assert "accuracy" in table.out and "confusion matrix" in table.out


def test_predict_from_a_pickled_dataset_keeps_every_row_in_order(cli, trained_run, small_agnews, tmp_path):
    import datasets

    run, _ = trained_run
    texts = pd.read_csv(small_agnews)["text"].tolist()[:40]
    path = tmp_path / "test_unlabelled.pkl"
    with open(path, "wb") as handle:
        pickle.dump(datasets.Dataset.from_dict({"text": texts}), handle)
    out = tmp_path / "submission.csv"
    refused = cli("predict", run, "--input", path, "--output", out)
    assert refused.code == 2 and "--trust-pickle" in refused.err and not out.exists()

    result = cli("predict", run, "--input", path, "--output", out, "--trust-pickle", "--probabilities")
    assert result.code == 0, result.err
    submission = pd.read_csv(out)
    assert list(submission.columns[:2]) == ["ID", "Label"] and submission["ID"].tolist() == list(range(40))
    # Each row's label is what the model says for that text alone: order survived length sorting.
    from lorafit.predict import load_run, predict_probabilities

    loaded = load_run(run)
    one_by_one = [int(predict_probabilities(loaded.model, loaded.tokenizer, [t], 64).argmax()) for t in texts[:10]]
    assert submission["Label"].tolist()[:10] == one_by_one
    probs = submission[[f"prob_{i}" for i in range(4)]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-3)


def test_string_labels_and_joined_text_columns(cli, tmp_path, tiny_roberta, agnews_prefix):
    """train_prefix2000.csv has title + description; labels given as names map to fixed ids."""
    names = ["World", "Sports", "Business", "Sci/Tech"]
    frame = pd.read_csv(agnews_prefix).head(300)
    frame["label"] = [names[i] for i in frame["label"]]
    data = tmp_path / "named.csv"
    frame.to_csv(data, index=False)
    config = write_config(
        tmp_path / "named.yaml", name="named", output_dir=str(tmp_path / "runs"),
        model={"name_or_path": str(tiny_roberta)}, lora={"r": 2, "target_modules": ["value"]},
        data={"train_file": str(data), "text_columns": ["title", "description"], "label_names": names},
        train={"max_steps": 4, "batch_size": 8, "eval_steps": 4},
    )
    result = cli("train", config)
    assert result.code == 0, result.err
    assert json.loads((tmp_path / "runs/named/labels.json").read_text()) == names
    assert json.loads((tmp_path / "runs/named/adapter/adapter_config.json").read_text())["task_type"] == "SEQ_CLS"


def test_cli_shortcuts_and_dotted_overrides(cli, tiny_config, tmp_path, small_agnews):
    result = cli("train", tiny_config, "--output-dir", tmp_path / "elsewhere", "--name", "short",
                 "--train.max_steps", "3", "--train.eval_steps=3", "--lora.r", "2")
    assert result.code == 0, result.err
    resolved = yaml.safe_load((tmp_path / "elsewhere/short/config.yaml").read_text())
    assert resolved["train"]["max_steps"] == 3 and resolved["lora"]["r"] == 2
    again = cli("train", tiny_config, "--output-dir", tmp_path / "elsewhere", "--name", "short",
                "--train.max_steps", "3", "--train.eval_steps=3", "--lora.r", "2")
    assert again.code == 2 and "already holds a finished run" in again.err


def test_run_folder_mistakes_are_said_before_the_model_loads(cli, tiny_config, tmp_path, monkeypatch):
    """A finished run, another config, nothing to resume: said before the model loads (before, after it: a
    download and a minute of waiting on roberta-base for a one-line mistake)."""
    from lorafit import train

    assert cli("train", tiny_config, "--train.max_steps", "2", "--train.eval_steps", "2").code == 0

    def no_loading(*args, **kwargs):
        raise AssertionError("the model loaded")

    monkeypatch.setattr(train, "load_pretrained_model", no_loading)
    again = cli("train", tiny_config, "--train.max_steps", "2", "--train.eval_steps", "2")
    assert again.code == 2 and "already holds a finished run" in again.err
    other = cli("train", tiny_config, "--train.max_steps", "3")
    assert other.code == 2 and "holds a run with a different config" in other.err
    nothing = cli("train", tiny_config, "--name", "never-trained", "--resume")
    assert nothing.code == 2 and "nothing to resume" in nothing.err
    assert not (tmp_path / "runs" / "never-trained").exists()


def test_python_dash_m_entry_point(tmp_path):
    from conftest import run_subprocess

    done = run_subprocess("--help")
    assert done.returncode == 0 and "budget" in done.stdout and "predict" in done.stdout
    missing = run_subprocess("train", tmp_path / "nope.yaml")
    assert missing.returncode == 2 and "config file not found" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_gradient_accumulation_logs_the_same_losses_as_one_big_batch(cli, tmp_path, tiny_roberta, small_agnews,
                                                                      label_smoothing):
    """2 x 4 rows accumulated is one step of 8: same training loss, same validation loss (the Trainer once summed
    the accumulated losses of classification models instead of averaging them, doubling what it logged)."""
    def run(name, batch_size, accumulation):
        config = write_config(
            tmp_path / f"{name}.yaml", name=name, output_dir=str(tmp_path / "runs"),
            model={"name_or_path": str(tiny_roberta)},
            lora={"r": 4, "alpha": 8, "target_modules": ["query", "value"], "dropout": 0.0},
            data={"train_file": str(small_agnews), "max_train_samples": 96},
            train={"max_steps": 4, "batch_size": batch_size, "gradient_accumulation_steps": accumulation,
                   "eval_steps": 4, "logging_steps": 4, "learning_rate": 1e-2, "warmup_steps": 0,
                   "group_by_length": False, "precision": "fp32", "label_smoothing": label_smoothing})
        assert cli("train", config).code == 0
        return json.loads((tmp_path / "runs" / name / "eval_curve.jsonl").read_text().splitlines()[-1])

    big = run("big", 8, 1)
    accumulated = run("accumulated", 4, 2)
    # the base model's own dropout draws differ between the two batchings: equal within 2%, where the bug gave 2x
    assert big["train_loss"] == pytest.approx(accumulated["train_loss"], rel=0.02)
    assert big["loss"] == pytest.approx(accumulated["loss"], rel=0.02)
    assert 1.0 < big["loss"] < 2.0  # near ln 4 for 4 labels: a mean, not a sum


def test_training_and_prediction_keep_attention_off_cudnn(cli, tiny_config, tmp_path, small_agnews, monkeypatch):
    """cuDNN attention builds a plan per new batch shape (~0.1 s on an H200), and lorafit's dynamically padded
    batches nearly all differ: every forward pass of train, evaluation and predict must run with it off, and the
    global flag must be back as it was afterwards (lorafit is also used as a library)."""
    import functools

    import torch
    from transformers.models.roberta import modeling_roberta

    seen = []
    forward = modeling_roberta.RobertaForSequenceClassification.forward

    @functools.wraps(forward)  # the Trainer reads the signature to pick the batch's columns
    def recording_forward(self, *args, **kwargs):
        seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(modeling_roberta.RobertaForSequenceClassification, "forward", recording_forward)
    torch.backends.cuda.enable_cudnn_sdp(True)
    assert cli("train", tiny_config).code == 0
    assert cli("predict", tmp_path / "runs" / "tiny", "--input", small_agnews, "--output", tmp_path / "p.csv").code == 0
    assert len(seen) > 12 and not any(seen), f"{sum(seen)} of {len(seen)} forward passes allowed cuDNN attention"
    assert torch.backends.cuda.cudnn_sdp_enabled()
