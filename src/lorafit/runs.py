"""The run folder: its layout, atomic writes, and reading runs back (for evaluate, predict, sweep, report).

runs/<name>/
  config.yaml        resolved config (what ran, defaults filled in)
  manifest.json      versions, git commit, data fingerprint, parameter breakdown, device, wall time
  eval_curve.jsonl   one JSON line per evaluation
  result.json        best/final validation metrics, steps, examples/s, status
  labels.json        class names in id order
  adapter/           PEFT adapter (LoRA + head) and tokenizer: plain peft reloads it
  checkpoints/       Trainer checkpoints, for resuming
  sweep.json         (sweep trials only) sweep, trial number, point, settings, fitted r, worker
  .lock              while a process writes the folder: its host, pid and start time (not run content)

Readers check a folder before using it (check_run_folder) and refuse a damaged one with one line; writers hold
the folder's lock (RunLock, in lorafit.locks) so two processes never write one folder. Readers take no lock and
write nothing there: a loader confirms afterwards that no writer held the folder and no file it read was replaced
meanwhile (unchanged_while_loading), so it never uses a mix of two runs (train --overwrite) or of a run half-written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import lzma
import math
import numbers
import os
import re
import shutil
import stat
import subprocess
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from lorafit.errors import UserError
from lorafit.locks import (
    LOCK,
    held_here,
    ReplaceLock,
    RunLock,
    describe_holder,
    disk_errors_explained,
    lock_state,
)

CONFIG = "config.yaml"
MANIFEST = "manifest.json"
EVAL_CURVE = "eval_curve.jsonl"
RESULT = "result.json"
LABELS = "labels.json"
ADAPTER = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
CHECKPOINTS = "checkpoints"
SWEEP_INFO = "sweep.json"  # written by lorafit.sweep into each trial's run folder
# The files at a run folder's top level that only the folder's lock holder writes (training; a sweep worker making
# the folder ready or recording a failure): a hidden temporary copy of one of them was left by a killed writer.
# Other names are not: predict --output and report --out write anywhere, a run folder too, and take no lock.
LOCKED_FILES = (CONFIG, MANIFEST, EVAL_CURVE, RESULT, LABELS, SWEEP_INFO)

# Version of the run folder's layout, stamped into result.json and manifest.json. Bump it when a change would make
# an older lorafit misread a new folder; readers treat a missing stamp as 1 (folders made before the stamp).
FORMAT_VERSION = 1

log = logging.getLogger(__name__)
_TEMP_NAME = "[a-z0-9_]{8}"  # the random part of tempfile's names (mkstemp, mkdtemp)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (a power cut right after it keeps the new name)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename: readers see the old file or the new one."""
    path = Path(path)
    with disk_errors_explained(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; run files are as readable as any other
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)


