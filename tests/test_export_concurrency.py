"""runs.atomic_replace_dir (export's and the adapter's swap) with more than one writer: two writers of one target at
once (the second is refused in one line, the first finishes whole), leftovers of a writer killed with SIGKILL
(removed by the next writer), and reading the umask without changing it (other threads' files keep their mode)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import one_line_error
from lorafit import locks, runs
from lorafit.errors import UserError


def _writing(name: str, text: str = "x"):
    return lambda folder: (folder / name).write_text(text)


class _BlockedWriter:
    """atomic_replace_dir(target) in a thread whose build() writes first.txt, then waits until released: a writer
    caught mid-build, at a fixed point (no timer)."""

    def __init__(self, call):
        self.building, self.go, self.errors = threading.Event(), threading.Event(), []
        self.thread = threading.Thread(target=self._run, args=(call,))

    def build(self, folder: Path) -> None:
        (folder / "first.txt").write_text("first")
        self.wait_here()

    def wait_here(self) -> None:
        self.building.set()
        assert self.go.wait(60)

    def _run(self, call) -> None:
        try:
            call(self)
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.errors.append(exc)

    def __enter__(self) -> "_BlockedWriter":
        self.thread.start()
        assert self.building.wait(60), self.errors
        return self

    def __exit__(self, *exc) -> None:
        self.go.set()
        self.thread.join(60)
        assert not self.thread.is_alive() and not self.errors, self.errors


def test_a_second_writer_of_one_target_is_refused_and_the_first_finishes_whole(tmp_path):
    target = tmp_path / "out"
    with _BlockedWriter(lambda w: runs.atomic_replace_dir(w.build, target)):
        live = [p for p in tmp_path.iterdir() if p.name.startswith(".out.") and p.name != ".out.lock"]
        with pytest.raises(UserError) as refused:  # before: it swapped itself in under the first one's feet
            runs.atomic_replace_dir(_writing("second.txt"), target)
        assert live and all(p.is_dir() for p in live), "the live writer's folder is left alone"
    message = str(refused.value)
    assert "\n" not in message and str(target) in message and f"process {os.getpid()}" in message
    assert "wait for it to finish" in message and "nothing was written" in message
    assert sorted(os.listdir(target)) == ["first.txt"]
    assert sorted(os.listdir(tmp_path)) == ["out"], "no lock, temporary or aside folder left"
    runs.atomic_replace_dir(_writing("second.txt"), target)  # one after the other: the last one wins
    assert sorted(os.listdir(target)) == ["second.txt"] and sorted(os.listdir(tmp_path)) == ["out"]


@pytest.fixture
def run(finished_copy) -> Path:
    return finished_copy


def _complete_export(folder: Path) -> None:
    files = set(os.listdir(folder))
    assert {"model.safetensors", "config.json", "tokenizer_config.json", "README.md"} <= files, files
    assert json.loads((folder / "config.json").read_text())["id2label"]


def test_two_exports_to_one_output_at_once(cli, run, tmp_path, monkeypatch):
    """The second `lorafit export --output SAME` is one line while the first writes; the first's export is whole."""
    from lorafit import export

    out, first_build = tmp_path / "out", threading.local()
    real_verify = export.verify_export

    def verify_then_wait(model, tokenizer, folder):  # the first export stops here, its folder half-built
        real_verify(model, tokenizer, folder)
        if getattr(first_build, "writer", None):
            first_build.writer.wait_here()

    def first(writer):
        first_build.writer = writer
        export.export_run(run, out, overwrite=True)

    def no_second_load(*args, **kwargs):
        raise AssertionError("the second export loaded its model before being refused")

    monkeypatch.setattr(export, "verify_export", verify_then_wait)
    with _BlockedWriter(first):
        monkeypatch.setattr(export, "load_merged_fp32", no_second_load)  # the first has loaded: it waits in verify
        line = one_line_error(cli("export", run, "--output", out, "--overwrite"), str(out), "being written",
                              "wait for it to finish")
        assert "Traceback" not in line and not out.exists()
    _complete_export(out)
    assert sorted(os.listdir(tmp_path)) == ["out", "run"]


def test_an_export_refuses_an_output_written_meanwhile_without_overwrite(run, tmp_path, monkeypatch):
    """check_output passed (no output yet), then another export wrote it while this one loaded: the check is made
    again under the output's lock, so this one does not replace it without --overwrite."""
    from lorafit import export

    out, real_load = tmp_path / "out", export.load_merged_fp32

    def load_while_another_exports(*args, **kwargs):
        runs.atomic_replace_dir(_writing("model.safetensors", "other"), out)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(export, "load_merged_fp32", load_while_another_exports)
    with pytest.raises(UserError, match="already exists; add --overwrite"):
        export.export_run(run, out)
    assert (out / "model.safetensors").read_text() == "other"
    assert sorted(os.listdir(tmp_path)) == ["out", "run"]


