"""Run folders shared by two processes, or left half-written: a review of src/lorafit/runs.py.

Readers (predict, evaluate, export) take no lock: a loader confirms afterwards that no writer held the folder and
that no file it read was replaced (runs.unchanged_while_loading), so it never uses a mix of two runs. evaluate writes
its scores under the folder's lock, into the run it scored only. Where flock is missing (ENOLCK) the lock file is
made with O_EXCL. No timers are raced: a writer acts at a fixed point inside a reader (a monkeypatched loader or
scorer), and a paused holder is released from a monkeypatched sleep.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import one_line_error, tiny_run_config, write_config
from lorafit import locks, runs
from lorafit.errors import UserError


@pytest.fixture
def run(finished_tiny, tmp_path) -> Path:
    return shutil.copytree(finished_tiny, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))


@pytest.fixture
def texts(small_agnews, tmp_path) -> Path:
    """20 labelled rows: predict's input and evaluate's data."""
    path = tmp_path / "texts.csv"
    path.write_text("".join(small_agnews.read_text().splitlines(keepends=True)[:21]))
    return path


def _patch_sleep(monkeypatch, sleep) -> None:
    """time.sleep as locks sees it, and only there (torch and friends keep theirs)."""
    import time
    import types

    clock = types.SimpleNamespace(**{name: getattr(time, name) for name in ("monotonic", "monotonic_ns", "strftime")})
    clock.sleep = sleep
    monkeypatch.setattr(locks, "time", clock)


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def _retrain_in_place(run: Path) -> None:
    """What a `lorafit train --overwrite` that completed meanwhile leaves: new labels.json (here the classes in
    another order) and a new adapter folder, each put in place by a rename."""
    labels = json.loads((run / runs.LABELS).read_text())
    runs.atomic_write_json(run / runs.LABELS, labels[::-1])
    runs.atomic_replace_dir(lambda new: [shutil.copy2(p, new / p.name) for p in (run / runs.ADAPTER).iterdir()],
                            run / runs.ADAPTER)


# --- 1. readers and a writer ----------------------------------------------------------------------------------------

def test_predict_refuses_a_run_retrained_while_it_loaded(cli, run, texts, tmp_path, monkeypatch):
    """Before: predict checked labels.json, the run was retrained, and the new adapter was loaded and written out
    under the old class names (a mix of two runs, exit 0)."""
    import lorafit.predict as predict

    real = predict.load_adapter_for_inference

    def retrained_meanwhile(*args, **kwargs):
        _retrain_in_place(run)
        return real(*args, **kwargs)

    monkeypatch.setattr(predict, "load_adapter_for_inference", retrained_meanwhile)
    out = tmp_path / "pred.csv"
    one_line_error(cli("predict", run, "--input", texts, "--output", out), "was rewritten while it was read", "again")
    assert not out.exists()
    monkeypatch.undo()
    assert cli("predict", run, "--input", texts, "--output", out).code == 0, "read again, it is one run"


def test_readers_refuse_a_run_whose_writer_holds_the_lock(cli, run, texts, tmp_path):
    """A run killed after its adapter was saved and then resumed (lorafit train CONFIG) is written again while its
    adapter is all there. Before: predict, evaluate and export used it meanwhile."""
    before = _files(run)
    with locks.RunLock(run):
        holder = f"process {os.getpid()} on {socket.gethostname()}"
        for args in (("predict", run, "--input", texts, "--output", tmp_path / "pred.csv"),
                     ("evaluate", run, "--data", texts),
                     ("export", run, "--output", tmp_path / "export")):
            one_line_error(cli(*args), "is being written", holder, "holds its lock", "wait")
    assert not (tmp_path / "pred.csv").exists() and not (tmp_path / "export").exists()
    assert _files(run) == before, "evaluate wrote nothing into the run"


def test_a_folder_cleared_under_a_loader_is_one_line(cli, run, tmp_path, monkeypatch):
    """`train --overwrite` takes the lock and clears the folder while export loads the adapter: before, a
    FileNotFoundError traceback from deep in peft."""
    import lorafit.export as export

    real, writer = export.load_adapter_for_inference, locks.RunLock(run)

    def overwrite_starts(*args, **kwargs):
        writer.acquire()
        runs.clear_run_dir(run)
        return real(*args, **kwargs)

    monkeypatch.setattr(export, "load_adapter_for_inference", overwrite_starts)
    try:
        one_line_error(cli("export", run, "--output", tmp_path / "export"), "is being written", "holds its lock")
    finally:
        writer.release()
    assert not (tmp_path / "export").exists()


def test_evaluate_writes_no_scores_into_a_folder_retrained_meanwhile(cli, run, texts, monkeypatch):
    """Before: evaluate scored the old run and then wrote evaluation/ and adapter/README.md into the new one (into
    a folder `train --overwrite` had just cleared: an adapter/ holding a model card only)."""
    import lorafit.evaluate as evaluate

    real = evaluate.predict_probabilities

    def retrained_meanwhile(*args, **kwargs):
        _retrain_in_place(run)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "predict_probabilities", retrained_meanwhile)
    before = _files(run)
    one_line_error(cli("evaluate", run, "--data", texts), "was rewritten while it was read")
    assert _files(run) == before and not (run / "evaluation").exists()


def test_evaluate_writes_nothing_beside_a_training_run_that_started_meanwhile(cli, run, texts, monkeypatch):
    import lorafit.evaluate as evaluate

    real, writer = evaluate.predict_probabilities, locks.RunLock(run)

    def overwrite_starts(*args, **kwargs):
        writer.acquire()
        runs.clear_run_dir(run)
        runs.atomic_write_text(run / runs.CONFIG, "name: new\n")
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "predict_probabilities", overwrite_starts)
    monkeypatch.setattr(evaluate, "EVALUATION_LOCK_WAIT_S", 0)
    try:
        one_line_error(cli("evaluate", run, "--data", texts), "in use by", f"process {os.getpid()}")
        assert _files(run) == [".lock", "config.yaml"], "the new run's folder holds no scores of the old one"
    finally:
        writer.release()


def test_evaluate_waits_for_another_evaluation_writing_its_scores(cli, run, texts, monkeypatch):
    """Two evaluations of one run (test and validation side by side) finish together: the second waits for the
    first's lock instead of writing beside it, and is not refused either."""
    other = locks.RunLock(run, scores_only=True).acquire()  # the other evaluation, writing its scores
    assert runs.writer_of(run) is None, "it writes nothing that a loader reads: predict goes on meanwhile"
    waited = []

    def other_finishes(seconds):
        waited.append(seconds)
        other.release()

    _patch_sleep(monkeypatch, other_finishes)
    try:
        result = cli("evaluate", run, "--data", texts)
    finally:
        other.release()
    assert result.code == 0, result.err
    assert waited, "it waited for the other evaluation"
    assert (run / "evaluation" / "texts.json").is_file() and not (run / locks.LOCK).exists()