def remove_interrupted_writes(folder: str | Path, names=None, name_pattern: str = ".+") -> None:
    """Remove the temporary files killed atomic_write_bytes calls of these file names left in folder
    (.{name}.XXXXXXXX.tmp, mkstemp's, a whole copy each). Only the folder's lock holder may call this, and only for
    names no one else writes (runs.LOCKED_FILES, the teacher caches): then no such file belongs to a live writer.
    names None: any name that fully matches the regular expression name_pattern (evaluate's files in evaluation/)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    pattern = _interrupted_write_name(names, name_pattern)
    for leftover in folder.iterdir():
        match = pattern.fullmatch(leftover.name)
        if match and leftover.is_file():
            log.warning("removing %s, left by an interrupted write of %s", leftover, folder / match.group(1))
            leftover.unlink(missing_ok=True)


def _interrupted_write_name(names=None, name_pattern: str = ".+") -> re.Pattern:
    """The name atomic_write_bytes gives its temporary copy of a file of these names (None: of a name matching
    name_pattern), the name in group 1."""
    name = name_pattern if names is None else "|".join(map(re.escape, names))
    return re.compile(rf"\.({name})\.{_TEMP_NAME}\.tmp")


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (/proc/self/status, "Umask:"): setting it to
    read it would, for that instant, give files that other threads create the wrong mode."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)  # elsewhere: the probe's instant errs towards private files, never world-writable ones
    os.umask(mask)
    return mask


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def atomic_replace_dir(build, target: str | Path, check=None, locked_by_caller: bool = False,
                       check_at_swap=None) -> None:
    """Fill a fresh temporary folder with build(tmp_dir), then swap it in for target: the old target is renamed
    aside, the new one renamed in, then the old one removed (or put back if the second rename fails).

    All of it runs under the target's lock (ReplaceLock): a second writer of the same target is refused in one line
    instead of racing the first one's renames (the aside name is fixed), and the holder knows that any other hidden
    folder of this target was left by a killed writer, and removes it. The swap holds the target's own RunLock too
    (_folder_lock), so a run folder some process writes is never swapped away. check(): called under the lock before the
    build (e.g. an export's "refuse an existing output without --overwrite", which an earlier writer may have changed).
    check_at_swap(): called under target's own lock just before the swap (an export's "no run folder", since a run may
    have trained into the target during the build and released its lock).
    locked_by_caller: the caller's own lock already makes it target's only writer (a training run's adapter, under the
    run folder's lock): no second lock, which could only add a way to fail (a stale one from a killed save, on a
    disk without flock, refused after hours of training) and a folder beside the adapter."""
    target = Path(target)
    lock = contextlib.nullcontext() if locked_by_caller else ReplaceLock(target)
    with lock, disk_errors_explained(target):
        _remove_leftovers(target)  # first: a target a killed writer set aside is back before check() looks for it
        if check is not None:
            check()
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))  # _remove_leftovers matches this name
        old, moved = target.with_name(f".{target.name}.old"), False
        try:
            os.chmod(tmp, 0o777 & ~_umask())
            build(tmp)
            share_tree(tmp)
            _fsync_tree(tmp)
            with _folder_lock(target, locked_by_caller):
                if check_at_swap is not None:
                    check_at_swap()
                if target.exists() or target.is_symlink():
                    os.replace(target, old)
                    moved = True
                os.replace(tmp, target)
                if moved:
                    _remove_path(old)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if moved and not (target.exists() or target.is_symlink()):
                with contextlib.suppress(OSError):  # the swap failed halfway: put the old folder back, not hidden
                    os.replace(old, target)
            raise
        _fsync_dir(target.parent)


def _folder_lock(target: Path, locked_by_caller: bool):
    """The target folder's own lock (RunLock: target/.lock), held for the swap: a training run or an evaluation that
    took the folder while the build ran (an export's --output naming a run folder) was swapped away mid-run and went on
    writing into the new folder; now the writer that comes second is refused. Only for the swap, not the build: a
    folder made for the lock would stand, empty, beside a build that takes minutes (and stay, if it is killed). Not
    for a symbolic link: the swap replaces the link, not what it points to."""
    if locked_by_caller or target.is_symlink():
        return contextlib.nullcontext()
    return RunLock(target)


def _remove_leftovers(target: Path) -> None:
    """Remove the hidden folders a killed writer of target left (a whole model each). Only the lock holder calls
    this, and only the lock holder makes such folders, so none of them belongs to a live writer. A writer killed
    between its two renames left the old target aside and none in place: that is put back, not removed, so a
    failing rewrite still leaves the last good copy."""
    # mkdtemp's folder (its random part has no dot, so no other target's names match; nor digits alone: a user's
    # dated backup .NAME.20240101 was removed as a leftover; mkdtemp picks such a name once in ~35,000, whose leftover
    # then stays) and the old target set aside
    pattern = re.compile(rf"\.{re.escape(target.name)}\.((?![0-9]{{8}}$){_TEMP_NAME}|old)")
    old = f".{target.name}.old"
    aside = target.with_name(old)
    if (aside.exists() or aside.is_symlink()) and not (target.exists() or target.is_symlink()):
        log.warning("putting back %s, set aside by an interrupted write", target)
        os.replace(aside, target)
    for path in target.parent.iterdir():
        if pattern.fullmatch(path.name) and (path.is_dir() or path.name == old):  # mkdtemp makes folders
            log.warning("removing %s, left by an interrupted write of %s", path, target)
            _remove_path(path)


def share_tree(folder: Path) -> None:
    """Give what build wrote the modes the umask gives new files and folders: safetensors writes its files owner-only
    (0600), so a shared run folder's adapter (or an export) was unreadable to every other user who could read the
    rest of it. Execute bits stay only where the build set one."""
    umask = _umask()
    for here, folders, files in os.walk(folder):
        for name in folders + files:
            path = os.path.join(here, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                continue  # chmod would change what the link points to
            executable = stat.S_ISDIR(mode) or mode & 0o111
            os.chmod(path, (0o777 if executable else 0o666) & ~umask)


def _fsync_tree(folder: Path) -> None:
    """Flush every file and folder under folder before it is renamed into place: writers such as peft's
    save_pretrained do not fsync, and a power cut after the rename (and after result.json, which is fsynced)
    could leave a completed run whose new adapter files are empty."""
    for here, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(here, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(here))


def _remove_path(path: Path) -> None:
    """Remove a folder, file or symlink (not what a symlink points to), ignoring errors as rmtree does."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line. A failed write (a full disk, an fsync error) cuts the file back to where it was, and
    is one line: a half line left behind would glue itself to the next row appended."""
    path = Path(path)
    data = (json.dumps(record, default=str) + "\n").encode("utf-8")
    with disk_errors_explained(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)


def read_json(path: str | Path) -> Any:
    # utf-8-sig: a file saved again by an editor that adds a byte-order mark (Notepad) is still the same JSON
    return json.loads(Path(path).read_text(encoding="utf-8-sig"))


def is_number(value: Any) -> bool:
    """An int or float from a run's files (not true / false, which JSON and YAML also give)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def finite_number(value: Any) -> Optional[float]:
    """A finite number (not true / false) from a run's files, else None: a hand-edited or damaged field ("0.9", NaN)
    shows as "–"."""
    if not is_number(value) or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return value


def diverged_loss(loss: Any) -> bool:
    """A validation loss that says the weights diverged: a NaN or infinite number (None or anything else: no)."""
    return isinstance(loss, numbers.Real) and not math.isfinite(loss)


def best_and_final(curve: list[dict]) -> tuple[dict, dict]:
    """The best evaluation (highest accuracy, the earliest of equals) and the last one, of the curve's rows with an
    accuracy; {} where there is none. An evaluation of diverged weights is never the best: NaN logits all argmax to
    one class, whose accuracy outscored a finite step's (0.275 against 0.25 in tests/test_divergence.py)."""
    evals = [row for row in curve if "accuracy" in row]
    finite = [row for row in evals if not diverged_loss(row.get("loss"))]
    best = max(finite, key=lambda row: (row["accuracy"], -row["step"])) if finite else {}
    return best, max(evals, key=lambda row: row["step"]) if evals else {}


def read_eval_curve(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / EVAL_CURVE
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        row = _curve_row(line)  # None: a line cut by a kill; the next evaluation rewrites nothing before it
        if row is not None:
            rows.append(row)
    return rows


def _curve_row(line: str) -> Optional[dict]:
    """One eval_curve.jsonl line as its row, or None when it is none: not a JSON object, or a step that is no whole
    number (a hand edit), which readers would compare with the other steps (a TypeError, not a damaged file). So
    too a row without its step, or whose accuracy is no number: best_and_final compares them, and a resumed run
    trained to its end before it died there (KeyError 'step', TypeError) instead of being refused up front."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if not isinstance(row, dict):
        return None
    step = row.get("step")
    if "accuracy" in row and not is_number(row["accuracy"]):
        return None
    return row if isinstance(step, int) and not isinstance(step, bool) else None


def git_commit(start: Path) -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=start, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("lorafit", "torch", "transformers", "peft", "datasets", "accelerate", "tokenizers", "optuna"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return versions


# ---------------------------------------------------------------------------------------------------------------
# Checking a run folder before it is used (predict, evaluate, report, export, a sweep reusing a finished trial)

# What a command needs from a run folder: check_run_folder's `need`. The config is always checked.
INFERENCE = frozenset({"config", "labels", "adapter"})  # predict, evaluate, export, teachers
FINISHED = INFERENCE | {"result", "manifest", "curve"}  # a completed run shown in a report or reused by a sweep

RETRAIN = "restore it from a backup, or retrain the run (lorafit train CONFIG --overwrite)"
UPGRADE = "upgrade lorafit (pip install -U lorafit) to read it"


class RunFolderError(UserError):
    """A run folder that cannot be used: status 'damaged' (a file missing or corrupt) or 'newer' (a newer format)."""

    def __init__(self, run_dir: Path, file: str, problem: str, fix: str = RETRAIN, status: str = "damaged"):
        self.run_dir, self.file, self.problem, self.fix, self.status = Path(run_dir), file, problem, fix, status
        lead = f"run folder {run_dir} is damaged: " if status == "damaged" else f"run folder {run_dir}: "
        super().__init__(f"{lead}{self.reason}" + (f"; {fix}" if fix else ""))

    @property
    def reason(self) -> str:
        """The problem without the folder or the fix, for a report's table."""
        return " ".join(filter(None, [self.file, self.problem]))


@dataclass
class RunFolder:
    """What check_run_folder read and found sound (None where it was not asked for or not there)."""

    path: Path
    config: dict  # config.yaml as written (resolved, defaults filled in)
    labels: Optional[list] = None
    result: Optional[dict] = None
    manifest: Optional[dict] = None
    snapshot: tuple = ()  # the files a loader reads, taken before the check read anything (unchanged_while_loading)


def check_run_folder(run_dir: str | Path, need=INFERENCE) -> RunFolder:
    """The run folder, checked for what a command needs, or a one-line UserError naming the folder, the file, the
    problem and the fix. Nothing is written. `need`: names from {"config", "labels", "adapter", "result",
    "manifest", "curve"} (INFERENCE, FINISHED). A result.json or manifest.json from a newer lorafit is refused
    whatever is needed; other files the command does not need may be damaged without stopping it."""
    run_dir = Path(run_dir)
    try:
        if not run_dir.is_dir():
            raise UserError(f"run folder not found: {run_dir} (train one with `lorafit train CONFIG.yaml`)")
        before = snapshot(run_dir)
        try:
            folder = _check_run_folder(run_dir, need)
        except RunFolderError as exc:
            raise _busy_not_damaged(exc) from None
    except PermissionError as exc:
        # Looking a file up (exists, is_file) fails only where a folder on its path may not be searched: another
        # user's private run folder (0700) or adapter/, or a run inside their home. Was a raw PermissionError.
        raise _unsearchable(run_dir, exc) from None
    folder.snapshot = before
    return folder


def _unsearchable(run_dir: Path, exc: PermissionError) -> UserError:
    """The one line for a lookup refused under run_dir (its folder, or one of its subfolders, named) or elsewhere."""
    looked_up = Path(exc.filename) if isinstance(exc.filename, str) else run_dir
    fix = "ask its owner to make it readable to you (chmod a+rx)"
    if looked_up != run_dir and run_dir not in looked_up.parents:  # not the run's own path: name what was refused
        return UserError(f"cannot read {looked_up} ({exc.strerror or exc}); {fix}")
    inside = looked_up.parent != run_dir and run_dir in looked_up.parent.parents  # e.g. adapter/
    folder = f"{looked_up.parent.relative_to(run_dir).as_posix()}/" if inside else ""
    where = "" if inside else ": it, or a folder above it, is not open to you"
    return RunFolderError(run_dir, folder, f"cannot be read ({exc.strerror or exc}{where})", fix, status="unreadable")


UNREADABLE_FIX = "make it readable to you (chmod a+r, or ask its owner)"


def unreadable(run_dir: Path, name: str, exc: OSError) -> RunFolderError:
    """A file of the run this user may not read (another user's private file): not damage, and no backup or
    retraining fixes it (it was 'damaged: ... truncated or overwritten; restore it from a backup')."""
    return RunFolderError(run_dir, name, f"cannot be read ({exc.strerror or exc})", UNREADABLE_FIX,
                          status="unreadable")


def _busy_not_damaged(exc: RunFolderError) -> RunFolderError:
    """A file missing or cut while a writer holds the folder (train --overwrite clearing it, a resumed run writing
    it) is work in progress: say who writes it, not 'damaged, restore it from a backup'. Not where this process
    holds the lock (a sweep checking a trial's folder before reusing it): there the damage is real."""
    holder, live = writer_state(exc.run_dir) if exc.status == "damaged" and not held_here(exc.run_dir) else (None, True)
    if holder is None:
        return exc
    return RunFolderError(exc.run_dir, exc.file, exc.problem, f"{describe_holder(holder)} holds its lock and is "
                          f"writing it now; {_wait_for_writer(exc.run_dir, live)}", status="busy")


def _check_run_folder(run_dir: Path, need) -> RunFolder:
    manifest = read_run_json(run_dir, MANIFEST, required=False)  # its config checksum, if readable
    values, cfg = _check_config(run_dir, manifest)  # first: whether this is a run folder at all
    if "manifest" in need:
        manifest = read_run_json(run_dir, MANIFEST, required=True)
    result = read_run_json(run_dir, RESULT, required="result" in need)
    folder = RunFolder(run_dir, values, result=result, manifest=manifest)
    if "adapter" in need:
        _check_trained(run_dir)  # before labels.json: a run still training or stopped has neither, and is not damaged
    if "labels" in need:
        folder.labels = _check_labels(run_dir, cfg)
    if "adapter" in need:
        _check_adapter(run_dir, cfg)
    if "curve" in need:
        _check_curve_reaches(run_dir, check_eval_curve(run_dir, finished=True), result)
    return folder


def read_run_json(run_dir: Path, name: str, required: bool) -> Optional[dict]:
    """result.json / manifest.json as a dict; None when absent or (not required) unreadable. A newer format
    version is refused either way: what a newer lorafit wrote may mean something else."""
    path = Path(run_dir) / name
    if not path.exists():
        if required:
            raise RunFolderError(run_dir, name, "is missing")
        return None
    try:
        data = read_json(path)
    except PermissionError as exc:
        if required:
            raise unreadable(run_dir, name, exc) from None
        data = None
    except (OSError, ValueError):  # ValueError: bad JSON or not UTF-8
        data = None
    if not isinstance(data, dict):
        if required:
            raise RunFolderError(run_dir, name, "is not a valid JSON object (truncated or overwritten)")
        return None
    version = data.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        if required:
            raise RunFolderError(run_dir, name, f"has an invalid format_version {version!r}")
        return None
    if version > FORMAT_VERSION:
        raise RunFolderError(run_dir, name, f"was written by a newer lorafit (run folder format {version}; this "
                             f"lorafit reads format {FORMAT_VERSION} and older)", UPGRADE, status="newer")
    return data


def config_digest(text: str) -> str:
    """sha256 of config.yaml as written, kept in manifest.json: a cut or edited config.yaml can still parse."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_config(run_dir: Path, manifest: Optional[dict]):
    from lorafit.config import config_from_dict  # config imports nothing of runs; lazily all the same

    path = run_dir / CONFIG
    if not path.is_file():
        if any((run_dir / name).exists() for name in (MANIFEST, RESULT, LABELS, ADAPTER, EVAL_CURVE)):
            raise RunFolderError(run_dir, CONFIG, "is missing")
        busy = _lock_note(run_dir)
        if busy:  # a run starting: its lock comes before its config
            raise UserError(f"{run_dir} has no {CONFIG} yet{busy}; wait for that run to finish, or give a finished "
                            "run folder")
        raise UserError(f"{run_dir} is not a lorafit run folder (no {CONFIG}); give a folder made by `lorafit train`")
    try:
        text = path.read_text(encoding="utf-8")
    except PermissionError as exc:
        raise unreadable(run_dir, CONFIG, exc) from None
    except (OSError, ValueError):
        raise RunFolderError(run_dir, CONFIG, "is not readable UTF-8 text") from None
    expected = (manifest or {}).get("config_sha256")
    if expected and config_digest(text) != expected:
        raise RunFolderError(run_dir, CONFIG, "differs from the config the run was trained with (its checksum in "
                             f"{MANIFEST} does not match)", RETRAIN + "; to use a moved base model give --model")
    try:
        values = yaml_load(text)
    except ValueError as exc:
        raise RunFolderError(run_dir, CONFIG, f"is not valid YAML ({exc})") from None
    if not isinstance(values, dict) or not values:
        raise RunFolderError(run_dir, CONFIG, "is empty or holds no config mapping")
    try:
        return values, config_from_dict(values)
    except UserError as exc:
        raise RunFolderError(run_dir, CONFIG, f"holds an invalid config ({exc})") from None


def _saved_values(saved: Path, cfg) -> Any:
    """The run folder's config as read, with a relative local model path an older lorafit saved replaced by this
    config's absolute one when both name the same folder: the same model, only written another way."""
    from lorafit.config import same_local_folder

    values = yaml_load(saved.read_text(encoding="utf-8", errors="replace"))
    model = values.get("model") if isinstance(values, dict) else None
    if isinstance(model, dict) and model.get("name_or_path") != cfg.model.name_or_path and same_local_folder(
            model.get("name_or_path"), cfg.model.name_or_path, [Path.cwd(), cfg.run_dir.parent]):
        model["name_or_path"] = cfg.model.name_or_path
    return values


def saved_settings(saved: Path, cfg) -> Any:
    """The run folder's config as this lorafit reads it: a field an older lorafit did not write takes its default
    (what that run did). As written where this lorafit cannot read it; None where the file is not YAML."""
    from lorafit.config import config_from_dict

    try:
        values = _saved_values(saved, cfg)
    except (OSError, ValueError):
        return None
    try:
        return config_from_dict(values).to_dict()
    except UserError:  # unknown keys or invalid values here: compare what the file says
        return values


def without_location(values: Any) -> Any:
    """Settings less output_dir: the folder found is the run wherever it lies. A moved run folder (or one named
    `runs` once and `/abs/runs` next) was refused by train as 'a different config' with --overwrite offered, which
    deleted the checkpoint the user moved to keep; and a sweep worker whose shared folder is mounted elsewhere did not
    reuse a finished trial, which training then refused as 'already holds a finished run'."""
    return {k: v for k, v in values.items() if k != "output_dir"} if isinstance(values, dict) else values


def holds_config(saved: Path, cfg) -> bool:
    """Whether a run folder's config.yaml is this config: the same text, or the same settings once read as this
    lorafit reads them (saved_settings), wherever the folder lies (without_location); or a config.yaml cut or
    overwritten since manifest.json named this config's text as the run's. OSError where it cannot be read."""
    if saved.read_text(encoding="utf-8", errors="replace") == cfg.to_yaml() or _manifest_names(saved.parent, cfg):
        return True
    return without_location(saved_settings(saved, cfg)) == without_location(cfg.to_dict())


def _manifest_names(run_dir: Path, cfg) -> bool:
    """Whether the run's manifest.json records this config as the one it trained with (its checksum of config.yaml
    as written): a truncated or emptied config.yaml was 'a different config' (its missing settings read as defaults
    or None), and --overwrite was offered, which deleted the checkpoints that resume."""
    try:
        manifest = read_json(Path(run_dir) / MANIFEST)
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and names_config(manifest, cfg)


def names_config(manifest: dict, cfg) -> bool:
    """Whether manifest.json's checksum is of this config's config.yaml, as this lorafit writes it or as one before
    the note on an unused lora.alpha wrote it (the same settings)."""
    return manifest.get("config_sha256") in {config_digest(cfg.to_yaml()), config_digest(cfg.to_yaml(notes=False))}


def yaml_load(text: str) -> Any:
    """yaml.safe_load with YAML errors as ValueError."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ValueError(f"line {mark.line + 1}" if mark else type(exc).__name__) from None


def _check_labels(run_dir: Path, cfg) -> list[str]:
    path = run_dir / LABELS
    if not path.is_file():
        raise RunFolderError(run_dir, LABELS, "is missing")
    try:
        labels = read_json(path)
    except PermissionError as exc:
        raise unreadable(run_dir, LABELS, exc) from None
    except (OSError, ValueError):
        raise RunFolderError(run_dir, LABELS, "is not valid JSON (truncated or overwritten)") from None
    if not isinstance(labels, list) or not all(isinstance(n, (str, int)) for n in labels):
        raise RunFolderError(run_dir, LABELS, "is not a list of class names")
    if len(labels) != cfg.model.num_labels:
        raise RunFolderError(run_dir, LABELS, f"names {len(labels)} classes but {CONFIG} has model.num_labels "
                             f"{cfg.model.num_labels}")
    return [str(n) for n in labels]


def _lock_note(run_dir: Path) -> str:
    """Who trains the folder now, if another process does: not this one (a sweep worker checks a trial's folder
    while it holds that folder's lock, and would name itself)."""
    holder, live = (None, True) if held_here(run_dir) else writer_state(run_dir)
    if holder is None:
        return ""
    return f" ({describe_holder(holder)} holds its lock: training it now{stale_lock_hint(run_dir, live)})"


def _check_trained(run_dir: Path) -> None:
    """Training writes the adapter (then labels.json) only when it completes."""
    if not (run_dir / ADAPTER / "adapter_config.json").is_file():
        raise UserError(f"{run_dir} has no trained adapter ({ADAPTER}/adapter_config.json is missing)"
                        f"{_lock_note(run_dir)}; finish or rerun training first (lorafit train CONFIG; --overwrite "
                        "starts over)")


def _check_adapter(run_dir: Path, cfg) -> None:
    adapter = run_dir / ADAPTER  # its adapter_config.json is there: _check_trained ran first
    weights = adapter / ADAPTER_WEIGHTS
    if not weights.is_file():
        if (adapter / "adapter_model.bin").exists():
            # peft would fall back to adapter_model.bin, a pickle; lorafit loads weights from safetensors only.
            raise UserError(f"{adapter} has no {ADAPTER_WEIGHTS}; lorafit loads adapter weights from safetensors "
                            "only (a .bin file is a pickle); re-save the adapter with safe_serialization=True or retrain")
        raise RunFolderError(run_dir, f"{ADAPTER}/{ADAPTER_WEIGHTS}", "is missing")
    try:
        problem = safetensors_problem(weights)
    except OSError as exc:  # e.g. another user's private file: not damage, and no backup or retraining fixes it
        raise unreadable(run_dir, f"{ADAPTER}/{ADAPTER_WEIGHTS}", exc) from None
    if problem:
        raise RunFolderError(run_dir, f"{ADAPTER}/{ADAPTER_WEIGHTS}", problem)
    _check_tokenizer_files(run_dir, adapter)
    for path in sorted(adapter.glob("*.json")):  # adapter and tokenizer settings: all read when loading
        try:
            read_json(path)
        except PermissionError as exc:
            raise unreadable(run_dir, f"{ADAPTER}/{path.name}", exc) from None
        except (OSError, ValueError):
            raise RunFolderError(run_dir, f"{ADAPTER}/{path.name}", "is not valid JSON (truncated or overwritten)") from None
    _check_adapter_matches(run_dir, read_json(adapter / "adapter_config.json"), cfg)


# A tokenizer's vocabulary: the fast tokenizer's tokenizer.json, or a slow tokenizer's vocabulary files.
TOKENIZER_VOCABULARY = ("tokenizer.json", "vocab.json", "vocab.txt", "*.model")


def _check_tokenizer_files(run_dir: Path, adapter: Path) -> None:
    """A saved tokenizer (tokenizer_config.json) without its vocabulary loads without error as another tokenizer,
    and predicts nonsense: refuse it. (Without tokenizer_config.json the base model's tokenizer is used.)"""
    if not (adapter / "tokenizer_config.json").is_file():
        return
    if not any(any(adapter.glob(pattern)) for pattern in TOKENIZER_VOCABULARY):
        raise RunFolderError(run_dir, f"{ADAPTER}/tokenizer.json", "is missing (the saved tokenizer has no vocabulary)")


def _check_adapter_matches(run_dir: Path, saved: Any, cfg) -> None:
    """The adapter was trained by this run: a copied-in adapter of another run would load and predict nonsense."""
    name = f"{ADAPTER}/adapter_config.json"
    if not isinstance(saved, dict):
        raise RunFolderError(run_dir, name, "is not a JSON object")
    fix = "the adapter belongs to another run: copy whole run folders, or " + RETRAIN.split(", or ")[-1]
    r = int(cfg.lora.r)
    if saved.get("r") != r:
        raise RunFolderError(run_dir, name, f"has r={saved.get('r')} but {CONFIG} has lora.r={r}", fix)
    targets = saved.get("target_modules")
    if isinstance(targets, list) and not set(cfg.lora.target_modules) <= set(targets):
        raise RunFolderError(run_dir, name, f"adapts {','.join(targets)} but {CONFIG} has lora.target_modules "
                             f"{','.join(cfg.lora.target_modules)}", fix)
    alpha = saved.get("lora_alpha")
    if isinstance(alpha, (int, float)) and abs(float(alpha) - float(cfg.lora.alpha_for(r))) > 1e-6 * max(1.0, abs(alpha)):
        raise RunFolderError(run_dir, name, f"has lora_alpha {alpha} but {CONFIG} gives {cfg.lora.alpha_for(r)}", fix)
    base = saved.get("base_model_name_or_path")
    if base and base != cfg.model.name_or_path:
        raise RunFolderError(run_dir, name, f"was trained on {base} but {CONFIG} has model.name_or_path "
                             f"{cfg.model.name_or_path}", fix)


def check_eval_curve(run_dir: Path, finished: bool) -> list[dict]:
    """eval_curve.jsonl's rows. Only its last line may be cut (a kill mid-append), and only while the run is
    unfinished: a damaged earlier line would silently drop an evaluation from the run's best and final metrics."""
    path = Path(run_dir) / EVAL_CURVE
    if not path.exists():
        if finished:
            raise RunFolderError(run_dir, EVAL_CURVE, "is missing")
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except PermissionError as exc:
        raise unreadable(run_dir, EVAL_CURVE, exc) from None
    except (OSError, ValueError):
        raise RunFolderError(run_dir, EVAL_CURVE, "is not readable UTF-8 text") from None
    rows = []
    for number, line in enumerate(lines, 1):
        row = _curve_row(line)
        if row is not None:
            rows.append(row)
        elif finished or number < len(lines):
            raise RunFolderError(run_dir, EVAL_CURVE, f"line {number} is not a JSON object with a whole-number step "
                                 "and a numeric accuracy (truncated or overwritten)")
    if finished and not any("accuracy" in row for row in rows):
        raise RunFolderError(run_dir, EVAL_CURVE, "holds no evaluation")
    return rows


def _check_curve_reaches(run_dir: Path, rows: list[dict], result: Optional[dict]) -> None:
    """A curve cut at a line boundary still parses; the result's final evaluation step tells it is short."""
    final = (result or {}).get("final_step")
    last = max((row.get("step", 0) for row in rows if "accuracy" in row), default=None)
    if isinstance(final, int) and last != final:
        raise RunFolderError(run_dir, EVAL_CURVE, f"ends at step {last} but {RESULT} has a final evaluation at "
                             f"step {final} (truncated)")


_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_MAX_HEADER = 100 * 2**20  # safetensors' own limit


def safetensors_problem(path: Path) -> Optional[str]:
    """What is wrong with a safetensors file, or None: an 8-byte header length, a JSON header, and tensors whose
    sizes fit their dtype and shape and fill the rest of the file exactly (so a cut file is caught; there is no
    checksum, so changed tensor bytes are not)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"is too short for a safetensors file ({size} bytes; truncated)"
        length = int.from_bytes(head, "little")
        if length > min(_MAX_HEADER, size - 8):
            return "has no valid safetensors header (truncated or overwritten)"
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            header = None
    if not isinstance(header, dict):
        return "has no valid safetensors header (truncated or overwritten)"
    data_bytes = 0
    try:
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            count = 1
            for dim in info["shape"]:
                count *= int(dim)
            if end < begin or (info["dtype"] in _DTYPE_BYTES and end - begin != count * _DTYPE_BYTES[info["dtype"]]):
                return f"has a bad entry for tensor {name} in its header (overwritten)"
            data_bytes = max(data_bytes, int(end))
    except (KeyError, TypeError, ValueError):
        return "has no valid safetensors header (truncated or overwritten)"
    expected = 8 + length + data_bytes
    if expected != size:
        return f"is {'truncated' if size < expected else 'longer than its header says'}: {size} bytes, {expected} expected"
    return None


def torch_archive_problem(path: Path) -> Optional[str]:
    """What is wrong with a torch.save file (a zip archive), or None: the archive's CRC checks cover every byte,
    and nothing is unpickled."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    # zlib.error, NotImplementedError, LZMAError: a damaged header naming another compression method (one bit flip
    # turns stored into deflate) makes zipfile decompress raw bytes
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError, NotImplementedError, zlib.error,
            lzma.LZMAError):
        return "is not a readable torch archive (truncated or overwritten)"
    return f"is corrupt (checksum mismatch in {bad})" if bad else None


# ---------------------------------------------------------------------------------------------------------------
# Loading a run folder that a writer may change meanwhile. Readers take no lock (they may not write the folder,
# and must not hold up a training run): a loader checks afterwards that nothing changed while it read.

# What a loader reads, by identity. Every writer puts a new file (atomic_write_*) or a new adapter folder
# (atomic_replace_dir) in place of the old one, so a write shows as another inode, size or modification time.
_SNAPSHOT_FILES = (CONFIG, LABELS, ADAPTER, f"{ADAPTER}/adapter_config.json", f"{ADAPTER}/{ADAPTER_WEIGHTS}")


def snapshot(run_dir: str | Path) -> tuple:
    """The identity of the files a loader reads (None for one that is not there)."""
    identity = []
    for name in _SNAPSHOT_FILES:
        try:
            st = os.stat(Path(run_dir) / name)
        except OSError:
            identity.append(None)
            continue
        # The adapter folder's own times change when an evaluation adds its model card (README.md): not a new run
        identity.append((st.st_dev, st.st_ino) if name == ADAPTER else (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(identity)


class RunFolderChanged(UserError):
    """A writer held the run folder, or replaced files in it, while a command read it: what was read may mix two
    runs, or a run and its half-written successor."""


def writer_of(run_dir: str | Path) -> Optional[dict]:
    """The details of the process writing the run folder now ({} when it has not written them yet), or None when
    no process writes what a loader reads (an evaluation writing its scores does not). Writes nothing; holds a
    shared flock on .lock for a moment (RunLock waits that out)."""
    return writer_state(run_dir)[0]


def writer_state(run_dir: str | Path) -> tuple[Optional[dict], bool]:
    """(writer_of's answer, whether a held flock says that writer is live: lock_state)."""
    holder, live = lock_state(run_dir)
    return (None, live) if holder and holder.get("scores_only") is True else (holder, live)


def stale_lock_hint(run_dir: str | Path, live: bool) -> str:
    """A writer only the lock file names (another machine's run, which no flock here vouches for; no flock at all)
    may have been killed, leaving that file for good: readers said "wait for that run to finish" (and report said
    "running") forever, where `lorafit train` says which file to delete."""
    return "" if live else f", or, {stale_lock_fix(run_dir)}"


def stale_lock_fix(run_dir: str | Path) -> str:
    """What to do about a lock file whose writer no flock here vouches for (stale_lock_hint, report, sweep)."""
    return f"if it is no longer running, delete {Path(run_dir) / LOCK}"


def _wait_for_writer(run_dir: str | Path, live: bool) -> str:
    """What to do about the folder's writer."""
    return f"wait for that run to finish{stale_lock_hint(run_dir, live)}"


def confirm_unchanged(folder: RunFolder, locked: bool = False) -> None:
    """Refuse, in one line, what was read from the folder since check_run_folder began when a writer holds it now
    or replaced a file a loader reads. locked: this process holds the folder's lock (RunLock), so no other does."""
    holder, live = (None, True) if locked else writer_state(folder.path)
    if holder is not None:
        raise RunFolderChanged(f"{folder.path} is being written: {describe_holder(holder)} holds its lock; "
                               f"{_wait_for_writer(folder.path, live)}, then run this again (nothing was written)")
    if snapshot(folder.path) != folder.snapshot:
        raise RunFolderChanged(f"{folder.path} was rewritten while it was read (a run trained into it meanwhile); "
                               "run this again (nothing was written)")


@contextlib.contextmanager
def unchanged_while_loading(folder: RunFolder):
    """Load a checked run folder: refused before loading when a writer holds it, and after loading when a writer
    held it or replaced its files meanwhile; a loader that failed because files went away under it says so too."""
    confirm_unchanged(folder)  # before minutes of loading
    try:
        yield
    except Exception:
        confirm_unchanged(folder)
        raise
    confirm_unchanged(folder)


# ---------------------------------------------------------------------------------------------------------------
# A run folder's content, the lock file left out (the lock itself: lorafit.locks)


def run_content(run_dir: Path) -> list[Path]:
    """What a run folder holds, the lock file left out (it is no part of the run)."""
    return [p for p in Path(run_dir).iterdir() if p.name != LOCK] if Path(run_dir).is_dir() else []


# What marks a folder as a lorafit run's: the first file a run or a sweep trial writes there, or what comes later
RUN_MARKERS = (CONFIG, SWEEP_INFO, MANIFEST, RESULT, ADAPTER, CHECKPOINTS)


def check_is_run_folder(run_dir: Path, harm: str = "--overwrite would delete it") -> None:
    """--overwrite empties the folder: refuse one that holds something, none of it a run's (a mistyped --name or
    --output-dir naming a user's own folder), rather than delete its files. Killed writes' copies of a run's files
    (.config.yaml.XXXXXXXX.tmp) count as a run's."""
    content = [p for p in run_content(run_dir) if not p.name.startswith(f"{LOCK}.")]  # a killed unlock's copy
    leftover = _interrupted_write_name(RUN_MARKERS)
    foreign = _foreign_config_key(run_dir / CONFIG)
    markers = [name for name in RUN_MARKERS if not (foreign and name == CONFIG)]  # another tool's config.yaml
    if not content or any(p.name in markers or leftover.fullmatch(p.name) for p in content):
        return
    names = ", ".join(sorted(p.name for p in content)[:3]) + (", ..." if len(content) > 3 else "")
    why = f"; its {CONFIG} is another tool's (no lorafit config has '{foreign}')" if foreign else ""
    raise UserError(f"{run_dir} holds no lorafit run ({names}{why}), and {harm}; "
                    "choose another --name or --output-dir")


def _foreign_config_key(path: Path) -> Optional[str]:
    """A top-level key of path no lorafit config has, in a file without the `lora` section every run's config.yaml
    has (another tool's config.yaml: Hydra's `defaults`, say), else None: a file named config.yaml made a user's own
    project folder a run's, which --overwrite emptied. A run's config.yaml with a key added by hand, and one that
    cannot be read or parsed (a damaged run's), are a run's."""
    from lorafit.config import RunConfig

    try:
        values = yaml_load(path.read_text(encoding="utf-8", errors="replace")) if path.is_file() else None
    except (OSError, ValueError):
        return None
    if not isinstance(values, dict) or "lora" in values:
        return None
    known = {f.name for f in dataclasses.fields(RunConfig)}
    return next((str(k) for k in values if k not in known), None)


def clear_run_dir(run_dir: Path) -> None:
    """--overwrite: remove the run's files, keeping the lock file this process holds (train checks first that the
    folder is a run's: check_is_run_folder; a sweep clears only its own trial folders). The marks of a run go last,
    config.yaml the very last: a clear killed halfway leaves a folder check_is_run_folder still takes for a run's."""
    for path in sorted(run_content(run_dir), key=lambda p: (p.name in RUN_MARKERS, p.name == CONFIG)):
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except PermissionError as exc:  # a file of another user's in a shared folder: it was a raw traceback
            where = exc.filename or path
            raise UserError(f"--overwrite cannot remove {where} from the run folder {run_dir} ({exc.strerror or exc}); "
                            f"remove it yourself or ask its owner (ls -l shows who), or choose another --name") from None


NAME_MAX_BYTES = 255  # a file name's limit on ext4, XFS, btrfs, tmpfs, APFS and NTFS
TEMP_FILE_EXTRA = len("..XXXXXXXX.tmp")  # what atomic_write_bytes's temporary copy adds: .NAME.XXXXXXXX.tmp
TEMP_FOLDER_EXTRA = len("..XXXXXXXX")  # atomic_replace_dir's: .NAME.XXXXXXXX (its .NAME.lock, .NAME.old: less)


def fitting_name(name: str, max_bytes: int, digest_chars: int) -> str:
    """`name`, or as much of its start as fits `max_bytes` (cut between characters) and a hash of it all, so that
    two long names never become one: names lorafit makes from a user's data file or grid values."""
    raw = os.fsencode(name)
    if len(raw) <= max_bytes:
        return name
    head = raw[:max_bytes - 1 - digest_chars].decode("utf-8", "ignore")  # a cut character is dropped
    return f"{head}-{hashlib.sha256(raw).hexdigest()[:digest_chars]}"


def check_name_fits(path: Path, option: str, extra: int = TEMP_FILE_EXTRA) -> None:
    """Refuse an output name too long for its temporary copy's name (`extra` bytes longer), before the work: a
    242-byte --output was a raw 'File name too long' traceback once every row was predicted."""
    size, limit = len(os.fsencode(path.name)), NAME_MAX_BYTES - extra
    if size > limit:
        raise UserError(f"{option} names a file or folder of {size} bytes; lorafit writes it through a temporary "
                        f"copy whose name is {extra} bytes longer, past the {NAME_MAX_BYTES}-byte limit of file "
                        f"names: give a name of at most {limit} bytes")


def writable_dir_check(folder: Path, need_bytes: int = 50 * 2**20, option: str = "--output-dir") -> None:
    """Fail up front when the folder cannot be made or written, or the disk is nearly full.

    Probes by really creating a file: permission bits alone say nothing for root or on read-only mounts.
    """
    folder = Path(folder)
    probe_root = folder
    try:
        while not probe_root.exists() and probe_root != probe_root.parent:
            if probe_root.is_symlink():  # mkdir cannot make a folder there (FileExistsError), nor through it
                raise UserError(f"cannot write to {folder}: {probe_root} is a broken symbolic link (to "
                                f"{os.readlink(probe_root)}); mount or create its target, or choose another {option}")
            probe_root = probe_root.parent
        is_dir = probe_root.is_dir()
    except PermissionError as exc:  # a folder above it that may not be searched (another user's home): no traceback
        raise UserError(f"cannot write to {folder}: a folder above {probe_root} is not open to you "
                        f"({exc.strerror}); choose a writable {option}") from None
    if not is_dir:
        raise UserError(f"cannot write to {folder}: {probe_root} is a file, not a folder; choose a writable {option}")
    try:
        with tempfile.TemporaryFile(dir=probe_root, prefix=".lorafit-write-probe."):
            pass
    except OSError as exc:
        raise UserError(f"cannot write to {probe_root} ({exc.strerror or type(exc).__name__}); choose a writable {option}") from None
    free = shutil.disk_usage(probe_root).free
    if free < need_bytes:
        raise UserError(f"only {free // 2**20} MiB free under {probe_root}; free some space or choose another {option}")
