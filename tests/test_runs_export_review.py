"""Run folders and `lorafit export` on awkward ground: `--output .`, a symlinked output replaced twice, a swap that
fails halfway, a run still training or stopped (not "damaged"), a lock holder that removes its folder as another
process takes the lock, a result.json overwritten with other JSON, and a SIGTERM during an export."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import lock_held_by_another_process, one_line_error


@pytest.fixture
def run(finished_copy) -> Path:
    return finished_copy


def test_export_to_the_current_folder_is_one_line(cli, run, tmp_path, monkeypatch):
    here = tmp_path / "empty"
    here.mkdir()
    monkeypatch.chdir(here)
    one_line_error(cli("export", run, "--output", ".", "--overwrite"), "current or a parent folder", "--output exports/")
    assert here.is_dir() and not any(here.iterdir())


def test_export_over_a_symlinked_output_twice(cli, run, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "keep.txt").write_text("mine")
    link = tmp_path / "out"
    link.symlink_to(real)
    for _ in range(2):
        result = cli("export", run, "--output", link, "--overwrite")
        assert result.code == 0, result.err
    assert (link / "model.safetensors").is_file()
    assert not (tmp_path / ".out.old").exists() and not (tmp_path / ".out.old").is_symlink(), "no debris left"


def test_export_over_a_broken_symlink(cli, run, tmp_path):
    (tmp_path / "out").symlink_to(tmp_path / "nowhere")
    result = cli("export", run, "--output", tmp_path / "out")
    assert result.code == 0, result.err
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_a_swap_that_fails_halfway_keeps_the_old_folder(tmp_path, monkeypatch):
    from lorafit import runs
    from lorafit.errors import UserError

    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("keep")
    real = os.replace

    def no_space_for_the_new_one(src, dst):
        if Path(dst) == target and Path(src).name != ".out.old":
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(runs.os, "replace", no_space_for_the_new_one)
    with pytest.raises(UserError, match="nothing was half-written"):
        runs.atomic_replace_dir(lambda folder: (folder / "new.txt").write_text("new"), target)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (target / "old.txt").read_text() == "keep"


def test_a_run_still_training_or_stopped_is_not_called_damaged(cli, run, tmp_path):
    shutil.rmtree(run / "adapter")  # training writes the adapter, then labels.json, only when it completes
    (run / "labels.json").unlink()
    result = json.loads((run / "result.json").read_text())
    (run / "result.json").write_text(json.dumps({**result, "status": "interrupted"}))
    line = one_line_error(cli("export", run, "--output", tmp_path / "out"), "no trained adapter", "lorafit train CONFIG")
    assert "damaged" not in line and "labels.json" not in line
    with lock_held_by_another_process(run) as pid:
        one_line_error(cli("export", run, "--output", tmp_path / "out"), f"process {pid}", "holds its lock")
    assert not (tmp_path / "out").exists()


def test_a_run_starting_is_not_called_no_run_folder(cli, tmp_path):
    starting = tmp_path / "starting"  # a run whose lock is taken and whose config is not written yet
    with lock_held_by_another_process(starting) as pid:
        line = one_line_error(cli("export", starting, "--output", tmp_path / "out"), "no config.yaml yet",
                              f"process {pid}")
        assert "not a lorafit run folder" not in line
    assert not (tmp_path / "out").exists()


def test_lock_taken_while_the_holder_removes_its_empty_folder(tmp_path, monkeypatch):
    """A run that fails before writing anything releases its lock and removes the folder it made; a second process
    that opened the old lock file meanwhile retries on a fresh one instead of a FileNotFoundError traceback."""
    from lorafit import locks

    run_dir = tmp_path / "runs" / "x"
    first = locks.RunLock(run_dir).acquire()
    real = locks._try_flock

    def first_leaves_then_flock(fd):
        first.release()  # the lock file unlinked, then the empty folders it made removed
        monkeypatch.setattr(locks, "_try_flock", real)
        return real(fd)

    monkeypatch.setattr(locks, "_try_flock", first_leaves_then_flock)
    second = locks.RunLock(run_dir).acquire()
    try:
        assert locks.read_lock(run_dir)["pid"] == os.getpid()
    finally:
        second.release()
    assert not (tmp_path / "runs").exists(), "the folders the second one made are removed again"


@pytest.mark.parametrize("content", [[1], "overwritten"])
def test_export_with_result_json_overwritten_by_other_json(cli, run, tmp_path, content):
    """check_run_folder lets export go on when result.json (which it does not need) is damaged: the card too."""
    (run / "result.json").write_text(json.dumps(content))
    (run / "manifest.json").write_text(json.dumps(content))
    result = cli("export", run, "--output", tmp_path / "out")
    assert result.code == 0, result.err
    assert (tmp_path / "out" / "README.md").is_file()


# A real `lorafit export` that stops inside the build (the hidden temporary folder holds the model) until killed.
SLOW_EXPORT = r"""
import sys, time
from pathlib import Path
from lorafit import export
def wait(model, tokenizer, folder):
    Path(sys.argv[3]).touch()
    time.sleep(300)
export.verify_export = wait
from lorafit.cli import main
sys.exit(main(["export", sys.argv[1], "--output", sys.argv[2]]))
"""


def test_sigterm_during_export_leaves_no_hidden_folder(run, tmp_path):
    exports, building = tmp_path / "exports", tmp_path / "building"
    exports.mkdir()
    process = subprocess.Popen([sys.executable, "-c", SLOW_EXPORT, str(run), str(exports / "out"), str(building)],
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.time() + 300
        while not building.exists():
            assert process.poll() is None, process.stderr.read()
            assert time.time() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert "Traceback" not in process.stderr.read()
    assert list(exports.iterdir()) == [], "a killed export leaves nothing under the output's folder"
