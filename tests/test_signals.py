"""SIGTERM / SIGINT to a real `python -m lorafit train` process: stop at the next step, checkpoint, record the
interruption, exit 128+signal, and resume to completion; a second signal exits at once."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_subprocess, write_config

MAX_STEPS = 40


def signal_config(folder: Path, model: Path, data: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_config(
        folder / "signals.yaml",
        name="signals", output_dir=str(folder / "runs"),
        model={"name_or_path": str(model)},
        lora={"r": 4, "alpha": 8, "target_modules": ["query", "value"]},
        data={"train_file": str(data), "max_train_samples": 96},
        train={"max_steps": MAX_STEPS, "batch_size": 8, "eval_steps": 10, "logging_steps": 5, "seed": 3},
    )


def start_training(config: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lorafit", "train", str(config), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def read_until(process: subprocess.Popen, text: str) -> list[str]:
    """stderr lines up to the first one holding `text` (the eval lines are printed with flush)."""
    lines = []
    while True:
        line = process.stderr.readline()
        if not line:
            rest = process.communicate()[1]
            pytest.fail(f"process ended before printing {text!r}:\n{''.join(lines)}{rest}")
        lines.append(line)
        if text in line:
            return lines


def wait_for_file(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None and time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def finish(process: subprocess.Popen, seen: list[str]) -> str:
    _, err = process.communicate(timeout=300)
    return "".join(seen) + err


def interrupted_result(run_dir: Path, sig: signal.Signals, err: str, returncode: int) -> int:
    """Checks a run stopped by one signal; returns the step it stopped at."""
    assert returncode == 128 + sig, err
    assert "Traceback" not in err, err
    assert f"{sig.name} received" in err and "rerun the same command (or add --resume)" in err, err
    result = json.loads((run_dir / "result.json").read_text())
    step = result["global_step"]
    assert result["status"] == "interrupted" and result["signal"] == sig.name
    assert 10 <= step < MAX_STEPS, "stopped at the next step, not at the end"
    assert f"interrupted at step {step}" in err
    checkpoint = run_dir / "checkpoints" / f"checkpoint-{step}"
    assert (checkpoint / "trainer_state.json").exists() and (checkpoint / "optimizer.pt").exists()
    assert result["resume_from"] == f"checkpoints/checkpoint-{step}"
    assert not (run_dir / "adapter").exists(), "an interrupted run has no final adapter"
    return step


def assert_completed(run_dir: Path) -> None:
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "completed" and result["global_step"] == MAX_STEPS
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
    steps = [json.loads(line)["step"] for line in (run_dir / "eval_curve.jsonl").read_text().splitlines()]
    assert steps == list(range(10, MAX_STEPS + 1, 10)), "every evaluation exactly once"


def test_sigterm_checkpoints_stops_and_the_same_command_resumes(tmp_path, tiny_roberta, small_agnews):
    config = signal_config(tmp_path, tiny_roberta, small_agnews)
    run_dir = tmp_path / "runs" / "signals"
    process = start_training(config)
    seen = read_until(process, f"step 10/{MAX_STEPS}")  # training is under way, handlers installed
    process.send_signal(signal.SIGTERM)
    err = finish(process, seen)
    step = interrupted_result(run_dir, signal.SIGTERM, err, process.returncode)

    resumed = run_subprocess("train", config)
    assert resumed.returncode == 0, resumed.stderr
    assert f"from step {step}" in resumed.stderr
    assert_completed(run_dir)


def test_sigint_then_resume_and_a_second_sigint_exits_at_once(tmp_path, tiny_roberta, small_agnews):
    config = signal_config(tmp_path, tiny_roberta, small_agnews)
    run_dir = tmp_path / "runs" / "signals"
    process = start_training(config)
    seen = read_until(process, f"step 10/{MAX_STEPS}")
    process.send_signal(signal.SIGINT)
    step = interrupted_result(run_dir, signal.SIGINT, finish(process, seen), process.returncode)
    interrupted = (run_dir / "result.json").read_text()

    # --resume continues from that step; Ctrl-C twice during it: the second one exits at once.
    process = start_training(config, "--resume")
    seen = read_until(process, f"from step {step}")
    seen += read_until(process, f"step 20/{MAX_STEPS}")
    wait_for_file(run_dir / "checkpoints" / "checkpoint-20" / "trainer_state.json", process)
    process.send_signal(signal.SIGINT)
    seen += read_until(process, "SIGINT received")  # the first one is being handled: now the second
    process.send_signal(signal.SIGINT)
    err = finish(process, seen)
    assert process.returncode == 130, err
    assert "Traceback" not in err, err
    assert "training interrupted at step" not in err, "the second signal must not wait for the checkpoint"
    assert (run_dir / "result.json").read_text() == interrupted, "no result written by a hard exit"

    # What is on disk is still resumable: the last complete checkpoint is used, a half-written one skipped.
    resumed = run_subprocess("train", config)
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"from step 2[01] ", resumed.stderr), resumed.stderr  # checkpoint-20, or -21 if complete
    assert_completed(run_dir)
