"""Second review of lorafit.locks and of how its callers take the run folder's lock: each test fails without its
fix. No timers are raced: a Ctrl-C is raised at a fixed point (the moment the lock has just been taken), as
SIGINT's default handler raises KeyboardInterrupt there; another process holds a lock until the test closes its
stdin."""

from __future__ import annotations

import pytest
from conftest import lock_held_by_another_process, one_line_error

from lorafit import locks, train

pytest.importorskip("fcntl")


def _ctrl_c_after(monkeypatch, owner, name: str) -> None:
    """owner.name does its work, then a Ctrl-C arrives before it returns (once)."""
    real, fired = getattr(owner, name), []

    def then_interrupted(*args, **kwargs):
        result = real(*args, **kwargs)
        if not fired:
            fired.append(True)
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(owner, name, then_interrupted)


def _lock_is_free(run_dir) -> bool:
    """No lock file left, and this process can take the lock again (its flock was not kept by a lost fd)."""
    if (run_dir / locks.LOCK).exists() or locks.held_here(run_dir):
        return False
    with locks.RunLock(run_dir):
        return True


def test_ctrl_c_as_a_training_run_takes_its_lock_leaves_no_lock(tmp_path, monkeypatch):
    """Before: train.run_folder_lock took the lock inside main_process_first and entered its try only after that
    block ended, so a Ctrl-C (or, under torchrun, a failed broadcast to the other ranks) in between printed
    'lorafit: interrupted' and left .lock behind; in a long-lived process (a sweep worker) the lost fd kept the
    flock, and every later run of that folder was refused as 'in use by' the worker itself."""
    run_dir = tmp_path / "runs" / "tiny"
    _ctrl_c_after(monkeypatch, locks.RunLock, "acquire")
    with pytest.raises(KeyboardInterrupt), train.run_folder_lock(run_dir):
        pytest.fail("the run went on past the Ctrl-C")
    monkeypatch.undo()
    assert _lock_is_free(run_dir)


def test_ctrl_c_inside_acquire_after_the_flock_leaves_no_lock(tmp_path, monkeypatch):
    """Before: a Ctrl-C after the lock file was locked and written but before acquire returned (while it noted the
    lock as this process's: a realpath, several system calls on a network disk) left the lock taken, and `with
    RunLock(...)` (evaluate, a sweep worker, export's atomic_replace_dir) never reached __exit__ to release it."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _ctrl_c_after(monkeypatch, locks.RunLock, "_key")  # first called once the flock is held and the details written
    with pytest.raises(KeyboardInterrupt), locks.RunLock(run_dir):
        pytest.fail("the block ran past the Ctrl-C")
    monkeypatch.undo()
    assert _lock_is_free(run_dir)


def test_an_export_over_a_folder_that_another_process_trains_is_refused(cli, finished_copy, tmp_path):
    """`lorafit export RUN --output runs/other --overwrite` while another process trains runs/other. Before: the
    export took only its own lock (.other.lock) and swapped the live run's folder away (exit 0), so that run then
    wrote its checkpoints and result into the export."""
    other = tmp_path / "runs" / "other"
    other.mkdir(parents=True)
    (other / "config.yaml").write_text("name: other\n")
    with lock_held_by_another_process(other) as pid:
        line = one_line_error(cli("export", finished_copy, "--output", other, "--overwrite"), str(other),
                              f"process {pid}")
        assert "wait for that run to finish" in line
        assert (other / "config.yaml").read_text() == "name: other\n"
