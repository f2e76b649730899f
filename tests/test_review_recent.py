"""Review of the commits after 169a042: the early --output lock check, a damaged saved config (a key that is no
string, a config.yaml that is a folder), the pseudo-label report under torchrun, and a target a killed writer set aside
put back before an export's check."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import logged_warnings, write_config
from lorafit import locks, runs, train
from lorafit.config import config_from_dict, load_config
from lorafit.errors import UserError


def _refusal(call) -> str:
    with pytest.raises(UserError) as refused:
        call()
    return str(refused.value)


def test_an_exports_early_check_names_the_stale_lock_of_another_machine_to_delete(tmp_path):
    """A killed export on another machine (shared disk) leaves its lock file: the early check said "wait for it to
    finish", which never ends, and preempted the lock's own refusal, which names the file to delete."""
    out = tmp_path / "out"
    (tmp_path / ".out.lock").mkdir()
    (tmp_path / ".out.lock" / locks.LOCK).write_text(json.dumps({"host": "elsewhere.example", "pid": 1,
                                                                 "started": "then"}))
    early = _refusal(lambda: locks.check_not_being_replaced(out))
    assert "delete" in early and str(tmp_path / ".out.lock" / locks.LOCK) in early and "wait for it" not in early
    assert early == _refusal(lambda: runs.atomic_replace_dir(lambda folder: None, out)), "what the lock itself says"


def test_a_saved_config_with_a_key_that_is_no_string_is_refused_in_one_line(tmp_path):
    """`on: true` hand-added to a run folder's config.yaml reads as the key True: listing the differences sorted
    it with the string keys, a raw TypeError instead of 'a different config'."""
    cfg = config_from_dict({"name": "x", "output_dir": str(tmp_path / "runs"),
                            "model": {"name_or_path": "roberta-base"}})
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / runs.CONFIG).write_text(cfg.to_yaml() + "on: true\n")
    message = _refusal(lambda: train.check_run_dir(cfg, resume=False, overwrite=False))
    assert "different config (True: True there, None here)" in message and "\n" not in message


def test_only_the_main_process_reports_the_pseudo_labels(tmp_path, tiny_roberta, small_agnews, agnews_pool):
    """Under torchrun every rank selects the pseudo-labels (write=False on all but the main one): each printed the
    label-smoothing warning again, where the other teacher warnings are the main process's alone."""
    from lorafit.cli import main

    teacher_config = write_config(
        tmp_path / "smoothed.yaml", name="smoothed", output_dir=str(tmp_path / "runs"), budget=None,
        model={"name_or_path": str(tiny_roberta)}, lora={"r": 4, "alpha": 8, "target_modules": ["query", "value"]},
        data={"train_file": str(small_agnews)},
        train={"max_steps": 2, "eval_steps": 2, "batch_size": 8, "precision": "fp32", "label_smoothing": 0.1},
    )
    assert main(["train", str(teacher_config)]) == 0
    unlabelled = tmp_path / "unlabelled.csv"
    used = set(pd.read_csv(small_agnews).text)
    pd.DataFrame({"text": [t for t in pd.read_csv(agnews_pool).text if t not in used][:20]}).to_csv(unlabelled,
                                                                                                  index=False)
    student = write_config(
        tmp_path / "student.yaml", name="student", output_dir=str(tmp_path / "runs"),
        model={"name_or_path": str(tiny_roberta)}, lora={"r": 4, "alpha": 8, "target_modules": ["query", "value"]},
        data={"train_file": str(small_agnews), "max_length": 32, "unlabelled_file": str(unlabelled),
              "pseudo_label_teacher": str(tmp_path / "runs" / "smoothed"), "pseudo_label_threshold": 0.95},
        train={"max_steps": 2, "batch_size": 8, "precision": "fp32"},
    )
    prepared = train.prepare(load_config(student))
    run_dir = Path(prepared.cfg.run_dir)
    run_dir.mkdir(parents=True)
    with logged_warnings("lorafit.teacher") as warnings:
        train.add_teacher_targets(prepared, run_dir, write=True)  # the main process: predicts and caches
        assert ["pseudo_label_threshold 0.95" in w for w in warnings] == [True]
        train.add_teacher_targets(prepared, run_dir, write=False)  # another rank: reads the cache
        assert len(warnings) == 1, warnings


def test_a_hub_dataset_that_cannot_load_names_the_config_settings_that_take_local_files(monkeypatch):
    """`lorafit sweep` takes --train-file but no --eval-file: the message named only the train command's options,
    so a sweep trial failed naming an option its command refuses. The config's data settings work everywhere."""
    import datasets

    from lorafit.data import load_hub_split
    from lorafit.errors import HubUnreachableError

    def unreachable(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(HubUnreachableError) as caught:
        load_hub_split("ag_news", None, "train", "label")
    message = str(caught.value)
    assert "\n" not in message and "cannot load dataset 'ag_news' split 'train'" in message
    assert message.endswith("(--train-file PATH, and --eval-file PATH if you have a validation file; or "
                            "data.train_file and data.eval_file in the config)")


def test_a_run_folder_whose_config_yaml_is_a_folder_is_refused_as_damaged(tmp_path):
    """Rerunning into such a folder gave a raw IsADirectoryError traceback."""
    cfg = config_from_dict({"name": "x", "output_dir": str(tmp_path / "runs"),
                            "model": {"name_or_path": "roberta-base"}})
    (cfg.run_dir / runs.CONFIG).mkdir(parents=True)
    message = _refusal(lambda: train.check_run_dir(cfg, resume=False, overwrite=False))
    assert message.startswith(f"run folder {cfg.run_dir} is damaged: config.yaml cannot be read")
    assert message.endswith("start the run over with --overwrite") and "\n" not in message


def test_a_target_set_aside_by_a_killed_writer_is_back_before_the_check_runs(tmp_path):
    """A writer killed between its two renames leaves the last good export aside (.out.old) and none in place: the
    check ran first, saw no output, and the next export without --overwrite replaced the one it had just put back."""
    out, aside = tmp_path / "out", tmp_path / ".out.old"
    aside.mkdir()
    (aside / "adapter_model.safetensors").write_text("the last good export")

    def refuse_existing():
        if out.exists():
            raise UserError(f"{out} exists; pass --overwrite to replace it")

    with pytest.raises(UserError, match="pass --overwrite"):
        runs.atomic_replace_dir(lambda folder: (folder / "new").write_text("new"), out, check=refuse_existing)
    assert (out / "adapter_model.safetensors").read_text() == "the last good export" and not aside.exists()
