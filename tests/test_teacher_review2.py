"""Review of lorafit.teacher and the training code that calls it (distillation targets, self-training on
data.unlabelled_file): what a bad unlabelled file or a teacher that cannot load says, and that neither leaves a
student run folder behind. The caches, thresholds, validation-overlap drops, label checks and multi-teacher
averaging were read and exercised too; they are covered by tests/test_levers.py and tests/test_teacher_review.py."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import yaml

from conftest import logged_warnings, one_line_error, tiny_run_config, train_finished_tiny_run
from lorafit import runs, teacher
from lorafit.config import DataConfig
from lorafit.errors import UserError


def _student(tmp_path, small_agnews, tiny_roberta, teacher_dir, **train):
    return tiny_run_config(tmp_path, small_agnews, model=tiny_roberta, name="student", teacher=str(teacher_dir),
                           report_to="none", **train)


def test_an_unlabelled_file_without_the_text_column_names_a_fix_that_works(finished_tiny, tiny_roberta, small_agnews,
                                                                           tmp_path, cli):
    """The unlabelled file's text column is called `content`, the training file's `text`. The error said "name the
    right one with data.text_columns", but that setting names the training file's column too: following it broke
    the training data. The file itself needs a `text` column (or the training data's columns)."""
    unlabelled = tmp_path / "unlabelled.csv"
    pd.DataFrame({"content": ["Stocks rally as oil falls", "Team wins the cup"]}).to_csv(unlabelled, index=False)
    config = _student(tmp_path, small_agnews, tiny_roberta, finished_tiny)
    line = one_line_error(cli("train", config, "--data.unlabelled_file", unlabelled),
                          "data.unlabelled_file", str(unlabelled), "no text column 'text'", "available: content",
                          "rename its text column to 'text'")
    assert "name the right one with data.text_columns" not in line
    assert not (tmp_path / "runs" / "student").exists()


def test_a_teacher_whose_base_model_lost_its_weights_is_refused_before_the_run_folder(tmp_path, tiny_roberta,
                                                                                      small_agnews, finished_tiny, cli,
                                                                                      capsys):
    """A teacher run whose local base model folder still has config.json but no weights passed the teacher check;
    loading it failed only after the student's run folder was written, with an error that named a model path but
    not the teacher. The folder left behind then refused the corrected command (another teacher) as "a different
    config"."""
    base = shutil.copytree(tiny_roberta, tmp_path / "base")
    (tmp_path / "teacher").mkdir()
    broken = train_finished_tiny_run(tmp_path / "teacher", base, small_agnews)
    (base / "model.safetensors").unlink()
    capsys.readouterr()  # the teacher's training output

    line = one_line_error(cli("train", _student(tmp_path, small_agnews, tiny_roberta, broken)),
                          "train.teacher", str(broken), str(base), "no safetensors weights")
    assert "another teacher" in line
    assert not (tmp_path / "runs" / "student").exists()
    # The corrected command trains.
    assert cli("train", _student(tmp_path, small_agnews, tiny_roberta, finished_tiny, max_steps=2)).code == 0


def test_an_offline_hub_teacher_cached_without_weights_is_refused_before_the_run_folder(tmp_path, tiny_roberta,
                                                                                        small_agnews, finished_copy,
                                                                                        monkeypatch, cli):
    """Offline, a teacher on a Hub base model whose config.json alone is cached (what `lorafit budget` fetches)
    passed the check and failed to load after the student's run folder was written. With the weights cached it
    is accepted."""
    import huggingface_hub.constants

    snapshot = tmp_path / "hub" / "models--org--encoder" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    shutil.copy(tiny_roberta / "config.json", snapshot / "config.json")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    values = yaml.safe_load((finished_copy / runs.CONFIG).read_text())
    values["model"]["name_or_path"] = "org/encoder"
    text = yaml.safe_dump(values, sort_keys=False)
    (finished_copy / runs.CONFIG).write_text(text)
    adapter_config = finished_copy / runs.ADAPTER / "adapter_config.json"
    adapter_config.write_text(json.dumps({**json.loads(adapter_config.read_text()),
                                          "base_model_name_or_path": "org/encoder"}))
    manifest = json.loads((finished_copy / runs.MANIFEST).read_text())
    (finished_copy / runs.MANIFEST).write_text(json.dumps({**manifest, "config_sha256": runs.config_digest(text)}))

    one_line_error(cli("train", _student(tmp_path, small_agnews, tiny_roberta, finished_copy)),
                   "train.teacher", str(finished_copy), "org/encoder", "HF_HUB_OFFLINE")
    assert not (tmp_path / "runs" / "student").exists()

    shutil.copy(tiny_roberta / "model.safetensors", snapshot / "model.safetensors")
    assert teacher.check_teachers(str(finished_copy), ["0", "1", "2", "3"], "train.teacher") == [finished_copy]


def test_a_teacher_inside_the_students_run_folder_is_refused_before_overwrite_clears_it(tmp_path, tiny_roberta,
                                                                                         small_agnews, finished_tiny,
                                                                                         cli):
    """A finished teacher kept inside the student's run folder (runs/student/teacher) passed the own-folder check,
    which compared the folders only for equality; `train --overwrite` then emptied the student's folder, the teacher
    with it, and only then found the teacher missing. The finished teacher was lost."""
    run = shutil.copytree(finished_tiny, tmp_path / "runs" / "student", ignore=shutil.ignore_patterns("checkpoints"))
    nested = shutil.copytree(finished_tiny, run / "teacher", ignore=shutil.ignore_patterns("checkpoints"))
    kept = {p: p.read_bytes() for p in nested.rglob("*") if p.is_file()}

    one_line_error(cli("train", _student(tmp_path, small_agnews, tiny_roberta, nested), "--overwrite"),
                   "train.teacher", str(nested), "inside this run's own run folder")
    assert {p: p.read_bytes() for p in nested.rglob("*") if p.is_file()} == kept, "the teacher was deleted"


def test_an_unlabelled_file_with_no_row_to_label_is_refused_before_the_run_folder(finished_tiny, tiny_roberta,
                                                                                  small_agnews, tmp_path, cli):
    """Every row empty (or the text of a validation row): nothing to label, yet the run loaded the teacher, said
    "0 of 0 unlabelled rows joined" (on a terminal only) and trained without self-training, exit 0."""
    unlabelled = tmp_path / "unlabelled.csv"
    unlabelled.write_text('text\n""\n"   "\n')
    config = _student(tmp_path, small_agnews, tiny_roberta, finished_tiny)
    one_line_error(cli("train", config, "--data.unlabelled_file", unlabelled),
                   "data.unlabelled_file", str(unlabelled), "2 rows", "2 empty")
    assert not (tmp_path / "runs" / "student").exists()

    leaked = tmp_path / "leaked.csv"
    pd.DataFrame({"text": ["a validation text", "another one", ""]}).to_csv(leaked, index=False)
    cfg = DataConfig(train_file=str(small_agnews), unlabelled_file=str(leaked))
    try:
        teacher.read_unlabelled(cfg, ["a validation text", " another one "])
    except UserError as exc:
        assert "1 empty" in str(exc) and "2 validation texts" in str(exc), exc
    else:
        raise AssertionError("an unlabelled file of validation texts only was accepted")


def test_unlabelled_rows_skipped_as_empty_or_validation_texts_are_warned_about(tmp_path, small_agnews):
    """Empty rows and rows whose text is a validation text are not labelled: the count was written to the manifest
    only, and the run's one line (on a terminal) counted the rows left, so a file that lost most of its rows read
    as if it had never held them."""
    unlabelled = tmp_path / "unlabelled.csv"
    pd.DataFrame({"text": ["news one", "", "held out", "news two", "trained on "]}).to_csv(unlabelled, index=False)
    cfg = DataConfig(train_file=str(small_agnews), unlabelled_file=str(unlabelled))
    rows = teacher.read_unlabelled(cfg, ["held out"], ["trained on"])
    assert rows.texts == ["news one", "news two"]
    log_probs = np.log(np.array([[[0.97, 0.01, 0.01, 0.01], [0.4, 0.3, 0.2, 0.1]]]))
    _, record, chosen = teacher.select_pseudo_labels(rows, log_probs, 0.9, ["0", "1", "2", "3"])
    assert chosen.tolist() == [0]
    with logged_warnings("lorafit.teacher") as warnings:
        teacher.report_pseudo_labels(record, None)
    assert len(warnings) == 1 and str(unlabelled) in warnings[0], warnings
    assert "3 of its 5 rows" in warnings[0] and "1 empty" in warnings[0] and "1 the text of a validation row" in \
        warnings[0] and "1 the text of a labelled training row" in warnings[0], warnings[0]
    with logged_warnings("lorafit.teacher") as warnings:  # nothing skipped: nothing to say
        teacher.report_pseudo_labels({**record, "empty_rows_skipped": 0, "validation_overlap_dropped": 0,
                                      "labelled_overlap_dropped": 0}, None)
    assert warnings == []


# --- second review: what self-training tells a user when next to nothing joins ---------------------------------------

def test_a_threshold_equal_to_a_binary_teachers_smoothing_target_is_warned_about(tmp_path):
    """Label smoothing 0.1 on 2 classes trains a teacher toward 0.95, but 1 - 0.1 + 0.1/2 is 0.9500000000000001 in
    floats: a threshold of 0.95, at the ceiling, was taken as below it and the warning never came. The threshold it
    suggests is 0.15 under the ceiling, floored to a tenth: 0.8 ((0.95 - 0.15) * 10 is 7.999999999999999 in floats,
    so it said "e.g. 0.7"; third review)."""
    (tmp_path / "smoothed").mkdir()
    (tmp_path / "smoothed" / runs.CONFIG).write_text("train:\n  label_smoothing: 0.1\n")
    ceiling = teacher.smoothing_target([tmp_path / "smoothed"], 2)
    record = {"source": "u.csv", "threshold": 0.95, "rows_read": 100, "empty_rows_skipped": 0,
              "validation_overlap_dropped": 0, "rows_labelled_by_teacher": 100, "joined": 3,
              "joined_per_class": {"neg": 2, "pos": 1}}
    with logged_warnings("lorafit.teacher") as warnings:
        teacher.report_pseudo_labels(record, ceiling)
    assert len(warnings) == 1 and "0.95 is at or above 0.950" in warnings[0], warnings
    assert "lower it (e.g. 0.8) or" in warnings[0], warnings
    with logged_warnings("lorafit.teacher") as warnings:  # just under it: nothing to say
        teacher.report_pseudo_labels({**record, "threshold": 0.9499}, ceiling)
    assert warnings == []


def test_a_threshold_no_unlabelled_row_reaches_is_warned_about(finished_tiny, tiny_roberta, small_agnews, tmp_path,
                                                               cli):
    """No row reached data.pseudo_label_threshold (a teacher without label smoothing): the run trained on its
    labelled rows alone and exited 0 with no word of it off a terminal; only the manifest counted 0 joined."""
    unlabelled = tmp_path / "unlabelled.csv"
    pd.DataFrame({"text": ["Stocks rally as oil falls", "Team wins the cup", "New chip doubles speed"]}).to_csv(
        unlabelled, index=False)
    config = _student(tmp_path, small_agnews, tiny_roberta, finished_tiny, max_steps=2)
    result = cli("train", config, "--data.unlabelled_file", unlabelled, "--data.pseudo_label_threshold", 0.99)
    assert result.code == 0, result.err
    manifest = json.loads((tmp_path / "runs" / "student" / runs.MANIFEST).read_text())
    assert manifest["pseudo_labels"]["joined"] == 0
    warned = [line for line in result.err.splitlines() if "pseudo_label_threshold" in line]
    assert len(warned) == 1 and "none of the 3 unlabelled rows reaches probability 0.99" in warned[0], result.err
    assert "lower data.pseudo_label_threshold" in warned[0]

    rows = teacher.Unlabelled("u.csv", ["a", "b"], 2, 0, 0)
    log_probs = np.log(np.array([[[0.97, 0.01, 0.01, 0.01], [0.4, 0.3, 0.2, 0.1]]]))
    _, record, _ = teacher.select_pseudo_labels(rows, log_probs, 0.9, ["0", "1", "2", "3"])
    with logged_warnings("lorafit.teacher") as warnings:  # a row joined: nothing to say
        teacher.report_pseudo_labels(record, None)
    assert warnings == []
