"""Review of lorafit.locks: each test fails without its fix. No timers raced: another process's lock is an fd this
test holds (flock is per open file, so it refuses this process's RunLock too), and locks' sleep is replaced."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest

from lorafit import locks
from lorafit.errors import UserError

fcntl = pytest.importorskip("fcntl")


def _patch_sleep(monkeypatch, sleep) -> None:
    """time.sleep as locks sees it, and only there."""
    import time

    clock = types.SimpleNamespace(**{name: getattr(time, name) for name in ("monotonic", "monotonic_ns", "strftime")})
    clock.sleep = sleep
    monkeypatch.setattr(locks, "time", clock)


def _dead_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def _stale_lock(run_dir: Path, **details) -> Path:
    """The lock file a killed run of this machine left: its details, no flock."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / locks.LOCK
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "started": "then", **details}))
    return path


def _held(path: Path, details: dict | None) -> int:
    """An fd holding path's exclusive flock, as another live process would (details None: not written yet)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    if details is not None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(details).encode(), 0)
    return fd


def test_a_readers_check_does_not_turn_a_writer_away_from_a_killed_runs_lock(tmp_path, monkeypatch, caplog):
    """Before: a reader's shared flock (report, a sweep polling lock_holder) at the moment a run took over a killed
    run's lock file refused it at once: 'in use by process <the dead pid>; wait for that run to finish'."""
    run_dir = tmp_path / "run"
    path = _stale_lock(run_dir)
    dead = json.loads(path.read_text())["pid"]
    probe = os.open(path, os.O_RDONLY)
    fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a reader's check, caught in the act
    _patch_sleep(monkeypatch, lambda seconds: fcntl.flock(probe, fcntl.LOCK_UN))  # and over a moment later
    try:
        with caplog.at_level(logging.WARNING, logger="lorafit"), locks.RunLock(run_dir):
            assert locks.read_lock(run_dir)["pid"] == os.getpid()
    finally:
        os.close(probe)
    assert f"process {dead}" in caplog.text and "taking the lock over" in caplog.text