_KILLED_WRITER = """
import sys, time
from pathlib import Path
from lorafit import runs

def build(folder):
    (folder / "model.safetensors").write_bytes(b"x" * 4096)
    Path(sys.argv[2]).write_text("building")
    time.sleep(600)

runs.atomic_replace_dir(build, Path(sys.argv[1]))
"""


def test_leftovers_of_a_writer_killed_mid_build_are_removed_by_the_next(tmp_path):
    parent, marker = tmp_path / "exports", tmp_path / "building"
    target = parent / "out"
    runs.atomic_replace_dir(_writing("old.txt"), target)
    writer = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(target), str(marker)])
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():  # waits for the writer to reach its build, not a fixed time
            assert writer.poll() is None and time.monotonic() < deadline, "the writer did not start its build"
            time.sleep(0.05)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    (parent / ".out.old").mkdir()  # and one killed between its two renames
    (parent / ".out.old" / "old.txt").write_text("old")
    half_built = [p for p in parent.iterdir() if re.fullmatch(r"\.out\.[a-z0-9_]{8}", p.name)]  # mkdtemp's name
    assert len(half_built) == 1 and (half_built[0] / "model.safetensors").is_file(), os.listdir(parent)

    runs.atomic_replace_dir(_writing("new.txt"), target)
    assert sorted(os.listdir(parent)) == ["out"]
    assert sorted(os.listdir(target)) == ["new.txt"]


def test_an_export_removes_what_a_killed_export_left(cli, run, tmp_path):
    out = tmp_path / "out"
    stale = tmp_path / ".out.k1ll3d_0"  # mkdtemp's name for a half-built export
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 1024)
    unrelated = [tmp_path / ".out.notes", tmp_path / ".out.k1ll3d_0.txt", tmp_path / ".other.k1ll3d_0"]
    for path in unrelated:
        path.mkdir()
    assert cli("export", run, "--output", out).code == 0
    _complete_export(out)
    assert not stale.exists() and all(p.is_dir() for p in unrelated), "only this target's leftovers go"


def test_umask_is_read_without_changing_it(tmp_path, monkeypatch):
    status = Path("/proc/self/status")
    if not status.exists() or "Umask:" not in status.read_text():
        pytest.skip("no Umask line in /proc/self/status")

    def changed(mask):
        raise AssertionError("os.umask changes the umask for every thread")

    set_umask = os.umask
    real = set_umask(0o027)
    try:
        monkeypatch.setattr(runs.os, "umask", changed)
        assert runs._umask() == 0o027
        runs.atomic_write_text(tmp_path / "f.txt", "x")
        assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o640
    finally:
        set_umask(real)


def test_umask_without_proc_is_read_and_restored(monkeypatch):
    real_open = open

    def no_proc(path, *args, **kwargs):
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(runs, "open", no_proc, raising=False)  # the module's `open`, not every caller's
    real = os.umask(0o027)
    try:
        assert runs._umask() == 0o027 and runs._umask() == 0o027
    finally:
        os.umask(real)


def test_a_writer_killed_between_its_renames_leaves_the_last_good_copy_for_a_failing_rewrite(tmp_path):
    """Killed after moving the old target aside and before moving the new one in: the next write puts the old one
    back first, so when that write fails too the last good copy is where it was, not deleted as a leftover."""
    target = tmp_path / "out"
    runs.atomic_replace_dir(_writing("old.txt"), target)
    os.replace(target, tmp_path / ".out.old")  # what the killed writer's first rename did

    def failing(folder: Path) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(UserError):
        runs.atomic_replace_dir(failing, target)
    assert sorted(os.listdir(tmp_path)) == ["out"] and sorted(os.listdir(target)) == ["old.txt"]
    runs.atomic_replace_dir(_writing("new.txt"), target)
    assert sorted(os.listdir(target)) == ["new.txt"]


def test_a_training_runs_adapter_save_takes_no_second_lock(tmp_path, monkeypatch):
    """The adapter is saved under the run folder's lock, so a second lock on it could only fail: on a disk without
    flock, a `.adapter.lock` left by a save killed on another machine (or a container since renamed) was refused at
    the end of hours of training. Now the save goes through, and makes no lock folder of its own in the run."""
    import errno
    import fcntl

    from lorafit import train

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    run_dir = tmp_path / "run"
    stale = run_dir / ".adapter.lock"
    stale.mkdir(parents=True)
    (stale / locks.LOCK).write_text(json.dumps({"host": "another-machine", "pid": 4242, "started": "yesterday"}))

    class Saves:
        def save_pretrained(self, folder, **kwargs):
            (Path(folder) / "saved.txt").write_text("weights")

    train.save_adapter(Saves(), Saves(), ["a", "b"], run_dir)
    assert (run_dir / runs.ADAPTER / "saved.txt").read_text() == "weights"
    assert json.loads((run_dir / runs.LABELS).read_text()) == ["a", "b"]
