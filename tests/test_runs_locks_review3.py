"""Third review of src/lorafit/runs.py and src/lorafit/locks.py: each test failed before its fix (see its docstring).

1. Another user's private run folder (or adapter/, or a folder above the run) was a raw PermissionError traceback, and
   a private file of a run was called damaged ("truncated or overwritten; restore it from a backup"); the same for an
   --output-dir inside a folder that may not be searched (writable_dir_check).
2. A lock file that only its details vouch for (another machine's run, or no flock) may be left by a killed run for
   good: predict, evaluate and export said "wait for that run to finish" forever, never which file to delete.
3. A hand-edited eval_curve.jsonl row (accuracy as text, no step) let a resume train to its end and then crash.

The tests run as root, whom no file mode stops: another user's private folder or file is simulated by refusing the
system call (os.stat, open) for those paths with the PermissionError the kernel gives (checked for real as user
nobody while reviewing). No timers are raced: a Ctrl-C comes at a fixed step (conftest.signal_at_step).
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
from pathlib import Path

import pytest

from conftest import lock_held_by_another_process, one_line_error, signal_at_step, tiny_run_config
from lorafit import locks, runs


def _refuse(monkeypatch, owner, name: str, refused) -> None:
    """owner.name raises EACCES for the paths refused(path) is true of, as for another user's private file."""
    real = getattr(owner, name)

    def call(path, *args, **kwargs):
        if isinstance(path, (str, os.PathLike)) and refused(Path(os.fspath(path))):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(owner, name, call)


def _private_folder(monkeypatch, folder: Path) -> None:
    """folder is another user's 0700 folder: nothing inside it can be looked up (stat) or opened."""
    inside = lambda path: folder in path.parents  # noqa: E731
    _refuse(monkeypatch, os, "stat", inside)
    _refuse(monkeypatch, os, "open", inside)
    _refuse(monkeypatch, io, "open", inside)
    _refuse(monkeypatch, builtins, "open", inside)


def _private_file(monkeypatch, path: Path) -> None:
    """path is another user's 0600 file in a readable folder: it can be looked up, not opened."""
    _refuse(monkeypatch, io, "open", lambda p: p == path)
    _refuse(monkeypatch, builtins, "open", lambda p: p == path)


@pytest.fixture
def texts(small_agnews, tmp_path) -> Path:
    path = tmp_path / "texts.csv"
    path.write_text("".join(small_agnews.read_text().splitlines(keepends=True)[:11]))
    return path


# --- 1. another user's private run folder or file: one line saying so, not a traceback or "damaged" ------------------

@pytest.mark.parametrize("private", ["", runs.ADAPTER])
def test_a_run_folder_that_may_not_be_searched_is_one_line_not_a_traceback(cli, finished_copy, texts, tmp_path,
                                                                          monkeypatch, private):
    """`lorafit predict` of another user's run folder (mode 0700), or of a run whose adapter/ is private: a lookup
    inside it (manifest.json's exists(), adapter_config.json's is_file()) raised a raw PermissionError traceback."""
    _private_folder(monkeypatch, finished_copy / private)
    line = one_line_error(cli("predict", finished_copy, "--input", texts, "--output", tmp_path / "preds.csv"),
                          str(finished_copy), "cannot be read (Permission denied", "make it readable")
    assert "damaged" not in line and "restore" not in line
    assert (f"{private}/ cannot be read" in line) if private else "a folder above it" in line
    assert not (tmp_path / "preds.csv").exists()


@pytest.mark.parametrize("name", [runs.CONFIG, runs.LABELS, "adapter/adapter_config.json"])
def test_another_users_private_file_is_not_called_damaged(cli, finished_copy, texts, tmp_path, monkeypatch, name):
    """A file its owner keeps private (0600) in a readable run folder: before, 'run folder ... is damaged: config.yaml
    is not readable UTF-8 text (labels.json: is not valid JSON (truncated or overwritten)); restore it from a backup,
    or retrain the run', a fix that cannot help. Only the adapter's weights said so right (tests/test_runs_review2.py)."""
    _private_file(monkeypatch, finished_copy / name)
    line = one_line_error(cli("predict", finished_copy, "--input", texts, "--output", tmp_path / "preds.csv"),
                          str(finished_copy), name, "cannot be read (Permission denied)", "make it readable")
    assert "damaged" not in line and "restore" not in line and "retrain" not in line