def test_a_run_stopped_right_after_its_adapter_is_usable_not_damaged(tiny_roberta, small_agnews, tmp_path,
                                                                      monkeypatch):
    """Training wrote the adapter, then labels.json: a run stopped (or read) between the two was called damaged,
    'restore it from a backup', though it was only unfinished. labels.json now comes first."""
    from lorafit.config import load_config
    from lorafit.train import run_training

    config = write_config(
        tmp_path / "stop.yaml", name="stop", output_dir=str(tmp_path / "runs"),
        model={"name_or_path": str(tiny_roberta)}, lora={"r": 4, "alpha": 8, "target_modules": ["query", "value"]},
        data={"train_file": str(small_agnews), "max_length": 32, "validation_size": 40, "max_train_samples": 32},
        train={"max_steps": 2, "eval_steps": 2, "batch_size": 8, "precision": "fp32"})

    class Killed(BaseException):
        pass

    real = runs.atomic_replace_dir

    def killed_after(build, target, **options):
        real(build, target, **options)
        if Path(target).name == runs.ADAPTER:
            raise Killed

    monkeypatch.setattr(runs, "atomic_replace_dir", killed_after)
    with pytest.raises(Killed):
        run_training(load_config(str(config)))
    run_dir = tmp_path / "runs" / "stop"
    assert not (run_dir / runs.RESULT).exists()
    assert runs.check_run_folder(run_dir).labels  # before: RunFolderError "labels.json is missing"


