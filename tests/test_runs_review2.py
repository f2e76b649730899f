"""Second review of runs.py (run folders): a hand-edited eval_curve.jsonl step, a bit flipped in a checkpoint's
torch archive, the adapter's (and an export's) weights private to their owner in a shared folder, unreadable
weights, a run folder behind a broken symbolic link, and an unreadable curve in an export's model card. Each test
failed before its fix (see its docstring)."""

from __future__ import annotations

import json
import stat
import struct
from pathlib import Path

import pytest

from conftest import one_line_error, signal_at_step, tiny_run_config
from lorafit import runs


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _edit_curve_step(run_dir: Path, line: int, step) -> None:
    """eval_curve.jsonl with one line's step edited by hand (to a string, null, ...)."""
    path = run_dir / runs.EVAL_CURVE
    rows = [json.loads(text) for text in path.read_text().splitlines()]
    rows[line]["step"] = step
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture
def resumable(tmp_path, tiny_roberta, small_agnews, capsys) -> tuple[Path, Path]:
    """(config, run folder) of a 4-step run evaluated every step and stopped by Ctrl-C in step 3: checkpoints, an
    eval curve of three lines, no adapter; `lorafit train CONFIG` resumes it."""
    from lorafit.config import load_config
    from lorafit.train import run_training

    config = tiny_run_config(tmp_path, small_agnews, model=tiny_roberta, eval_steps=1)
    result = run_training(load_config(str(config)), extra_callbacks=[signal_at_step(2)])
    assert result["status"] == "interrupted", result
    capsys.readouterr()  # the test's cli reads only its own output
    return config, tmp_path / "runs" / "tiny"


@pytest.mark.parametrize("step", ["2", None])
def test_report_lists_a_run_whose_curve_step_was_edited_as_damaged(cli, finished_copy, tmp_path, step):
    """A hand-edited eval_curve.jsonl line whose step is no number still parsed as a JSON object: `lorafit report`
    crashed on the whole runs folder with a TypeError traceback (max() over str and int steps)."""
    _edit_curve_step(finished_copy, 0, step)
    result = cli("report", tmp_path, "--out", tmp_path / "report")
    assert result.code == 0, result.err
    row = next(line for line in (tmp_path / "report" / "report.md").read_text().splitlines() if "| damaged |" in line)
    assert runs.EVAL_CURVE in row and "line 1" in row, row


def test_resuming_a_run_whose_curve_step_was_edited_is_one_line(cli, resumable):
    """Resuming trimmed the curve with `step <= resume step`: a TypeError traceback for a step edited to a string.
    The resume check now refuses that (not last) line, naming the file and the fix."""
    config, run_dir = resumable
    _edit_curve_step(run_dir, 0, "two")
    one_line_error(cli("train", config), str(run_dir), runs.EVAL_CURVE, "line 1", "--overwrite")


def _flip_compression_bit(archive: Path) -> None:
    """One bit flipped in the first central-directory entry's compression method: stored (0) reads as deflate (8)."""
    data = bytearray(archive.read_bytes())
    entry = data.find(b"PK\x01\x02")
    (method,) = struct.unpack_from("<H", data, entry + 10)
    assert method == 0, "torch.save stores its entries uncompressed"
    struct.pack_into("<H", data, entry + 10, method ^ 8)
    archive.unlink()
    archive.write_bytes(bytes(data))


