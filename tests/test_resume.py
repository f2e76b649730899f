"""SIGKILL mid-run, then resume: the run finishes exactly as an unbroken run with the same seed does.

Real subprocesses (`python -m lorafit train`) on the tiny RoBERTa. The data is a small keyword task the tiny model
learns within 40 steps, so validation accuracy actually moves (0.25, 0.15, 0.25, 0.55) and "same accuracy" means something.
The run crosses epoch boundaries (12 steps per epoch) and is killed after the checkpoint at step 20, in its second
epoch: the resumed run must restore model, optimizer, scheduler, RNG (dropout) and the length-grouped data order.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import run_subprocess, write_config

KEYWORDS = ["football", "election", "market", "software"]
FILLER = "the a of to and in for on with as by at from report news today week said".split()
# Eval losses and adapter weights of a resumed run equal the unbroken run's bit for bit on CPU: tolerance 0.
LOSS_TOLERANCE = 0.0


def keyword_rows(n: int, seed: int) -> pd.DataFrame:
    """Label i's texts hold keyword i among 0-2 filler words: learnable by a tiny random model in a few steps."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % len(KEYWORDS)
        words = [rng.choice(FILLER) for _ in range(rng.randint(0, 2))]
        words.insert(rng.randrange(len(words) + 1), KEYWORDS[label])
        rows.append((label, " ".join(words)))
    rng.shuffle(rows)
    return pd.DataFrame(rows, columns=["label", "text"])


@pytest.fixture(scope="module")
def keyword_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("keywords") / "keywords.csv"
    keyword_rows(400, seed=0).to_csv(path, index=False)
    return path