def test_training_removes_the_temporary_copies_killed_writes_left_and_nothing_else(tiny_roberta, small_agnews,
                                                                                  tmp_path, cli):
    """A process killed between mkstemp and the rename leaves a hidden .{name}.XXXXXXXX.tmp beside the run's files;
    training, holding the folder's lock, removes those of the files only a lock holder writes. A user's files, and
    copies of names that unlocked writers (predict --output, report --out) may be writing now, stay."""
    run_dir = tmp_path / "runs" / "tiny"
    run_dir.mkdir(parents=True)
    leftovers = [run_dir / ".result.json.abcd1234.tmp", run_dir / ".manifest.json.k1ll_3d0.tmp",
                 run_dir / ".sweep.json.x2y4z6w8.tmp"]
    for leftover in leftovers:
        leftover.write_text("half a file")
    kept = [run_dir / "notes.txt", run_dir / ".preds.csv.abcd1234.tmp", run_dir / ".result.json.keep.tmp",
            run_dir / ".result.json.abcd1234.tmp.bak"]
    for path in kept:
        path.write_text("the user's")

    result = cli("train", tiny_run_config(tmp_path, small_agnews, model=tiny_roberta, max_steps=2))
    assert result.code == 0, result.err
    assert not [p.name for p in leftovers if p.exists()]
    assert all(p.read_text() == "the user's" for p in kept)
    assert runs.read_json(run_dir / runs.RESULT)["status"] == "completed"


def test_evaluate_removes_the_temporary_copies_killed_evaluations_left(cli, run, texts):
    """An evaluation killed mid-write leaves .{name}.XXXXXXXX.tmp in evaluation/ (scores, chart) or beside the card;
    the next evaluation, holding the folder's lock that every writer of those files holds, removes them. Before,
    they stayed for good (a whole chart each). The adapter's own files and a user's files stay, the temporary copy
    of a `lorafit predict --output` aimed at evaluation/ (written without the lock) too."""
    scores, card_dir = run / "evaluation", run / runs.ADAPTER
    scores.mkdir()
    leftovers = [scores / ".test.json.abcd1234.tmp", scores / ".test-confusion.png.k1ll_3d0.tmp",
                 card_dir / ".README.md.x2y4z6w8.tmp"]
    kept = [scores / "notes.txt", scores / ".submission.csv.abcd1234.tmp",
            card_dir / ".adapter_config.json.abcd1234.tmp"]
    for path in leftovers + kept:
        path.write_text("half a file")

    result = cli("evaluate", run, "--data", texts)
    assert result.code == 0, result.err
    assert not [p.name for p in leftovers if p.exists()]
    assert all(p.read_text() == "half a file" for p in kept)
    assert (scores / "texts.json").is_file() and (card_dir / "README.md").is_file()