def test_a_live_writer_is_still_refused_at_once(tmp_path, monkeypatch):
    """The reader's wait above is for shared flocks only: a writer's exclusive one refuses without sleeping."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = _held(run_dir / locks.LOCK, {"host": socket.gethostname(), "pid": os.getppid(), "started": "now"})
    _patch_sleep(monkeypatch, lambda seconds: pytest.fail("slept while a writer holds the lock"))
    try:
        with pytest.raises(locks.RunFolderBusy, match=f"in use by process {os.getppid()}"):
            locks.RunLock(run_dir).acquire()
    finally:
        os.close(holder)


def test_a_start_interrupted_while_another_wins_the_flock_leaves_that_ones_lock_file(tmp_path, monkeypatch):
    """This process made .lock, another opened it and won the flock, and has not written its details yet; Ctrl-C
    (or export's SIGTERM) while this one waits for them. Before: the file was removed under its holder, so a third
    run made a fresh one and two processes wrote the folder."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    real, winner = locks._try_flock, []

    def another_wins(fd, shared=False):
        if not winner:
            winner.append(_held(run_dir / locks.LOCK, None))
        return real(fd, shared)

    def interrupted(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(locks, "_try_flock", another_wins)
    _patch_sleep(monkeypatch, interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            locks.RunLock(run_dir).acquire()
        assert locks._same_file(winner[0], run_dir / locks.LOCK), "the holder's lock file is left in place"
    finally:
        os.close(winner[0])


def test_a_start_that_fails_on_its_own_file_still_removes_it(tmp_path, monkeypatch):
    """The fix above keeps this: no other holder, and writing the details fails (a full disk)."""
    def full(fd, info):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(locks, "_write_fd", full)
    with pytest.raises(UserError, match="No space left on device; free some space"):
        locks.RunLock(tmp_path / "out" / "run").acquire()
    assert not (tmp_path / "out").exists()


def _another_users_file(monkeypatch, path: Path, readable: bool = True) -> None:
    """path as another user's 0644 (or 0600) file: opening it to write (or at all) is refused, even for root."""
    real = os.open

    def user_open(file, flags, *args, **kwargs):
        refused = (flags & os.O_ACCMODE) != os.O_RDONLY or not readable
        if Path(file) == path and path.exists() and refused and not flags & os.O_EXCL:  # O_EXCL: EEXIST first
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real(file, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", user_open)


def test_another_users_live_run_is_named_not_a_permission_error(tmp_path, monkeypatch):
    """A run folder shared by a team: before, 'cannot write run: Permission denied; free some space or write
    somewhere else' while another user's run held it."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = _held(run_dir / locks.LOCK, {"host": socket.gethostname(), "pid": os.getppid(), "started": "now"})
    _another_users_file(monkeypatch, run_dir / locks.LOCK)
    try:
        with pytest.raises(locks.RunFolderBusy, match=f"in use by process {os.getppid()}"):
            locks.RunLock(run_dir).acquire()
        assert locks._same_file(holder, run_dir / locks.LOCK)
    finally:
        os.close(holder)


def test_another_users_killed_run_is_taken_over(tmp_path, monkeypatch, caplog):
    """Before: the same permission error, for good, though its flock is free and the folder writable."""
    run_dir = tmp_path / "run"
    path = _stale_lock(run_dir)
    _another_users_file(monkeypatch, path)
    with caplog.at_level(logging.WARNING, logger="lorafit"), locks.RunLock(run_dir):
        assert locks.read_lock(run_dir)["pid"] == os.getpid()
    assert "taking the lock over" in caplog.text
    assert not path.exists()


def test_another_users_unreadable_lock_file_names_the_file_to_delete(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    path = _stale_lock(run_dir)
    _another_users_file(monkeypatch, path, readable=False)
    with pytest.raises(locks.RunFolderBusy) as caught:
        locks.RunLock(run_dir).acquire()
    line = str(caught.value)
    assert "another user's process" in line and f"delete {path}" in line and "free some space" not in line
    assert "\n" not in line


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_a_read_only_run_folder_is_not_told_to_free_space(tmp_path, monkeypatch, code):
    """`lorafit evaluate` of a run on a read-only disk, or in another user's folder. Before: 'free some space'."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    real = os.open

    def read_only(file, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            raise OSError(code, os.strerror(code), str(file))
        return real(file, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(UserError, match=f"{os.strerror(code)}; make it writable or write somewhere else") as caught:
        locks.RunLock(run_dir, scores_only=True).acquire()
    assert "free some space" not in str(caught.value)


def test_a_damaged_pid_beyond_any_process_is_not_a_traceback(tmp_path, monkeypatch):
    """Without flock (NFS without lockd) the pid decides: one no process can have was an OverflowError traceback
    from os.kill, in lock_holder and in RunLock."""
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    run_dir = tmp_path / "run"
    _stale_lock(run_dir, pid=2**40)
    assert locks.lock_holder(run_dir) is None
    with locks.RunLock(run_dir):
        assert locks.read_lock(run_dir)["pid"] == os.getpid()


def test_a_release_that_cannot_remove_the_lock_file_is_no_traceback(tmp_path, monkeypatch):
    """Another user's run folder whose .lock is writable (or a folder made read-only meanwhile): the lock is taken,
    then release's unlink raised PermissionError, which hid the command's own one-line error. The file stays,
    its flock goes, and the next run takes it over."""
    run_dir = tmp_path / "run"
    lock = locks.RunLock(run_dir).acquire()
    real = Path.unlink

    def refused(self, *args, **kwargs):
        if self.name == locks.LOCK:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", refused)
    lock.release()
    monkeypatch.undo()
    assert not locks.held_here(run_dir) and locks.lock_holder(run_dir) is None
    with locks.RunLock(run_dir):
        assert locks.read_lock(run_dir)["pid"] == os.getpid()
