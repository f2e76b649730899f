"""Review of teacher caching, Hub data specs and resume: an unpinned Hub teacher's cached targets after `main`
moved, `lorafit evaluate --data DATASET:CONFIG:SPLIT` for another Hub dataset with configurations, and an old run
folder whose config saved a relative local --model path. Offline: the Hub cache and datasets.load_dataset are
faked; no model is trained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from conftest import model_in_work_folder, one_line_error, tiny_run_config
from lorafit import card, evaluate, runs, teacher, train
from lorafit.config import DataConfig, RunConfig, load_config
from lorafit.errors import UserError

NUM_LABELS = 2


# 1. teacher fingerprint of an unpinned Hub base model ---------------------------------------------------------------

def _hub_teacher(folder: Path, revision: str = "") -> Path:
    """A teacher run folder (the files teacher_fingerprint reads) on the Hub base model org/encoder."""
    (folder / runs.ADAPTER).mkdir(parents=True)
    pinned = f"\n  revision: {revision}" if revision else ""
    (folder / runs.CONFIG).write_text(f"model:\n  name_or_path: org/encoder{pinned}\n")
    (folder / runs.LABELS).write_text(json.dumps([str(i) for i in range(NUM_LABELS)]))
    (folder / runs.ADAPTER / runs.ADAPTER_WEIGHTS).write_bytes(b"adapter")
    return folder


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A local Hub cache holding org/encoder; calling it points `main` at a commit, as a download after a push does."""
    import huggingface_hub.constants

    repo = tmp_path / "hub" / "models--org--encoder"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    def point_main_at(commit: str) -> None:
        (repo / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)

    return point_main_at


def test_cached_teacher_targets_are_recomputed_when_an_unpinned_hub_base_moves(tmp_path, monkeypatch, hub_cache):
    """The student's cached teacher predictions were keyed by the teacher's config, labels and adapter: with an
    unpinned Hub base model whose `main` moved to new weights, the stale predictions were reused. The key now holds
    the commit the cache resolves the base model to (what from_pretrained loads)."""
    made_with = {}

    def predicted(run_dirs, texts):  # "predictions" that say which commit made them
        commit = (tmp_path / "hub/models--org--encoder/refs/main").read_text()
        made_with["last"] = commit
        return np.full((len(run_dirs), len(texts), NUM_LABELS), float(commit == "b" * 40), dtype=np.float32)

    monkeypatch.setattr(teacher, "predict_log_probs", predicted)
    unpinned = _hub_teacher(tmp_path / "teacher")
    student = tmp_path / "student"
    student.mkdir()
    hub_cache("a" * 40)
    first = teacher.cached_log_probs([unpinned], ["x", "y"], student, teacher.DISTILL_CACHE, write=True)
    assert (first == 0.0).all()
    hub_cache("b" * 40)
    again = teacher.cached_log_probs([unpinned], ["x", "y"], student, teacher.DISTILL_CACHE, write=True)
    assert (again == 1.0).all(), "predictions made on the old main were reused after main moved"
    assert made_with["last"] == "b" * 40


def test_a_pinned_hub_teacher_keeps_its_cache_when_main_moves(tmp_path, monkeypatch, hub_cache):
    """A revision pinned to a commit loads that commit whatever main says: its cache stays valid."""
    calls = []
    monkeypatch.setattr(teacher, "predict_log_probs",
                        lambda run_dirs, texts: calls.append(1) or np.zeros((1, len(texts), NUM_LABELS), np.float32))
    hub_cache("a" * 40)
    pinned = _hub_teacher(tmp_path / "teacher", revision="a" * 40)
    student = tmp_path / "student"
    student.mkdir()
    teacher.cached_log_probs([pinned], ["x"], student, teacher.DISTILL_CACHE, write=True)
    hub_cache("b" * 40)
    teacher.cached_log_probs([pinned], ["x"], student, teacher.DISTILL_CACHE, write=True)
    assert len(calls) == 1