def test_overwrite_refuses_a_folder_that_holds_no_run_and_deletes_nothing(tiny_roberta, small_agnews, tmp_path,
                                                                           cli):
    """--overwrite emptied whatever folder --output-dir and --name named: a user's own folder lost its files."""
    config = tiny_run_config(tmp_path, small_agnews, model=tiny_roberta, max_steps=2)
    theirs = tmp_path / "runs" / "tiny"
    (theirs / "photos").mkdir(parents=True)
    (theirs / "notes.txt").write_text("the user's")
    one_line_error(cli("train", config, "--overwrite"), "holds no lorafit run (notes.txt, photos)", "--name")
    assert (theirs / "notes.txt").read_text() == "the user's" and (theirs / "photos").is_dir()

    (theirs / "notes.txt").unlink()
    (theirs / "photos").rmdir()
    assert cli("train", config).code == 0
    (theirs / "notes.txt").write_text("beside a run")  # a run's folder, with a note added: --overwrite replaces it
    result = cli("train", config, "--overwrite")
    assert result.code == 0, result.err
    assert not (theirs / "notes.txt").exists() and runs.read_json(theirs / runs.RESULT)["status"] == "completed"


def test_a_clear_killed_halfway_leaves_a_folder_that_is_still_a_runs(tmp_path, monkeypatch):
    """--overwrite removed entries in listing order: killed after config.yaml and result.json went, it left
    eval_curve.jsonl and labels.json, a folder every later --overwrite (and sweep trial) refused as no run's."""
    run = tmp_path / "run"
    (run / "tensorboard").mkdir(parents=True)
    for name in (runs.RESULT, runs.EVAL_CURVE, runs.MANIFEST, runs.LABELS, "notes.txt", runs.CONFIG):
        (run / name).write_text("{}")
    removed = []
    real_unlink = Path.unlink

    def unlink(path, *args, **kwargs):
        removed.append(path.name)
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", unlink)
    runs.clear_run_dir(run)
    markers = [i for i, name in enumerate(removed) if name in runs.RUN_MARKERS]
    others = [i for i, name in enumerate(removed) if name not in runs.RUN_MARKERS]
    assert max(others) < min(markers) and removed[-1] == runs.CONFIG, removed
    assert runs.run_content(run) == []


_HELD_BY_OTHERS: list[int] = []  # flocked descriptors standing for other processes, closed at the end of the file


@contextlib.contextmanager
def _another_processs_lock(run_dir: Path, remove: bool = True):
    """The lock as another live process holds it (here: flock on a file this test opens, the parent's pid).
    remove=False: still held after the block, until the test module ends."""
    import fcntl

    fd = os.open(run_dir / locks.LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "started": "now"}).encode())
    try:
        yield os.getppid()
    finally:
        if remove:
            os.close(fd)
            (run_dir / locks.LOCK).unlink()
        else:
            _HELD_BY_OTHERS.append(fd)


@pytest.fixture(autouse=True, scope="module")
def _close_held_by_others():
    yield
    for fd in _HELD_BY_OTHERS:
        os.close(fd)


def test_a_missing_file_in_a_folder_being_written_is_busy_not_damaged(run):
    (run / runs.CONFIG).unlink()  # train --overwrite clearing the folder, one file at a time
    with _another_processs_lock(run) as pid:
        with pytest.raises(runs.RunFolderError) as caught:
            runs.check_run_folder(run)
        assert caught.value.status == "busy"
        assert f"process {pid}" in str(caught.value) and "holds its lock" in str(caught.value)
        assert "is damaged" not in str(caught.value)
    with pytest.raises(runs.RunFolderError, match="is damaged: config.yaml is missing"):
        runs.check_run_folder(run)  # no writer: damaged, as before
    with locks.RunLock(run), pytest.raises(runs.RunFolderError, match="is damaged: config.yaml is missing"):
        runs.check_run_folder(run)  # the writer itself checking (a sweep before reusing a trial): damaged


def test_a_readers_check_does_not_turn_a_writer_away(tmp_path, monkeypatch):
    """runs.writer_of holds a shared flock for a moment; a training run starting right then waits it out."""
    import fcntl

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / locks.LOCK).touch()
    probe = os.open(run_dir / locks.LOCK, os.O_RDONLY)
    fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a reader's check, caught in the act
    _patch_sleep(monkeypatch, lambda seconds: fcntl.flock(probe, fcntl.LOCK_UN))
    try:
        with locks.RunLock(run_dir):
            assert locks.read_lock(run_dir)["pid"] == os.getpid()
    finally:
        os.close(probe)