@pytest.mark.parametrize("name", [runs.MANIFEST, runs.RESULT, runs.EVAL_CURVE])
def test_a_finished_runs_private_file_is_unreadable_not_damaged(finished_copy, monkeypatch, name):
    """What `lorafit report` and a sweep reusing a finished trial check (runs.FINISHED): before, 'is damaged: ...
    (truncated or overwritten); restore it from a backup'."""
    _private_file(monkeypatch, finished_copy / name)
    with pytest.raises(runs.RunFolderError) as caught:
        runs.check_run_folder(finished_copy, runs.FINISHED)
    assert caught.value.status == "unreadable" and caught.value.file == name
    assert "Permission denied" in str(caught.value) and "make it readable" in str(caught.value)


def test_an_output_dir_inside_a_folder_that_may_not_be_searched_is_one_line(cli, tiny_roberta, small_agnews,
                                                                           tmp_path, monkeypatch):
    """`lorafit train --output-dir /home/alice/runs` as another user: writable_dir_check, the first look at the run
    folder (train.run_folder_lock), raised a raw PermissionError traceback from Path.exists()."""
    alice = tmp_path / "alice"
    (alice / "runs").mkdir(parents=True)
    config = tiny_run_config(tmp_path, small_agnews, model=tiny_roberta)
    _private_folder(monkeypatch, alice)
    one_line_error(cli("train", config, "--output-dir", alice / "runs"), str(alice / "runs" / "tiny"),
                   "Permission denied", "choose a writable --output-dir")


# --- 2. a lock file only its details vouch for: readers say which file to delete -------------------------------------

def _left_by_another_machine(run_dir: Path) -> Path:
    """The lock file a run on another machine (same network file system) left when it was killed: its flock went with
    it, and no flock here can tell whether that run still goes, so its details are trusted (never guessed dead)."""
    path = run_dir / locks.LOCK
    path.write_text(json.dumps({"host": "gpu-node-7.example", "pid": 4242, "started": "then"}))
    return path


def test_readers_name_the_lock_file_another_machines_killed_run_left(cli, finished_copy, texts, tmp_path):
    """Before: predict, evaluate and export said 'is being written: process 4242 on gpu-node-7.example holds its lock;
    wait for that run to finish' for good, where `lorafit train` says 'if that run is no longer running, delete
    .../.lock'. The run may still go on that machine: wait or delete, as train says."""
    lock = _left_by_another_machine(finished_copy)
    for args in (("predict", finished_copy, "--input", texts, "--output", tmp_path / "preds.csv"),
                 ("evaluate", finished_copy, "--data", texts),
                 ("export", finished_copy, "--output", tmp_path / "export")):
        line = one_line_error(cli(*args), "process 4242 on gpu-node-7.example", "wait for that run to finish")
        assert f"if it is no longer running, delete {lock}" in line, line
    assert not (tmp_path / "preds.csv").exists() and not (tmp_path / "export").exists()


def test_without_flock_a_lock_file_left_empty_by_a_killed_start_names_the_file(cli, finished_copy, texts, tmp_path,
                                                                                 monkeypatch):
    """No flock (NFS without lockd): the lock file is the lock, and a run killed between making it and writing its
    details leaves it empty for good. Readers said 'another process (it has not written its details yet) holds its
    lock; wait for that run to finish' forever."""
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    lock = finished_copy / locks.LOCK
    lock.touch()
    line = one_line_error(cli("predict", finished_copy, "--input", texts, "--output", tmp_path / "preds.csv"),
                          "has not written its details yet", "wait for that run to finish")
    assert f"if it is no longer running, delete {lock}" in line, line


