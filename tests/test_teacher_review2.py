"""Review of lorafit.teacher and the training code that calls it (distillation targets, self-training on
data.unlabelled_file): what a bad unlabelled file or a teacher that cannot load says, and that neither leaves a
student run folder behind. The caches, thresholds, validation-overlap drops, label checks and multi-teacher
averaging were read and exercised too; they are covered by tests/test_levers.py and tests/test_teacher_review.py."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import yaml

from conftest import one_line_error, tiny_run_config, train_finished_tiny_run
from lorafit import runs, teacher


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