def test_a_start_that_loses_the_flock_leaves_the_lock_file_to_its_holder(tmp_path, monkeypatch):
    """A run makes .lock; another opens it and wins the flock first. The loser must not remove the winner's file
    (a third run would then make a fresh one and hold a lock too); a start that fails on its own file does."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    real, winner = locks._try_flock, []

    def another_process_wins(fd, shared=False):
        if not winner:
            with _another_processs_lock(run_dir, remove=False) as pid:
                winner.append(pid)
        return real(fd, shared)

    monkeypatch.setattr(locks, "_try_flock", another_process_wins)
    with pytest.raises(locks.RunFolderBusy, match=f"in use by process {os.getppid()}"):
        locks.RunLock(run_dir).acquire()
    assert locks.read_lock(run_dir)["pid"] == os.getppid(), "the holder's lock file is left in place"


def test_writer_of_tells_a_live_writer_from_a_leftover_lock_file(tmp_path):
    run_dir = tmp_path / "run"
    assert runs.writer_of(run_dir) is None
    run_dir.mkdir()
    with locks.RunLock(run_dir):
        assert runs.writer_of(run_dir)["pid"] == os.getpid()
    (run_dir / locks.LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    assert runs.writer_of(run_dir) is None, "flock free: the writer that wrote it was killed"
    (run_dir / locks.LOCK).write_text(json.dumps({"host": "elsewhere.example", "pid": 1}))
    assert runs.writer_of(run_dir)["host"] == "elsewhere.example", "never guessed dead, as RunLock refuses it"


# --- 2. no flock ----------------------------------------------------------------------------------------------------

# Without flock, the second process pauses nowhere: it runs whole while the first is between making .lock and
# writing its details into it.
SECOND_WRITER = """
import errno, sys
from lorafit import locks
def no_locks(fd, op):
    raise OSError(errno.ENOLCK, "No locks available")
locks.fcntl.flock = no_locks
try:
    locks.RunLock(sys.argv[1]).acquire()
    print("acquired")
except locks.RunFolderBusy as exc:
    print("refused:", exc)
