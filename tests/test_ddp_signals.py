"""SIGTERM to one rank of a 2-process DDP run (torchrun, gloo on CPU), as a scheduler or `kill <pid>` may send it:
every rank stops at the same step, the checkpoint is saved, the run is recorded as interrupted, lorafit returns
128 + the signal, and the same command resumes and completes: the outcome of a signal to every rank. Before the
ranks shared the stop flag, the signalled rank went to save and exit while the others carried on into the next
step's all-reduce and waited there (the job hung). This is also the only test of resuming a DDP run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_config

NPROC = 2
MAX_STEPS = 6
SIGNAL_STEP = 3  # after the first evaluation and checkpoint (step 2), so the Trainer's save barrier is in play
HANG_TIMEOUT = 240  # seconds from the signal to the job's end: a bound only a hang exceeds, not a timing check
START_TIMEOUT = 900  # seconds to reach SIGNAL_STEP: starting two processes is slow on a busy 2-core machine

# Run under torchrun. The ranks named in argv[4] stop at the end of SIGNAL_STEP, write their pid to a marker and
# wait (before their stop check) until the test's signal has arrived: the signal lands at the same step on any
# machine. The other ranks go on into the next step. Each rank records the exit status lorafit returned.
SIGNALLED_TRAIN = """
import os, sys, time
from pathlib import Path

import lorafit.train as train
from lorafit.cli import main

config, step, markers, targets = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4].split(",")
rank = os.environ["RANK"]


class WaitForSignalAtStep(train.GracefulInterrupt):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == step and rank in targets and self.signal_received is None:
            (markers / f"pid-{rank}.tmp").write_text(str(os.getpid()))
            os.replace(markers / f"pid-{rank}.tmp", markers / f"pid-{rank}")
            deadline = time.monotonic() + 120
            while self.signal_received is None and time.monotonic() < deadline:
                time.sleep(0.02)
        return super().on_step_end(args, state, control, **kwargs)


train.GracefulInterrupt = WaitForSignalAtStep
code = main(["train", config])
(markers / f"exit-{rank}").write_text(str(code))
sys.exit(code)
"""


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(NPROC),
            "--master_port", str(_free_port()), *args]


def _wait_for_pids(markers: Path, ranks: list[int], process: subprocess.Popen, log: Path) -> dict[int, int]:
    deadline = time.monotonic() + START_TIMEOUT
    while not all((markers / f"pid-{rank}").exists() for rank in ranks):
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(process)
            pytest.fail(f"training never reached step {SIGNAL_STEP} on ranks {ranks}:\n{log.read_text()[-6000:]}")
        time.sleep(0.05)
    return {rank: int((markers / f"pid-{rank}").read_text()) for rank in ranks}


def _stop(process: subprocess.Popen) -> None:
    """torchrun and its workers (each worker has a session of its own: killing torchrun's would miss them)."""
    import psutil  # an accelerate dependency

    try:
        processes = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        processes = []
    for child in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    process.wait()


def test_sigterm_to_one_rank_stops_every_rank_at_one_step_and_resumes(tmp_path, tiny_roberta, small_agnews):
    interrupt_and_resume(tmp_path, tiny_roberta, small_agnews, signalled_ranks=[1])


def interrupt_and_resume(tmp_path: Path, tiny_roberta: Path, small_agnews: Path, signalled_ranks: list[int]) -> None:
    config = write_config(
        tmp_path / "ddp-signals.yaml", name="ddp-signals", output_dir=str(tmp_path / "runs"),
        model={"name_or_path": str(tiny_roberta)},
        lora={"r": 4, "alpha": 8, "target_modules": ["query", "value"]},
        data={"train_file": str(small_agnews), "max_length": 32, "validation_size": 16, "max_train_samples": 96},
        train={"max_steps": MAX_STEPS, "batch_size": 8, "eval_steps": 2, "logging_steps": 2, "precision": "fp32"},
    )
    run_dir = tmp_path / "runs" / "ddp-signals"
    script = tmp_path / "signalled_train.py"
    script.write_text(SIGNALLED_TRAIN)
    markers = tmp_path / "markers"
    markers.mkdir()
    log = tmp_path / "interrupted.log"

    with open(log, "w") as out:  # a file, not a pipe: nothing blocks on a full pipe while the test waits
        process = subprocess.Popen(
            _torchrun(str(script), str(config), str(SIGNAL_STEP), str(markers), ",".join(map(str, signalled_ranks))),
            cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, env=_env())
        try:
            for pid in _wait_for_pids(markers, signalled_ranks, process, log).values():
                os.kill(pid, signal.SIGTERM)
            try:
                process.wait(timeout=HANG_TIMEOUT)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the job hung after SIGTERM to rank(s) {signalled_ranks}:\n{log.read_text()[-6000:]}")
        finally:
            _stop(process)
    err = log.read_text()

    # lorafit returned 128 + SIGTERM on the ranks (a rank may be SIGTERMed by torchrun once another has exited, as
    # under a signal to every rank); torchrun fails the job with that status as its root cause.
    assert process.returncode != 0, err[-6000:]
    assert "lorafit/train.py" not in err and "site-packages/transformers" not in err, err[-6000:]  # no traceback
    exits = {path.name: path.read_text() for path in markers.glob("exit-*")}
    assert exits and set(exits.values()) == {str(128 + signal.SIGTERM)}, (exits, err[-6000:])
    assert re.search(r"Root Cause.*?exitcode\s*:\s*143", err, re.S), err[-6000:]
    assert f"training interrupted at step {SIGNAL_STEP};" in err, err[-6000:]

    from lorafit.train import checkpoint_problem

    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "interrupted" and result["signal"] == "SIGTERM", result
    assert result["global_step"] == SIGNAL_STEP, "every rank stopped after the step the signal came in"
    assert result["resume_from"] == f"checkpoints/checkpoint-{SIGNAL_STEP}"
    checkpoint = run_dir / "checkpoints" / f"checkpoint-{SIGNAL_STEP}"
    assert checkpoint_problem(checkpoint) is None
    assert sorted(p.name for p in checkpoint.glob("rng_state_*.pth")) == [f"rng_state_{r}.pth" for r in range(NPROC)]
    assert not (run_dir / "adapter").exists(), "an interrupted run has no final adapter"

    # The same command, without the signal: resumes from that checkpoint and completes.
    resumed = subprocess.run(_torchrun("-m", "lorafit", "train", str(config)), cwd=tmp_path, capture_output=True,
                             text=True, timeout=START_TIMEOUT, env=_env())
    assert resumed.returncode == 0, resumed.stderr[-6000:]
    assert f"from step {SIGNAL_STEP} " in resumed.stderr, resumed.stderr[-6000:]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "completed" and result["global_step"] == MAX_STEPS
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
    steps = [json.loads(line)["step"] for line in (run_dir / "eval_curve.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6], "every evaluation exactly once"