# 2. --data DATASET_ID:CONFIG:SPLIT ------------------------------------------------------------------------------------

@pytest.fixture
def hub(monkeypatch) -> list:
    """datasets.load_dataset faked: the calls made, each (dataset, config, split); two SST-2-like rows."""
    import datasets

    calls = []

    def load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict({"text": ["a fine film", "dull"], "label": [1, 0]})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def _trained_on(dataset: str, config=None) -> SimpleNamespace:
    """What load_eval_data reads of a loaded run."""
    return SimpleNamespace(cfg=RunConfig(data=DataConfig(dataset=dataset, dataset_config=config)),
                           label_names=["0", "1"])


def _folder_trained_on(monkeypatch, dataset: str) -> None:
    """evaluate reads --data with the run folder's config and labels before it loads the model: a folder of a run
    trained on `dataset`, as runs.check_run_folder returns it."""
    run = _trained_on(dataset)
    monkeypatch.setattr(runs, "check_run_folder", lambda run_dir, need=None: runs.RunFolder(
        Path(run_dir), run.cfg.to_dict(), labels=run.label_names))


def test_a_config_of_another_hub_dataset_is_named_in_the_data_spec(hub):
    """A run trained on ag_news had no way to be evaluated on glue's sst2: `glue:sst2:validation` asked for split
    'sst2:validation' of glue without a configuration."""
    run = _trained_on("fancyzhx/ag_news")
    data, name = evaluate.load_eval_data("glue:sst2:validation", run)
    evaluate.load_eval_data("glue:sst2:validation[:1]", run)
    evaluate.load_eval_data("glue:validation", _trained_on("glue", "sst2"))  # unchanged: the run's own config
    evaluate.load_eval_data("glue:cola:validation", _trained_on("glue", "sst2"))  # a named config wins
    evaluate.load_eval_data("fancyzhx/ag_news:test[:100]", run)  # unchanged: a slice's colon is no config
    assert hub == [("glue", "sst2", "validation"), ("glue", "sst2", "validation[:1]"), ("glue", "sst2", "validation"),
                   ("glue", "cola", "validation"), ("fancyzhx/ag_news", None, "test[:100]")]
    assert name == "glue-sst2-validation" and len(data) == 2


def test_the_card_reads_the_config_out_of_an_evaluations_data_spec():
    assert card._hub_split("glue:sst2:validation") == ("glue", "sst2", "validation")
    assert card._hub_split("fancyzhx/ag_news:test[:100]") == ("fancyzhx/ag_news", None, "test[:100]")


@pytest.mark.parametrize("spec, says", [("glue::validation", "'' is no config name"),
                                        ("glue:sst2:", "'' is no split name"),
                                        ("glue:sst2:validation:x", "'validation:x' is no split name"),
                                        ("C:\\data\\test.csv", "no such file"),
                                        (":validation", "'' is no dataset id")])
def test_a_malformed_hub_data_spec_is_one_line(spec, says, hub, monkeypatch, tmp_path, cli):
    _folder_trained_on(monkeypatch, "fancyzhx/ag_news")
    line = one_line_error(cli("evaluate", tmp_path, "--data", spec), says, "DATASET_ID:CONFIG:SPLIT")
    assert hub == [], line