def resume_config(folder: Path, model: Path, data: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_config(
        folder / "resume.yaml",
        name="resume", output_dir=str(folder / "runs"),
        model={"name_or_path": str(model)},
        lora={"r": 4, "alpha": 8, "target_modules": ["query", "value"], "dropout": 0.1},
        data={"train_file": str(data), "max_train_samples": 96},  # 12 steps per epoch at batch 8
        train={"max_steps": 40, "batch_size": 8, "eval_steps": 10, "logging_steps": 5, "learning_rate": 5e-2,
               "warmup_steps": 2, "seed": 8, "group_by_length": True, "save_total_limit": 2},
    )


# The killed run SIGKILLs itself right after a given step, so the kill lands at the same point on any machine
# (a kill sent from outside raced the training on fast machines and sometimes came after the run had finished).
SELF_KILLING_TRAIN = """
import os, signal, sys
from transformers import TrainerCallback
from lorafit.config import load_config
from lorafit.train import run_training

class KillAfterStep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)

run_training(load_config(sys.argv[1]), extra_callbacks=[KillAfterStep()])
"""


def train_until_killed(config: Path, run_dir: Path, after_step: int) -> None:
    """Train in a subprocess that is SIGKILLed after `after_step`; checkpoints before it are complete."""
    process = subprocess.run([sys.executable, "-c", SELF_KILLING_TRAIN, str(config), str(after_step)],
                             capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert process.returncode == -signal.SIGKILL, f"expected a SIGKILL, got {process.returncode}:\n{process.stderr}"


def run_outcome(run_dir: Path) -> dict:
    result = json.loads((run_dir / "result.json").read_text())
    curve = [json.loads(line) for line in (run_dir / "eval_curve.jsonl").read_text().splitlines()]
    return {
        "result": {k: result[k] for k in ("status", "global_step", "best_step", "best_eval_accuracy",
                                          "final_eval_accuracy", "final_eval_macro_f1", "final_eval_loss")},
        "curve": [(row["step"], row["accuracy"], row["loss"], row["train_loss"]) for row in curve],
        "adapter": load_file(run_dir / "adapter" / "adapter_model.safetensors"),
    }


def assert_same_outcome(resumed: dict, unbroken: dict) -> None:
    assert resumed["result"]["final_eval_accuracy"] == unbroken["result"]["final_eval_accuracy"]
    assert resumed["result"]["best_eval_accuracy"] == unbroken["result"]["best_eval_accuracy"]
    assert abs(resumed["result"]["final_eval_loss"] - unbroken["result"]["final_eval_loss"]) <= LOSS_TOLERANCE
    assert resumed["result"] == unbroken["result"]
    assert [row[0] for row in resumed["curve"]] == [10, 20, 30, 40], "each evaluation once, in order"
    for got, want in zip(resumed["curve"], unbroken["curve"]):
        assert got[:2] == want[:2]  # step, accuracy
        assert abs(got[2] - want[2]) <= LOSS_TOLERANCE, f"eval loss at step {got[0]}: {got[2]} vs {want[2]}"
        assert abs(got[3] - want[3]) <= LOSS_TOLERANCE, f"train loss at step {got[0]}: {got[3]} vs {want[3]}"
    assert resumed["adapter"].keys() == unbroken["adapter"].keys()
    for name, tensor in unbroken["adapter"].items():
        assert torch.equal(resumed["adapter"][name], tensor), f"adapter tensor {name} differs"


def describe(outcome: dict) -> str:
    r = outcome["result"]
    return (f"final acc {r['final_eval_accuracy']}, best acc {r['best_eval_accuracy']} at step {r['best_step']}, "
            f"final eval loss {r['final_eval_loss']!r}, curve {[(s, a, round(l, 6)) for s, a, l, _ in outcome['curve']]}")


def test_sigkilled_run_resumes_to_identical_metrics(tmp_path, tiny_roberta, keyword_csv):
    unbroken_config = resume_config(tmp_path / "unbroken", tiny_roberta, keyword_csv)
    done = run_subprocess("train", unbroken_config)
    assert done.returncode == 0, done.stderr
    unbroken = run_outcome(tmp_path / "unbroken" / "runs" / "resume")
    assert unbroken["result"]["status"] == "completed"
    assert len({row[1] for row in unbroken["curve"]}) > 1, "accuracy must move, or equal accuracy proves nothing"

    config = resume_config(tmp_path / "killed", tiny_roberta, keyword_csv)
    run_dir = tmp_path / "killed" / "runs" / "resume"
    train_until_killed(config, run_dir, after_step=23)  # checkpoint 20 is saved; steps 21-23 are lost
    assert not (run_dir / "result.json").exists() and not (run_dir / "adapter").exists()
    killed_state = shutil.copytree(run_dir, tmp_path / "killed-state")

    # 1. The same command again continues from the last checkpoint.
    again = run_subprocess("train", config)
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stderr and "from step 20" in again.stderr, again.stderr
    first = run_outcome(run_dir)
    assert_same_outcome(first, unbroken)

    # 2. --resume, from the same killed state plus a checkpoint cut off mid-write (no trainer_state.json yet,
    #    as a kill during saving leaves it): the partial one is discarded and step 20 is used.
    shutil.rmtree(run_dir)
    shutil.copytree(killed_state, run_dir)
    partial = run_dir / "checkpoints" / "checkpoint-30"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(run_dir / "checkpoints" / "checkpoint-20", partial)
    (partial / "trainer_state.json").unlink()
    flagged = run_subprocess("train", config, "--resume")
    assert flagged.returncode == 0, flagged.stderr
    assert "from step 20" in flagged.stderr, flagged.stderr
    second = run_outcome(run_dir)
    assert_same_outcome(second, unbroken)

    print(f"\nunbroken: {describe(unbroken)}\nresumed (same command): {describe(first)}\n"
          f"resumed (--resume, partial checkpoint discarded): {describe(second)}\nloss tolerance: {LOSS_TOLERANCE}")


def test_resume_refuses_a_changed_config(tmp_path, tiny_roberta, keyword_csv, cli):
    """Resuming with other settings would silently mix two runs; it must be refused, leaving the folder as it was."""
    config = resume_config(tmp_path / "changed", tiny_roberta, keyword_csv)
    run_dir = tmp_path / "changed" / "runs" / "resume"
    run_dir.mkdir(parents=True)
    import yaml

    from lorafit.config import load_config

    saved = load_config(config).to_dict()
    saved["train"]["learning_rate"] = 0.1
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    before = sorted(p.name for p in run_dir.iterdir())
    result = cli("train", config, "--resume")
    assert result.code == 2
    assert "different config" in result.err and "--overwrite" in result.err
    assert "train.learning_rate: 0.1 there" in result.err  # the setting that differs, named
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_a_damaged_saved_config_is_refused_in_one_line(tmp_path, tiny_roberta, keyword_csv, cli):
    """A config.yaml whose train.batch_size became a mapping (hand-edited, merged) ended in a raw TypeError: the
    batch-size hint put the value in a set. It is a different config, named, and the folder is left as it was."""
    config = resume_config(tmp_path / "damaged", tiny_roberta, keyword_csv)
    run_dir = tmp_path / "damaged" / "runs" / "resume"
    run_dir.mkdir(parents=True)
    import yaml

    from lorafit.config import load_config

    saved = load_config(config).to_dict()
    saved["train"]["batch_size"] = {"per_device": 8}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    before = (run_dir / "config.yaml").read_text()
    result = cli("train", config)
    assert result.code == 2, result.err
    assert "different config" in result.err and "train.batch_size: {'per_device': 8} there" in result.err
    assert "Traceback" not in result.err and len(result.err.strip().splitlines()) == 1, result.err
    assert (run_dir / "config.yaml").read_text() == before


def test_a_run_begun_with_the_gpu_batch_names_the_batch_when_resumed_on_the_cpu(tmp_path, tiny_roberta, keyword_csv,
                                                                                 cli):
    """batch_size auto resolves to 128 on CUDA and 32 here: the refusal says so and how to resume."""
    import yaml

    from lorafit import runs

    config = resume_config(tmp_path / "auto", tiny_roberta, keyword_csv)
    values = yaml.safe_load(config.read_text())
    values["train"]["batch_size"] = "auto"
    config.write_text(yaml.safe_dump(values))
    assert cli("train", config).code == 0
    run_dir = tmp_path / "auto" / "runs" / "resume"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["train"]["batch_size"] == 32
    saved["train"].update(batch_size=128, learning_rate=saved["train"]["learning_rate"] * 2)  # as a GPU wrote it
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    manifest = json.loads((run_dir / "manifest.json").read_text())  # and its manifest names that config
    manifest["config_sha256"] = runs.config_digest((run_dir / "config.yaml").read_text())
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    (run_dir / "result.json").unlink()  # unfinished: a resume, not a finished run
    result = cli("train", config)
    assert result.code == 2
    assert "train.batch_size: 128 there, 32 here" in result.err and "auto is 128 on CUDA and 32 on the CPU" in result.err
