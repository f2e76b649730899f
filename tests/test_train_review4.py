"""Fourth review of lorafit.train: a checkpoint resumed beside a deleted config.yaml (any config continued it) or a
deleted manifest.json (the data went unchecked); a checkpoint another user wrote, unreadable to this one, was a raw
traceback or read as damaged and deleted, and the Trainer wrote every checkpoint's weights owner-only.

In-process runs of the tiny RoBERTa (4 steps, evaluation and checkpoint every 2); the interruption is a signal sent
by a callback at a fixed step, never raced against a timer."""

from __future__ import annotations

import builtins
import errno
import io
import os
import stat

from conftest import one_line_error, signal_at_step, tiny_run_config
from lorafit import runs
from lorafit.config import load_config
from lorafit.train import run_training


def _interrupted_at_step_2(tmp_path, data, tiny_roberta, capsys, **train):
    """The 4-step tiny run, stopped by Ctrl-C after step 2 (its checkpoint-2 saved); returns the config file."""
    config = tiny_run_config(tmp_path, data, model=tiny_roberta, **train)
    result = run_training(load_config(config), extra_callbacks=[signal_at_step(1)])
    assert (result["status"], result["global_step"]) == ("interrupted", 2), result
    capsys.readouterr()
    return config


def test_a_checkpoint_is_not_resumed_by_another_config_once_config_yaml_is_gone(tmp_path, tiny_roberta, small_agnews,
                                                                                cli, capsys):
    """config.yaml deleted from an interrupted run folder: the rerun compared no config at all, so a config with
    another max_steps (or learning rate, ...) resumed checkpoint-2 with exit 0 and wrote its own config.yaml for the
    whole run. Now one line naming config.yaml; the same config as before still resumes (the manifest's checksum
    names it)."""
    _interrupted_at_step_2(tmp_path, small_agnews, tiny_roberta, capsys)
    run_dir = tmp_path / "runs" / "tiny"
    (run_dir / runs.CONFIG).unlink()

    other = tiny_run_config(tmp_path, small_agnews, model=tiny_roberta, name="tiny", max_steps=6)
    one_line_error(cli("train", other), str(run_dir), "config.yaml is missing", "checkpoint-2", "--overwrite")
    assert not (run_dir / runs.CONFIG).exists() and runs.read_json(run_dir / runs.RESULT)["status"] == "interrupted"

    same = tiny_run_config(tmp_path, small_agnews, model=tiny_roberta, name="tiny")
    assert cli("train", same).code == 0
    result = runs.read_json(run_dir / runs.RESULT)
    assert (result["status"], result["resumed_from_step"], result["global_step"]) == ("completed", 2, 4)
    assert (run_dir / runs.CONFIG).is_file()


def test_a_checkpoint_is_not_resumed_without_its_manifest(tmp_path, tiny_roberta, small_agnews, cli, capsys):
    """manifest.json deleted from an interrupted run folder and the training file edited: the data fingerprints
    were never compared (no manifest: nothing to compare with), so the checkpoint resumed on other rows with exit 0.
    Now one line naming manifest.json."""
    data = tmp_path / "train.csv"
    data.write_bytes(small_agnews.read_bytes())
    config = _interrupted_at_step_2(tmp_path, data, tiny_roberta, capsys)
    run_dir = tmp_path / "runs" / "tiny"
    (run_dir / runs.MANIFEST).unlink()
    data.write_text("".join(small_agnews.read_text().splitlines(keepends=True)[:-50]))

    one_line_error(cli("train", config), str(run_dir), "manifest.json is missing", "checkpoint-2", "--overwrite")
    assert runs.read_json(run_dir / runs.RESULT)["status"] == "interrupted"


def _refuse_opening(patch, blocked) -> None:
    """Every way Python opens a file (os.open, open, io.open: zipfile's) refuses `blocked` as for another user's
    owner-only file."""
    for module, name in ((os, "open"), (builtins, "open"), (io, "open")):
        real = getattr(module, name)

        def refusing(path, *args, real=real, **kwargs):
            if isinstance(path, (str, bytes, os.PathLike)) and os.fsdecode(path) == str(blocked):
                raise PermissionError(errno.EACCES, "Permission denied", str(blocked))
            return real(path, *args, **kwargs)

        patch.setattr(module, name, refusing)


def test_another_users_unreadable_checkpoint_is_one_line_and_kept(tmp_path, tiny_roberta, small_agnews, cli, capsys,
                                                                   monkeypatch):
    """A shared run folder, killed, rerun by another user who may not read the checkpoint's files: the weights were a
    raw PermissionError traceback, and an unreadable optimizer.pt read as corrupt, so the run started over from step
    0 and deleted checkpoint-2. Root ignores permission bits: the open calls themselves refuse, as for a user."""
    config = _interrupted_at_step_2(tmp_path, small_agnews, tiny_roberta, capsys)
    checkpoint = tmp_path / "runs" / "tiny" / runs.CHECKPOINTS / "checkpoint-2"
    for name in (runs.ADAPTER_WEIGHTS, "optimizer.pt"):
        with monkeypatch.context() as patch:
            _refuse_opening(patch, checkpoint / name)
            one_line_error(cli("train", config), f"checkpoints/checkpoint-2/{name} cannot be read", "Permission denied")
        assert (checkpoint / "trainer_state.json").is_file()


def test_checkpoint_weights_take_the_umask_modes(tmp_path, tiny_roberta, small_agnews, capsys):
    """The Trainer's checkpoints held their weights owner-only (safetensors writes 0600) while every other file of
    the run folder took the umask's modes: another user of a shared folder could not resume a killed run."""
    old = os.umask(0o022)
    try:
        _interrupted_at_step_2(tmp_path, small_agnews, tiny_roberta, capsys)
    finally:
        os.umask(old)
    weights = tmp_path / "runs" / "tiny" / runs.CHECKPOINTS / "checkpoint-2" / runs.ADAPTER_WEIGHTS
    assert stat.S_IMODE(weights.stat().st_mode) == 0o644
