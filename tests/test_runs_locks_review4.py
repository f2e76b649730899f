"""Fourth review of src/lorafit/runs.py and src/lorafit/locks.py: each test failed before its fix (see its docstring).

1. An export swapped its folder in for --output without the output folder's own lock: a training run (or an
   evaluation) that took that folder while the export was built had its folder swapped away mid-run, and went on
   writing its checkpoints and results into the export.
2. A resumable run whose config.yaml was truncated or emptied (its manifest.json still names the config) was refused
   as "a different config" listing settings it never had, and --overwrite was offered, which deletes the checkpoints.
3. A `.lock` folder in a run folder (an older lorafit's `export --output RUN/.lock` made one) was a raw
   IsADirectoryError traceback from train and evaluate.

No timers are raced: the other process acts at a fixed step (from inside the export's build), and holds what it
took until the test closes its stdin.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import one_line_error, signal_at_step, tiny_run_config
from lorafit import locks, runs

pytest.importorskip("fcntl")


# Another process starts as `lorafit train` does on a folder: it takes the folder's lock, or is refused. It says
# which, and holds what it took until its stdin closes (then releases it, as a finished run does).
_TAKE_LOCK = """
import sys
from lorafit import locks
try:
    lock = locks.RunLock(sys.argv[1]).acquire()
except locks.RunFolderBusy as exc:
    print("refused:", exc, flush=True)
else:
    print("locked", flush=True)
    sys.stdin.read()
    lock.release()
"""


@contextlib.contextmanager
def _another_process_takes(run_dir: Path):
    """Yields what the other process said ("locked", or "refused: <its one line>")."""
    taker = subprocess.Popen([sys.executable, "-c", _TAKE_LOCK, str(run_dir)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        yield taker.stdout.readline().strip()
    finally:
        taker.stdin.close()
        taker.wait()


# --- 1. an export holds its output folder's lock while it swaps ----------------------------------------------------

def _target_with_a_run(target: Path) -> Path:
    target.mkdir(parents=True)
    (target / runs.CONFIG).write_text("name: other\n")
    return target


def test_a_swap_is_refused_while_a_training_run_that_started_during_the_build_holds_the_folder(tmp_path):
    """`lorafit train --name other` starts while an export to runs/other is built. Before: the export then swapped
    the live run's folder away and deleted it (no error), and that run went on writing into the export."""
    target = _target_with_a_run(tmp_path / "runs" / "other")
    said = []
    with contextlib.ExitStack() as others:
        def build(folder: Path) -> None:
            (folder / "model.safetensors").write_text("export")
            said.append(others.enter_context(_another_process_takes(target)))

        with pytest.raises(locks.RunFolderBusy) as refused:
            runs.atomic_replace_dir(build, target)
        assert said == ["locked"], "the training run took the folder"
        message = str(refused.value)
        assert "\n" not in message and str(target) in message and "is in use by process" in message
        assert (target / runs.CONFIG).read_text() == "name: other\n" and (target / locks.LOCK).is_file()
    assert sorted(os.listdir(target)) == [runs.CONFIG], "the run's folder as it was"
    assert sorted(os.listdir(tmp_path / "runs")) == ["other"], "no lock, temporary or aside folder left"


def test_an_export_over_a_folder_a_training_run_took_meanwhile_is_one_line(cli, finished_copy, tmp_path,
                                                                          monkeypatch):
    """The same through `lorafit export RUN --output runs/other --overwrite`: before, exit 0 and the live run's
    folder gone. Now the one line names the folder and its writer, and writes nothing."""
    from lorafit import export

    target = tmp_path / "runs" / "other"  # an earlier export's folder as the export starts: --overwrite replaces it
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    real_verify = export.verify_export
    with contextlib.ExitStack() as others:
        def verify_then_training_starts(model, tokenizer, folder):
            real_verify(model, tokenizer, folder)
            (target / runs.CONFIG).write_text("name: other\n")  # `lorafit train --name other` starts there
            assert others.enter_context(_another_process_takes(target)) == "locked"

        monkeypatch.setattr(export, "verify_export", verify_then_training_starts)
        one_line_error(cli("export", finished_copy, "--output", target, "--overwrite"), str(target),
                       "is in use by process", "wait for that run to finish")
        assert (target / runs.CONFIG).read_text() == "name: other\n"
    assert sorted(os.listdir(target)) == ["config.json", runs.CONFIG]
    assert sorted(os.listdir(tmp_path / "runs")) == ["other"], "no half-built export left"


