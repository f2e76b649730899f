"""Second review of lorafit.train: a checkpoint resumed under another number of training processes (torchrun's
world size) trained on from the wrong rows at another batch per step and counted examples_seen and epochs wrongly;
--resume with --overwrite deleted the checkpoint that --resume asked for and trained from the start.

In-process runs of the tiny RoBERTa (4 steps, evaluation and checkpoint every 2); the interruption is a signal sent
by a callback at a fixed step, never raced against a timer."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import one_line_error, signal_at_step, tiny_run_config
from lorafit import runs
from lorafit.config import load_config
from lorafit.train import run_training


def _interrupted_at_step_2(root: Path, tiny_roberta: Path, small_agnews: Path, capsys) -> tuple[Path, Path]:
    """(config, checkpoint folder) of a run stopped by Ctrl-C during step 2: checkpoint-2 is its only checkpoint."""
    config = tiny_run_config(root, small_agnews, model=tiny_roberta)
    result = run_training(load_config(config), extra_callbacks=[signal_at_step(1)])
    assert (result["status"], result["global_step"]) == ("interrupted", 2), result
    capsys.readouterr()  # its output is not the next command's
    return config, root / "runs" / "tiny" / runs.CHECKPOINTS / "checkpoint-2"


def test_a_checkpoint_of_two_processes_is_not_resumed_by_one(tmp_path, tiny_roberta, small_agnews, cli, capsys):
    """A checkpoint saved by a 2-process torchrun job (one rng_state_<rank>.pth per process) resumed in one process
    without a word: the Trainer read step 2 as a place in epochs of the smaller batches, and result.json counted
    every step at one process's batch (a run of 3 steps under 2 processes and 5 more in one said 128 examples seen,
    not 104). Now refused in one line, naming both counts, with the checkpoint kept."""
    config, checkpoint = _interrupted_at_step_2(tmp_path, tiny_roberta, small_agnews, capsys)
    single = checkpoint / "rng_state.pth"  # what each rank of a 2-process job saves instead of this one file
    shutil.copy(single, checkpoint / "rng_state_1.pth")
    single.rename(checkpoint / "rng_state_0.pth")

    line = one_line_error(cli("train", config), "checkpoint-2", "2 training processes", "has 1", "--overwrite")
    assert "torchrun" in line
    assert (checkpoint / "rng_state_1.pth").is_file()
    assert runs.read_json(checkpoint.parent.parent / runs.RESULT)["status"] == "interrupted"


def test_a_checkpoint_of_one_process_still_resumes_in_one(tmp_path, tiny_roberta, small_agnews, cli, capsys):
    """The same run left as one process saved it resumes from step 2 and completes (the check counts processes,
    it does not refuse every resume)."""
    config, _ = _interrupted_at_step_2(tmp_path, tiny_roberta, small_agnews, capsys)
    assert cli("train", config).code == 0
    result = runs.read_json(tmp_path / "runs" / "tiny" / runs.RESULT)
    assert (result["status"], result["resumed_from_step"], result["global_step"]) == ("completed", 2, 4)


def test_resume_with_overwrite_is_refused_and_keeps_the_checkpoint(tmp_path, tiny_roberta, small_agnews, cli, capsys):
    """`lorafit train CONFIG --resume --overwrite` cleared the run folder, checkpoint included, and trained from
    step 0 with exit code 0: the resume the user asked for silently became a new run. Now one line, nothing
    changed."""
    config, checkpoint = _interrupted_at_step_2(tmp_path, tiny_roberta, small_agnews, capsys)
    one_line_error(cli("train", config, "--resume", "--overwrite"), "--resume", "--overwrite")
    assert checkpoint.is_dir()
    assert runs.read_json(checkpoint.parent.parent / runs.RESULT)["status"] == "interrupted"


def test_a_two_process_checkpoint_missing_a_ranks_rng_state_is_half_written(finished_tiny, tmp_path):
    """A 2-process job killed after rank 0 wrote rng_state_0.pth and before rank 1 wrote rng_state_1.pth left a
    checkpoint taken as complete and as saved by one process: resuming it "in one process", as the refusal said,
    was the very mix of process counts the refusal is there to prevent."""
    from lorafit.train import checkpoint_problem

    saved = sorted((finished_tiny / runs.CHECKPOINTS).glob("checkpoint-*"))[-1]
    checkpoint = shutil.copytree(saved, tmp_path / saved.name)
    assert checkpoint_problem(checkpoint) is None
    (checkpoint / "rng_state.pth").rename(checkpoint / "rng_state_0.pth")
    assert checkpoint_problem(checkpoint) == "half-written (rng_state_1.pth missing)"
    shutil.copy(checkpoint / "rng_state_0.pth", checkpoint / "rng_state_1.pth")
    assert checkpoint_problem(checkpoint) is None


def test_a_checkpoint_missing_only_the_last_ranks_rng_state_is_half_written(finished_tiny, tmp_path):
    """A 3-process job killed before rank 2 wrote rng_state_2.pth left ranks 0 and 1's: read alone, that is a
    complete 2-process checkpoint. The run's manifest says 3 processes trained it, so it is half-written, and the
    run resumes from the checkpoint before it."""
    from lorafit.train import last_complete_checkpoint

    run = shutil.copytree(finished_tiny, tmp_path / "run")
    manifest = runs.read_json(run / runs.MANIFEST)
    runs.atomic_write_json(run / runs.MANIFEST, {**manifest, "world_size": 3})
    checkpoints = sorted((run / runs.CHECKPOINTS).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert len(checkpoints) >= 2
    for checkpoint in checkpoints:
        state = checkpoint / "rng_state.pth"
        for rank in (0, 1, 2):
            shutil.copy(state, checkpoint / f"rng_state_{rank}.pth")
        state.unlink()
    assert last_complete_checkpoint(run / runs.CHECKPOINTS) == str(checkpoints[-1])
    (checkpoints[-1] / "rng_state_2.pth").unlink()
    assert last_complete_checkpoint(run / runs.CHECKPOINTS) == str(checkpoints[-2])
