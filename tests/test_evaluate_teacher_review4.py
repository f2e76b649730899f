"""Regression tests for a review of lorafit.evaluate and lorafit.teacher: evaluate checks --data before it loads the
model, and refuses a folder where it writes its scores before it predicts; the teachers' prediction cache is keyed
by the precision the teachers predict in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import one_line_error
from lorafit import model, predict, teacher
from lorafit.errors import UserError


# --- evaluate: --data is read and checked before the model loads -------------------------------------------------

@pytest.fixture
def no_model_loading(monkeypatch):
    """Loading the model fails with a line of its own: any evaluation that gets that far says so."""
    def refuse(*args, **kwargs):
        raise UserError("MODEL LOADED")

    monkeypatch.setattr(predict, "load_adapter_for_inference", refuse)


def _csv(path: Path, **columns) -> Path:
    pd.DataFrame(columns).to_csv(path, index=False)
    return path


def test_a_data_file_without_the_runs_text_column_is_refused_before_the_model_loads(finished_copy, tmp_path, cli,
                                                                                      no_model_loading):
    data = _csv(tmp_path / "body.csv", label=[0, 1], body=["a", "b"])
    line = one_line_error(cli("evaluate", finished_copy, "--data", data), str(data), "text")
    assert "MODEL LOADED" not in line
    assert not (finished_copy / "evaluation").exists()


def test_a_data_file_without_the_label_column_is_refused_before_the_model_loads(finished_copy, tmp_path, cli,
                                                                                  no_model_loading):
    data = _csv(tmp_path / "nolabel.csv", text=["a", "b"], category=[0, 1])
    line = one_line_error(cli("evaluate", finished_copy, "--data", data), str(data), "label")
    assert "MODEL LOADED" not in line


def test_unknown_labels_in_the_data_are_refused_before_the_model_loads(finished_copy, tmp_path, cli,
                                                                       no_model_loading):
    data = _csv(tmp_path / "unknown.csv", label=[0, 9], text=["a", "b"])  # the run's labels are 0..3
    line = one_line_error(cli("evaluate", finished_copy, "--data", data), str(data), "labels outside")
    assert "MODEL LOADED" not in line


def test_a_missing_data_file_is_refused_before_the_model_loads(finished_copy, tmp_path, cli, no_model_loading):
    line = one_line_error(cli("evaluate", finished_copy, "--data", tmp_path / "absent.csv"), "absent.csv",
                          "no such file")
    assert "MODEL LOADED" not in line


def test_good_data_still_reaches_the_model(finished_copy, tmp_path, cli, no_model_loading):
    """The check comes first, the loading still follows (the loader's own line here)."""
    data = _csv(tmp_path / "ok.csv", label=[0, 1], text=["a", "b"])
    one_line_error(cli("evaluate", finished_copy, "--data", data), "MODEL LOADED")


# --- evaluate: a folder where its scores or chart go ---------------------------------------------------------------

@pytest.fixture
def no_prediction(monkeypatch):
    def refuse(*args, **kwargs):
        raise UserError("PREDICTED")

    monkeypatch.setattr("lorafit.evaluate.predict_probabilities", refuse)


@pytest.mark.parametrize("taken", ["ok.json", "ok-confusion.png"])
def test_a_folder_in_place_of_the_scores_is_one_line_before_predicting(finished_copy, tmp_path, cli, no_prediction,
                                                                       taken):
    """evaluation/ok.json (or its chart) as a folder: a raw IsADirectoryError after every row was predicted, and
    the chart written beside no scores."""
    data = _csv(tmp_path / "ok.csv", label=[0, 1], text=["a", "b"])
    folder = finished_copy / "evaluation" / taken
    folder.mkdir(parents=True)
    line = one_line_error(cli("evaluate", finished_copy, "--data", data), str(folder), "folder")
    assert "PREDICTED" not in line
    assert sorted(p.name for p in (finished_copy / "evaluation").iterdir()) == [taken]  # nothing else written


def test_a_folder_in_place_of_the_scores_is_refused_even_once_predicted(finished_copy, tmp_path, cli, monkeypatch):
    """The same check under the lock, on the name finally chosen: the folder may appear while the rows are
    predicted."""
    data = _csv(tmp_path / "ok.csv", label=[0, 1], text=["a", "b"])
    scores = finished_copy / "evaluation" / "ok.json"

    def predict_then_block(model, tokenizer, texts, *args, **kwargs):
        scores.mkdir(parents=True)
        return np.full((len(texts), model.config.num_labels), 0.25, dtype=np.float32)

    monkeypatch.setattr("lorafit.evaluate.predict_probabilities", predict_then_block)
    one_line_error(cli("evaluate", finished_copy, "--data", data), str(scores), "folder")
    assert sorted(p.name for p in (finished_copy / "evaluation").iterdir()) == ["ok.json"]


# --- teacher cache: not keyed by the precision it was computed in --------------------------------------------------

def _auto_precision_teacher(run_dir: Path) -> Path:
    """The run with train.precision auto: bf16 or fp32 then depends on the machine that predicts."""
    config = run_dir / "config.yaml"
    values = yaml.safe_load(config.read_text())
    values["train"]["precision"] = "auto"
    config.write_text(yaml.safe_dump(values, sort_keys=False))
    return run_dir


@pytest.fixture
def machine(monkeypatch):
    """Set machine.bf16 to make precision auto mean bf16 (True) or fp32 (False) on this CPU-only machine."""
    class Machine:
        bf16 = False

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(model, "cpu_supports_fast_bf16", lambda: Machine.bf16)
    return Machine


@pytest.fixture
def teacher_passes(monkeypatch):
    """Each teacher pass returns log-probabilities holding the number of passes so far."""
    passes = []

    def predict(run_dirs, texts):
        passes.append(model.use_bf16("auto"))
        return np.full((len(run_dirs), len(texts), 4), float(len(passes)), dtype=np.float32)

    monkeypatch.setattr(teacher, "predict_log_probs", predict)
    return passes


def test_a_runs_own_teacher_cache_is_kept_when_auto_precision_changes(finished_copy, tmp_path, machine,
                                                                       teacher_passes):
    """A run resumed on a machine where precision auto means bf16, not fp32, keeps the teacher predictions it
    started with: recomputed, rows near the threshold could join or leave and the resumed run would train on other
    rows than its checkpoint did, which the resume check (by the teachers' and texts' fingerprints) cannot see.
    Precision changes predictions by rounding only, as the device and batch size do, and none is in the key."""
    teachers, texts, student = [_auto_precision_teacher(finished_copy)], ["one text", "another"], tmp_path / "student"
    student.mkdir()

    def targets():
        return teacher.cached_log_probs(teachers, texts, student, teacher.PSEUDO_CACHE, write=True)[0, 0, 0]

    assert targets() == 1
    machine.bf16 = True
    assert targets() == 1 and teacher_passes == [False]
