"""One writer per run folder, and resuming past a damaged checkpoint.

Real `lorafit train` processes on the tiny RoBERTa and the keyword task of tests/test_resume.py (whose kill-at-a-step
helper and outcome reader are reused). No timers are raced: the first run pauses itself after a checkpoint and
waits for a file the test writes; the killed run SIGKILLs itself at a fixed step.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import run_subprocess, write_config
from test_resume import keyword_csv, run_outcome, train_until_killed  # noqa: F401 (keyword_csv is a fixture)

PAUSE_AT_STEP = 6  # after the checkpoint at step 4

# The first writer pauses itself after PAUSE_AT_STEP (lock held, a checkpoint written) until the test lets it go.
PAUSING_TRAIN = """
import sys, time
from pathlib import Path
from transformers import TrainerCallback
from lorafit.config import load_config
from lorafit.train import run_training

class PauseAfterStep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == int(sys.argv[2]):
            Path(sys.argv[3]).touch()
            deadline = time.time() + 900
            while not Path(sys.argv[4]).exists() and time.time() < deadline:
                time.sleep(0.05)

result = run_training(load_config(sys.argv[1]), extra_callbacks=[PauseAfterStep()])
sys.exit(0 if result["status"] == "completed" else 1)
"""


def lock_config(folder: Path, model: Path, data: Path) -> Path:
    """16 steps, an evaluation and a checkpoint every 4, 8 steps per epoch: small, and crossing an epoch."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_config(
        folder / "lock.yaml",
        name="lock", output_dir=str(folder / "runs"),
        model={"name_or_path": str(model)},
        lora={"r": 4, "alpha": 8, "target_modules": ["query", "value"], "dropout": 0.1},
        data={"train_file": str(data), "max_train_samples": 64, "max_length": 32},
        train={"max_steps": 16, "batch_size": 8, "eval_steps": 4, "logging_steps": 2, "learning_rate": 5e-2,
               "warmup_steps": 2, "seed": 8, "group_by_length": True, "precision": "fp32"},
    )


def assert_same_run(got: dict, unbroken: dict) -> None:
    """Same metrics, same curve (losses bit for bit on CPU) and the same adapter weights as the unbroken run."""
    assert got["result"] == unbroken["result"]
    assert got["curve"] == unbroken["curve"]
    assert [row[0] for row in got["curve"]] == [4, 8, 12, 16]
    assert got["adapter"].keys() == unbroken["adapter"].keys()
    for name, tensor in unbroken["adapter"].items():
        assert torch.equal(got["adapter"][name], tensor), f"adapter tensor {name} differs"


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory, tiny_roberta, keyword_csv) -> dict:  # noqa: F811
    folder = tmp_path_factory.mktemp("unbroken")
    done = run_subprocess("train", lock_config(folder, tiny_roberta, keyword_csv))
    assert done.returncode == 0, done.stderr
    outcome = run_outcome(folder / "runs" / "lock")
    outcome["checkpoints"] = folder / "runs" / "lock" / "checkpoints"
    return outcome


def wait_for(path: Path, process: subprocess.Popen, log: Path, timeout: float = 900) -> None:
    import time

    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, f"the first run ended early ({process.returncode}):\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, "the first run never reached its pause"
        time.sleep(0.1)


def test_a_second_writer_is_refused_and_the_first_run_ends_unbroken(tmp_path, tiny_roberta, keyword_csv, unbroken,  # noqa: F811
                                                                    cli):
    config = lock_config(tmp_path, tiny_roberta, keyword_csv)
    run_dir = tmp_path / "runs" / "lock"
    paused, go, log = tmp_path / "paused", tmp_path / "go", tmp_path / "first.log"
    with open(log, "w") as log_file:
        first = subprocess.Popen([sys.executable, "-c", PAUSING_TRAIN, str(config), str(PAUSE_AT_STEP), str(paused), str(go)],
                                 stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        wait_for(paused, first, log)
        holder = json.loads((run_dir / ".lock").read_text())
        assert (holder["pid"], holder["host"]) == (first.pid, socket.gethostname())
        names = f"process {first.pid} on {socket.gethostname()}"

        second = run_subprocess("train", config)  # a real second `lorafit train`, same config, same folder
        assert second.returncode == 2, second.stderr
        assert "Traceback" not in second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and names in lines[0] and "in use" in lines[0], second.stderr

        # --overwrite would delete the folder under the first run: refused the same way, nothing deleted.
        before = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*"))
        overwrite = cli("train", config, "--overwrite")
        assert overwrite.code == 2 and names in overwrite.err, overwrite.err
        assert sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*")) == before
        print(f"\nsecond writer refused: {lines[0]}")
    finally:
        go.touch()
        try:
            first.wait(timeout=900)
        finally:
            if first.poll() is None:
                first.kill()
    assert first.returncode == 0, log.read_text()[-3000:]
    assert not (run_dir / ".lock").exists(), "the lock file is removed when the run ends"
    assert_same_run(run_outcome(run_dir), unbroken)


def test_a_killed_runs_lock_is_taken_over_and_a_damaged_checkpoint_skipped(tmp_path, tiny_roberta, keyword_csv,  # noqa: F811
                                                                          unbroken):
    config = lock_config(tmp_path, tiny_roberta, keyword_csv)
    run_dir = tmp_path / "runs" / "lock"
    train_until_killed(config, run_dir, after_step=10)  # kill -9 with checkpoints 4 and 8 saved, the lock held
    dead = json.loads((run_dir / ".lock").read_text())
    assert dead["pid"] != os.getpid() and dead["host"] == socket.gethostname()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint-4", "checkpoint-8"]
    weights = run_dir / "checkpoints" / "checkpoint-8" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])  # the newest checkpoint's weights cut short

    rerun = run_subprocess("train", config)
    assert rerun.returncode == 0, rerun.stderr
    assert f"process {dead['pid']} on {dead['host']}" in rerun.stderr and "taking the lock over" in rerun.stderr
    assert "skipping checkpoint-8: adapter_model.safetensors is truncated" in rerun.stderr, rerun.stderr
    assert "from step 4" in rerun.stderr, rerun.stderr
    assert not (run_dir / ".lock").exists()
    assert_same_run(run_outcome(run_dir), unbroken)