"""


@pytest.fixture
def no_flock(monkeypatch):
    """A file system without locks (NFS without lockd): flock raises ENOLCK."""
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)


def test_without_flock_two_processes_never_both_hold_the_lock(tmp_path, no_flock, monkeypatch):
    """Before: both opened .lock with O_CREAT, read no details, and both went on (silently no lock)."""
    run_dir = tmp_path / "run"
    real, seen = locks._write_fd, []

    def second_runs_now(fd, info):
        seen.append(subprocess.run([sys.executable, "-c", SECOND_WRITER, str(run_dir)], capture_output=True,
                                   text=True, timeout=120))
        real(fd, info)

    monkeypatch.setattr(locks, "_write_fd", second_runs_now)
    first = locks.RunLock(run_dir).acquire()
    monkeypatch.setattr(locks, "_write_fd", real)
    try:
        assert seen[0].stdout.startswith("refused:"), seen[0].stdout + seen[0].stderr
        with pytest.raises(locks.RunFolderBusy, match=f"in use by process {os.getpid()}"):
            locks.RunLock(run_dir).acquire()  # this process again: refused too
        assert runs.writer_of(run_dir)["pid"] == os.getpid(), "readers see the writer by its lock file"
    finally:
        first.release()
    assert not (run_dir / locks.LOCK).exists()
    again = subprocess.run([sys.executable, "-c", SECOND_WRITER, str(run_dir)], capture_output=True, text=True,
                           timeout=120)
    assert again.stdout.strip() == "acquired", again.stdout + again.stderr


def test_without_flock_a_dead_processes_lock_is_taken_over_and_another_hosts_refused(tmp_path, no_flock, caplog):
    import logging

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / locks.LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid}))
    assert runs.writer_of(run_dir) is None
    with caplog.at_level(logging.WARNING, logger="lorafit"), locks.RunLock(run_dir):
        assert locks.read_lock(run_dir)["pid"] == os.getpid()
    assert "taking the lock over" in caplog.text
    assert _files(run_dir) == [], "the stale file is gone, none left aside"

    (run_dir / locks.LOCK).write_text(json.dumps({"host": "elsewhere.example", "pid": 1}))
    with pytest.raises(locks.RunFolderBusy, match="locked by process 1 on elsewhere.example.*delete"):
        locks.RunLock(run_dir).acquire()
    assert locks.read_lock(run_dir)["host"] == "elsewhere.example"


def test_a_flock_error_other_than_no_locks_is_one_line(tmp_path, monkeypatch):
    """Before: an OSError traceback (EIO from a failing network file system)."""
    import fcntl

    def broken(fd, operation):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fcntl, "flock", broken)
    with pytest.raises(UserError, match="cannot lock .*Input/output error; keep run folders on a local disk"):
        locks.RunLock(tmp_path / "out" / "run").acquire()
    assert not (tmp_path / "out").exists()


# --- 3. writes ------------------------------------------------------------------------------------------------------

def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names an fd's file through /proc")
def test_a_replaced_folder_is_on_disk_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    """peft's save_pretrained does not fsync: a power cut after the swap (and after result.json, fsynced) could
    leave a completed run whose new adapter files are empty."""
    events, real_fsync, real_replace = [], os.fsync, os.replace
    monkeypatch.setattr(runs.os, "fsync", lambda fd: (events.append(("fsync", _fd_path(fd))), real_fsync(fd)))
    monkeypatch.setattr(runs.os, "replace", lambda a, b: (events.append(("rename", str(a))), real_replace(a, b)))

    def build(folder: Path) -> None:
        (folder / "weights.bin").write_bytes(b"x" * 100)
        (folder / "sub").mkdir()
        (folder / "sub" / "config.json").write_text("{}")

    runs.atomic_replace_dir(build, tmp_path / "adapter")
    # the rename of the built folder (not of the folder the target's lock made, renamed aside before it)
    renamed = next(i for i, (kind, path) in enumerate(events) if kind == "rename" and Path(path).name != "adapter")
    flushed = {Path(path).relative_to(events[renamed][1]).as_posix() for kind, path in events[:renamed]
               if kind == "fsync" and path.startswith(events[renamed][1])}
    assert {"weights.bin", "sub/config.json", "sub", "."} <= flushed, events


@pytest.mark.parametrize("failure", ["fsync", "half a write"])
def test_append_jsonl_leaves_no_half_line_on_a_write_error(tmp_path, monkeypatch, failure):
    """Before: an OSError traceback, and the line (or half of it) left for the next row to glue onto."""
    path = tmp_path / "eval_curve.jsonl"
    runs.append_jsonl(path, {"step": 2, "accuracy": 0.5})
    before = path.read_bytes()
    full = OSError(errno.ENOSPC, "No space left on device")
    if failure == "fsync":
        def fail(fd):
            raise full
        monkeypatch.setattr(runs.os, "fsync", fail)
    else:
        real = os.write

        def fail(fd, data):
            real(fd, bytes(data[: len(data) // 2]))
            raise full
        monkeypatch.setattr(runs.os, "write", fail)
    with pytest.raises(UserError, match="No space left on device; free some space"):
        runs.append_jsonl(path, {"step": 4, "accuracy": 0.75})
    monkeypatch.undo()
    assert path.read_bytes() == before
    runs.append_jsonl(path, {"step": 4, "accuracy": 0.75})
    assert [row["step"] for row in runs.check_eval_curve(tmp_path, finished=True)] == [2, 4]