def test_a_bit_flip_in_a_checkpoint_archive_is_skipped_not_a_traceback(cli, resumable, caplog):
    """torch_archive_problem caught BadZipFile and friends but not zlib.error: a checkpoint whose scheduler.pt had
    one bit flipped (its entry now claiming deflate) crashed the resume with `zlib.error: Error -3 while
    decompressing data`. It is now a damaged checkpoint: skipped with a warning, an earlier one resumed."""
    config, run_dir = resumable
    newest = max((run_dir / runs.CHECKPOINTS).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    _flip_compression_bit(newest / "scheduler.pt")
    assert runs.torch_archive_problem(newest / "scheduler.pt")
    result = cli("train", config)
    assert result.code == 0, result.err
    assert f"skipping {newest.name}" in caplog.text
    assert runs.read_json(run_dir / runs.RESULT)["status"] == "completed"


def test_a_runs_adapter_weights_are_as_readable_as_its_other_files(finished_tiny):
    """safetensors writes its files owner-only (0600) and atomic_replace_dir swapped the adapter folder in as it
    was: in a shared run folder (README: runs of other users) every other user's predict, evaluate and export died
    on adapter_model.safetensors (a PermissionError traceback) while config.yaml and labels.json were readable."""
    weights = finished_tiny / runs.ADAPTER / runs.ADAPTER_WEIGHTS
    assert _mode(weights) == _mode(finished_tiny / runs.CONFIG), oct(_mode(weights))


def test_an_exported_models_weights_are_as_readable_as_its_other_files(cli, finished_copy, tmp_path):
    """The same for `lorafit export`: model.safetensors came out owner-only beside a world-readable config.json."""
    out = tmp_path / "exported"
    result = cli("export", finished_copy, "--output", out)
    assert result.code == 0, result.err
    assert _mode(out / "model.safetensors") == _mode(out / "config.json"), oct(_mode(out / "model.safetensors"))


def test_atomic_replace_dir_keeps_a_files_execute_bit_and_adds_no_write_for_others(tmp_path):
    """What the swap makes readable keeps what the umask forbids forbidden (no group/other write) and keeps a
    build's executable file executable."""
    def build(folder: Path) -> None:
        (folder / "private.bin").write_bytes(b"x")
        (folder / "private.bin").chmod(0o600)
        (folder / "tool.sh").write_text("#!/bin/sh\n")
        (folder / "tool.sh").chmod(0o700)

    runs.atomic_replace_dir(build, tmp_path / "out")
    umask = runs._umask()
    assert _mode(tmp_path / "out" / "private.bin") == 0o666 & ~umask
    assert _mode(tmp_path / "out" / "tool.sh") == 0o777 & ~umask


def test_an_output_dir_behind_a_broken_symlink_is_one_line(cli, tiny_roberta, small_agnews, tmp_path):
    """runs/ a symbolic link to a disk that is not mounted: writable_dir_check walked past the broken link to its
    parent, found it writable, and the lock's mkdir crashed with a FileExistsError traceback. Nothing is made."""
    config = tiny_run_config(tmp_path, small_agnews, model=tiny_roberta)
    (tmp_path / "runs").symlink_to(tmp_path / "unmounted" / "runs")
    one_line_error(cli("train", config), str(tmp_path / "runs"), "broken symbolic link")
    assert not (tmp_path / "unmounted").exists()


def test_unreadable_adapter_weights_are_one_line(cli, finished_copy, small_agnews, tmp_path, monkeypatch):
    """Another user's run whose weights its owner keeps private: check_run_folder opened adapter_model.safetensors
    unguarded and predict died with a PermissionError traceback (every other file's read error was one line). The
    OS refusal is simulated: the tests run as root, whom no file mode stops."""
    import builtins
    import errno

    weights = finished_copy / runs.ADAPTER / runs.ADAPTER_WEIGHTS
    real_open = builtins.open

    def refusing_open(file, *args, **kwargs):
        if Path(file) == weights:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    result = cli("predict", finished_copy, "--input", small_agnews, "--output", tmp_path / "preds.csv")
    one_line_error(result, str(finished_copy), runs.ADAPTER_WEIGHTS, "Permission denied", "readable")
    assert not (tmp_path / "preds.csv").exists()


def test_an_export_of_a_run_whose_curve_cannot_be_read_writes_its_card_without_the_curve(cli, finished_copy, tmp_path):
    """export does not need the eval curve (only its model card shows it), yet an eval_curve.jsonl that could not be
    read (here a folder in its place) crashed the export with a raw IsADirectoryError after the model had loaded.
    Now the card leaves the curve out, as for a run that logged none."""
    curve = finished_copy / runs.EVAL_CURVE
    curve.unlink()
    curve.mkdir()
    out = tmp_path / "export"
    assert cli("export", finished_copy, "--output", out).code == 0
    card = (out / "README.md").read_text()
    assert "## Recipe" in card and "## Evaluation curve" not in card