def test_an_export_still_replaces_a_folder_nobody_holds(tmp_path):
    """The lock taken for the swap leaves nothing: not in the new folder, not beside it (a new target or an old one)."""
    runs.atomic_replace_dir(lambda folder: (folder / "a.txt").write_text("a"), tmp_path / "out")
    runs.atomic_replace_dir(lambda folder: (folder / "b.txt").write_text("b"), tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["out"] and sorted(os.listdir(tmp_path / "out")) == ["b.txt"]
    with locks.RunLock(tmp_path / "out"):  # and the folder's lock is free again
        pass


# --- 2. a damaged config.yaml beside a manifest that names the config ------------------------------------------------

@pytest.fixture
def resumable(tmp_path, tiny_roberta, small_agnews, capsys) -> tuple[Path, Path]:
    """(config, run folder) of a 4-step run stopped by Ctrl-C in step 3 (as tests/test_runs_review2.py's)."""
    from lorafit.config import load_config
    from lorafit.train import run_training

    config = tiny_run_config(tmp_path, small_agnews, model=tiny_roberta, eval_steps=1)
    result = run_training(load_config(str(config)), extra_callbacks=[signal_at_step(2)])
    assert result["status"] == "interrupted", result
    capsys.readouterr()
    return config, tmp_path / "runs" / "tiny"


@pytest.mark.parametrize("damage", ["cut", "emptied"])
def test_a_run_whose_config_yaml_was_damaged_resumes_where_its_manifest_names_the_config(cli, resumable, damage):
    """Before: 'holds a run with a different config (data.max_length: 256 there, 32 here; ...); use another --name,
    or --overwrite', though manifest.json's checksum says this is the config the run trained with."""
    config, run_dir = resumable
    saved = run_dir / runs.CONFIG
    text = saved.read_text()
    saved.write_text(text[:len(text) // 2] if damage == "cut" else "")
    result = cli("train", config)
    assert result.code == 0, result.err
    assert "resuming" in result.err and runs.read_json(run_dir / runs.RESULT)["status"] == "completed"
    assert saved.read_text() == text, "written again"


def test_a_config_yaml_edited_to_another_config_is_still_a_different_config(cli, resumable):
    """The manifest names the run's own config only: a config that is not that one is refused as before."""
    config, run_dir = resumable
    config.write_text(config.read_text().replace("learning_rate: 0.001", "learning_rate: 0.002"))
    one_line_error(cli("train", config), str(run_dir), "holds a run with a different config", "learning_rate")


# --- 3. a folder where the lock file goes ----------------------------------------------------------------------------

def test_a_lock_folder_in_the_run_is_one_line_not_a_traceback(cli, finished_copy, small_agnews, tmp_path):
    """Before: `lorafit evaluate` predicted every row, then failed on the lock with a raw IsADirectoryError."""
    data = tmp_path / "texts.csv"
    data.write_text("".join(small_agnews.read_text().splitlines(keepends=True)[:11]))
    (finished_copy / locks.LOCK).mkdir()
    (finished_copy / locks.LOCK / "model.safetensors").write_text("an export")
    one_line_error(cli("evaluate", finished_copy, "--data", data), str(finished_copy / locks.LOCK), "is a folder",
                   "move it away")
    assert not (finished_copy / "evaluation").exists(), "no scores written"
    assert (finished_copy / locks.LOCK / "model.safetensors").read_text() == "an export"