def test_a_file_missing_beside_another_machines_lock_names_the_lock_file(finished_copy):
    """The same for a file missing while the lock file names a writer: 'busy', with the file to delete."""
    lock = _left_by_another_machine(finished_copy)
    (finished_copy / runs.LABELS).unlink()
    with pytest.raises(runs.RunFolderError) as caught:
        runs.check_run_folder(finished_copy)
    assert caught.value.status == "busy" and f"delete {lock}" in str(caught.value)


def test_readers_tell_a_live_writer_only_to_wait(cli, finished_copy, texts, tmp_path):
    """A writer whose flock is held is live: no file to delete (deleting it would let a second writer in)."""
    with lock_held_by_another_process(finished_copy) as pid:
        line = one_line_error(cli("predict", finished_copy, "--input", texts, "--output", tmp_path / "preds.csv"),
                              f"process {pid}", "wait for that run to finish, then run this again")
        assert "delete" not in line


# --- 3. a hand-edited eval_curve.jsonl: refused before a resumed run trains, not after ------------------------------

@pytest.mark.parametrize("edit", ["accuracy as text", "no step"])
def test_resuming_a_run_whose_curve_row_was_edited_is_refused_before_training(cli, tmp_path, tiny_roberta,
                                                                               small_agnews, capsys, edit):
    """A curve line whose accuracy was edited to text (or null), or that lost its step, still parsed as a row:
    the resume check let it through, the run trained every remaining step, and then summarising it crashed with a
    raw TypeError ('>' not supported between 'float' and 'str') or KeyError 'step', result.json never written.
    The line is now damaged like one whose step is no whole number (tests/test_runs_review2.py): one line, up front."""
    from lorafit.config import load_config
    from lorafit.train import run_training

    config = tiny_run_config(tmp_path, small_agnews, model=tiny_roberta, eval_steps=1)
    assert run_training(load_config(str(config)), extra_callbacks=[signal_at_step(2)])["status"] == "interrupted"
    capsys.readouterr()
    run_dir = tmp_path / "runs" / "tiny"
    path = run_dir / runs.EVAL_CURVE
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) >= 2
    if edit == "no step":
        del rows[0]["step"]
    else:
        rows[0]["accuracy"] = str(rows[0]["accuracy"])
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    one_line_error(cli("train", config), str(run_dir), runs.EVAL_CURVE, "line 1", "--overwrite")
    assert runs.read_json(run_dir / runs.RESULT)["status"] == "interrupted", "nothing was trained"
    kept = runs.read_eval_curve(run_dir)  # what a sweep and report read: the edited row left out, no traceback
    assert [row["step"] for row in kept] == [row["step"] for row in rows[1:]]
    assert runs.best_and_final(kept)[1]["step"] == rows[-1]["step"]


def test_report_and_an_unfinished_folder_name_the_lock_file_a_killed_run_left(cli, finished_copy, tmp_path):
    """The same lock file made `lorafit report` list the run as 'running, being trained by process 4242' for good, and
    predict on a folder with no adapter or config yet say 'holds its lock: training it now' with nothing to do."""
    from lorafit import report

    lock = _left_by_another_machine(finished_copy)
    record = report.load_run(finished_copy)
    assert record.status == "running" and f"if it is no longer running, delete {lock}" in record.note

    starting = tmp_path / "starting"  # a run killed after taking its lock, before it wrote its config
    starting.mkdir()
    lock = _left_by_another_machine(starting)
    with pytest.raises(runs.UserError) as caught:
        runs.check_run_folder(starting)
    assert "training it now" in str(caught.value) and f"delete {lock}" in str(caught.value)


def test_report_tells_nothing_to_delete_while_the_writer_is_live(finished_copy):
    from lorafit import report

    with lock_held_by_another_process(finished_copy) as pid:
        record = report.load_run(finished_copy)
    assert record.status == "running" and f"process {pid}" in record.note and "delete" not in record.note