@pytest.mark.parametrize("name, damage", [
    ("adapter_model.safetensors", "cut"), ("adapter_model.safetensors", "garbage"),
    ("optimizer.pt", "cut"), ("optimizer.pt", "garbage"), ("scheduler.pt", "garbage"), ("rng_state.pth", "cut"),
    ("trainer_state.json", "cut"), ("adapter_config.json", "garbage"), ("optimizer.pt", "deleted"),
])
def test_a_damaged_checkpoint_is_skipped_for_the_one_before(tmp_path, unbroken, name, damage, caplog):
    """Cheap and sure checks, nothing unpickled: each kind of damage is seen, and resuming falls back one step."""
    import shutil

    from lorafit.train import checkpoint_problem, last_complete_checkpoint

    checkpoints = shutil.copytree(unbroken["checkpoints"], tmp_path / "checkpoints")
    newest, previous = sorted(checkpoints.iterdir(), key=lambda p: int(p.name.split("-")[1]))[-2:][::-1]
    assert checkpoint_problem(newest) is None and checkpoint_problem(previous) is None
    target = newest / name
    data = target.read_bytes()
    if damage == "cut":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        target.write_bytes(os.urandom(len(data)))
    else:
        target.unlink()
    assert name in checkpoint_problem(newest)
    with caplog.at_level(logging.WARNING, logger="lorafit"):
        assert last_complete_checkpoint(checkpoints) == str(previous)
    assert f"skipping {newest.name}" in caplog.text


def test_a_multi_process_checkpoint_with_per_rank_rng_states_is_resumable(tmp_path, unbroken):
    """Under torchrun every rank saves rng_state_<rank>.pth instead of rng_state.pth; each one is checked."""
    import shutil

    from lorafit.train import checkpoint_problem

    newest = sorted(shutil.copytree(unbroken["checkpoints"], tmp_path / "checkpoints").iterdir(),
                    key=lambda p: int(p.name.split("-")[1]))[-1]
    state = (newest / "rng_state.pth").read_bytes()
    (newest / "rng_state.pth").unlink()
    assert "rng_state.pth missing" in checkpoint_problem(newest)
    for rank in (0, 1):
        (newest / f"rng_state_{rank}.pth").write_bytes(state)
    assert checkpoint_problem(newest) is None
    (newest / "rng_state_1.pth").write_bytes(state[: len(state) // 2])
    assert "rng_state_1.pth" in checkpoint_problem(newest)


def test_lock_refuses_a_second_holder_and_cleans_up(tmp_path):
    from lorafit import locks, runs
    from lorafit.errors import UserError

    run_dir = tmp_path / "out" / "runs" / "x"
    with locks.RunLock(run_dir):
        info = locks.read_lock(run_dir)
        assert (info["pid"], info["host"]) == (os.getpid(), socket.gethostname())
        with pytest.raises(UserError, match=f"in use by process {os.getpid()} on {socket.gethostname()}"):
            locks.RunLock(run_dir).acquire()  # another open file: flock refuses it even in the same process
        assert runs.run_content(run_dir) == []
    assert not (tmp_path / "out").exists(), "a lock on an empty new folder leaves nothing behind"


def test_lock_of_a_dead_process_is_taken_over_and_of_another_host_refused(tmp_path, caplog):
    from lorafit import locks
    from lorafit.errors import UserError

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / locks.LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid, "started": "then"}))
    with caplog.at_level(logging.WARNING, logger="lorafit"), locks.RunLock(run_dir):
        assert locks.read_lock(run_dir)["pid"] == os.getpid()
    assert f"process {gone.pid}" in caplog.text and "taking the lock over" in caplog.text

    (run_dir / locks.LOCK).write_text(json.dumps({"host": "elsewhere.example", "pid": 1, "started": "then"}))
    with pytest.raises(UserError, match="locked by process 1 on elsewhere.example.*delete"):
        locks.RunLock(run_dir).acquire()
    assert locks.read_lock(run_dir)["host"] == "elsewhere.example", "another host's lock is left as it was"


def test_other_ranks_accept_only_their_own_jobs_lock(tmp_path):
    from lorafit import locks
    from lorafit.errors import UserError

    with locks.RunLock(tmp_path / "run", job="10.0.0.1:29500:abc"):
        locks.check_job_lock(tmp_path / "run", "10.0.0.1:29500:abc")
        with pytest.raises(UserError, match="in use by process"):
            locks.check_job_lock(tmp_path / "run", "10.0.0.1:29501:def")
