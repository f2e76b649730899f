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
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Optional

from lorafit.errors import UserError

CONFIG = "config.yaml"
MANIFEST = "manifest.json"
EVAL_CURVE = "eval_curve.jsonl"
RESULT = "result.json"
LABELS = "labels.json"
ADAPTER = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
CHECKPOINTS = "checkpoints"


# Write failures a user fixes by freeing space or choosing another place: one line, not a traceback.
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


@contextlib.contextmanager
def _disk_errors_explained(path: Path):
    try:
        yield
    except OSError as exc:
        if exc.errno not in _DISK_ERRNOS:
            raise
        raise UserError(f"cannot write {path}: {exc.strerror}; free some space or write somewhere else "
                        "(nothing was half-written)") from None


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
    """Write via a temporary file in the same folder and rename: readers see the old file or the new one."""
    path = Path(path)
    with _disk_errors_explained(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def atomic_replace_dir(build, target: str | Path) -> None:
    """Fill a fresh temporary folder with build(tmp_dir), then swap it in for target in one rename."""
    target = Path(target)
    with _disk_errors_explained(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            os.chmod(tmp, 0o777 & ~_umask())
            build(tmp)
            old = None
            if target.exists():
                old = target.with_name(f".{target.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(target, old)
            os.replace(tmp, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(target.parent)


def append_jsonl(path: str | Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_eval_curve(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / EVAL_CURVE
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill; the next evaluation rewrites nothing before it
    return rows


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


def require_run_dir(run_dir: str | Path, need_adapter: bool = True) -> Path:
    """A finished run folder, or a one-line error saying what is missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder not found: {run_dir} (train one with `lorafit train CONFIG.yaml`)")
    if not (run_dir / CONFIG).exists():
        raise UserError(f"{run_dir} is not a lorafit run folder (no {CONFIG})")
    if need_adapter and not (run_dir / ADAPTER / "adapter_config.json").exists():
        raise UserError(f"{run_dir} has no trained adapter ({ADAPTER}/adapter_config.json); finish or rerun training first")
    if need_adapter and not (run_dir / ADAPTER / ADAPTER_WEIGHTS).exists():
        # peft would fall back to adapter_model.bin, a pickle; lorafit loads weights from safetensors only.
        raise UserError(f"{run_dir / ADAPTER} has no {ADAPTER_WEIGHTS}; lorafit loads adapter weights from safetensors "
                        "only (a .bin file is a pickle); re-save the adapter with safe_serialization=True or retrain")
    return run_dir


def writable_dir_check(folder: Path, need_bytes: int = 50 * 2**20, option: str = "--output-dir") -> None:
    """Fail up front when the folder cannot be made or written, or the disk is nearly full.

    Probes by really creating a file: permission bits alone say nothing for root or on read-only mounts.
    """
    folder = Path(folder)
    probe_root = folder
    while not probe_root.exists() and probe_root != probe_root.parent:
        probe_root = probe_root.parent
    if not probe_root.is_dir():
        raise UserError(f"cannot write to {folder}: {probe_root} is a file, not a folder; choose a writable {option}")
    try:
        with tempfile.TemporaryFile(dir=probe_root, prefix=".lorafit-write-probe."):
            pass
    except OSError as exc:
        raise UserError(f"cannot write to {probe_root} ({exc.strerror or type(exc).__name__}); choose a writable {option}") from None
    free = shutil.disk_usage(probe_root).free
    if free < need_bytes:
        raise UserError(f"only {free // 2**20} MiB free under {probe_root}; free some space or choose another {option}")