def test_a_missing_file_read_as_a_hub_split_names_the_data_option(monkeypatch, tmp_path, cli):
    """`--data data/news:test.csv` that does not exist is tried as a Hub split; when the Hub fails, the fix named was
    train's (--train-file, --eval-file), which `lorafit evaluate` does not take."""
    import datasets

    def unreachable(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    _folder_trained_on(monkeypatch, "fancyzhx/ag_news")
    line = one_line_error(cli("evaluate", tmp_path, "--data", "data/news:test.csv"), "cannot load dataset 'data/news'",
                          "--data PATH")
    assert "--train-file" not in line


# 3. resuming a run whose config saved a relative local model path ----------------------------------------------------

@pytest.fixture
def old_run(tmp_path, tiny_roberta, small_agnews, monkeypatch):
    """A run folder begun from tmp_path/work with `--model models/roberta`, saved relative as lorafit did before it
    saved local folders absolute; no checkpoint yet. Returns (config file, run folder)."""
    work = model_in_work_folder(tmp_path, tiny_roberta)
    config = tiny_run_config(work, small_agnews, name="old", report_to="none")
    monkeypatch.chdir(work)
    saved = load_config(config, {"model.name_or_path": "models/roberta"}).to_dict()
    saved["model"]["name_or_path"] = "models/roberta"
    run_dir = work / "runs" / "old"
    run_dir.mkdir(parents=True)
    (run_dir / runs.CONFIG).write_text(yaml.safe_dump(saved, sort_keys=False))
    return config, run_dir


def test_an_old_run_with_a_relative_model_path_resumes_with_the_same_folder(old_run, cli):
    """`--model models/roberta` is saved absolute now, and the old relative path was refused as a different
    config. Reaching the checkpoint check means the config was accepted."""
    config, run_dir = old_run
    one_line_error(cli("train", config, "--model", "models/roberta", "--resume"), "no complete checkpoint")
    one_line_error(cli("train", config, "--model", str(run_dir.parents[1] / "models/roberta"), "--resume"),
                   "no complete checkpoint")


def test_an_old_run_whose_config_lacks_a_newer_field_resumes(old_run, cli):
    """A config.yaml written before a field existed (here model.pooling) was refused as "a different config" with no
    difference named, though the field's default is what that run did: a user could not resume it after upgrading."""
    config, run_dir = old_run
    saved = yaml.safe_load((run_dir / runs.CONFIG).read_text())
    del saved["model"]["pooling"]
    (run_dir / runs.CONFIG).write_text(yaml.safe_dump(saved, sort_keys=False))
    one_line_error(cli("train", config, "--model", "models/roberta", "--resume"), "no complete checkpoint")
    cfg = load_config(config, {"model.name_or_path": str(run_dir.parents[1] / "models/roberta")})
    assert train.check_run_dir(cfg, resume=False, overwrite=False) is None
    assert train.open_run_dir(cfg, overwrite=False, checkpoint=None) == run_dir
    assert yaml.safe_load((run_dir / runs.CONFIG).read_text())["model"]["pooling"] == "cls", "saved in today's form"


def test_a_relative_model_path_is_also_read_from_the_run_folders_parent(old_run, tmp_path, monkeypatch):
    """From another current folder, the old path is read from the run folder's parent (its output_dir)."""
    config, run_dir = old_run
    shutil.copytree(run_dir.parents[1] / "models", run_dir.parent / "models")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(config, {"model.name_or_path": str(run_dir.parent / "models" / "roberta")})
    assert train.check_run_dir(cfg, resume=False, overwrite=False) is None
    assert train.open_run_dir(cfg, overwrite=False, checkpoint=None) == run_dir
    saved = yaml.safe_load((run_dir / runs.CONFIG).read_text())
    assert saved["model"]["name_or_path"] == cfg.model.name_or_path, "the config is saved absolute from now on"


def test_a_relative_model_path_to_another_folder_is_still_refused(old_run, tiny_roberta, tmp_path):
    config, run_dir = old_run
    other = tmp_path / "other-roberta"
    shutil.copytree(tiny_roberta, other)
    cfg = load_config(config, {"model.name_or_path": str(other)})
    with pytest.raises(UserError) as refused:
        train.check_run_dir(cfg, resume=True, overwrite=False)
    message = str(refused.value)
    assert "different config" in message and "model.name_or_path: 'models/roberta' there" in message
    assert "\n" not in message
    assert yaml.safe_load((run_dir / runs.CONFIG).read_text())["model"]["name_or_path"] == "models/roberta"
