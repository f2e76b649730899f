"""Regression tests for bugs found reviewing lorafit.train: a signal during the last step, resuming from the last
step's checkpoint, early stopping and the eval curve across a resume, and result.json's example counts.

In-process runs of the tiny RoBERTa; signals are sent by a callback at a fixed step, not raced against a timer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import signal_at_step, write_config
from lorafit import runs
from lorafit.config import load_config
from lorafit.train import run_training


def _config(root: Path, name: str, tiny_roberta: Path, data: Path, max_train_samples=None, **train):
    return load_config(write_config(
        root / f"{name}.yaml", name=name, output_dir=str(root / "runs"),
        model={"name_or_path": str(tiny_roberta)},
        lora={"r": 4, "alpha": 8, "target_modules": ["query", "value"]},
        data={"train_file": str(data), "max_length": 32, "max_train_samples": max_train_samples},
        train={"batch_size": 8, "learning_rate": 1e-3, "precision": "fp32", **train},
    ))


def _curve(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / runs.EVAL_CURVE).read_text().splitlines()]


# 20 training rows at batch 8: 3 steps an epoch (8, 8, 4 rows); step 4 is the first of the second epoch.
@pytest.fixture(scope="module")
def signalled_in_last_step(tmp_path_factory, tiny_roberta, small_agnews):
    root = tmp_path_factory.mktemp("last-step")
    cfg = _config(root, "last", tiny_roberta, small_agnews, max_train_samples=20, max_steps=4, eval_steps=2)
    result = run_training(cfg, extra_callbacks=[signal_at_step(3)])
    return cfg, result, (cfg.run_dir / runs.ADAPTER / runs.ADAPTER_WEIGHTS).is_file()


def test_a_signal_during_the_last_step_leaves_a_completed_run(signalled_in_last_step):
    """Ctrl-C during the last step: training ended anyway (final evaluation and checkpoint done), yet the run was
    reported interrupted (exit code 130), with no adapter, and had to be resumed to get one."""
    _, result, has_adapter = signalled_in_last_step
    assert result["status"] == "completed", result
    assert result["global_step"] == 4 and "exit_code" not in result
    assert has_adapter


def test_examples_seen_counts_the_short_last_batch_of_an_epoch(signalled_in_last_step):
    """result.json's examples_seen was steps x batch size: 32 for 4 steps over 20 rows, though the third step
    held only 4 rows (20 + 8 = 28 were trained on); train_examples_per_second was inflated alike."""
    _, result, _ = signalled_in_last_step
    assert result["train_rows"] == 20
    assert result["examples_seen"] == 28


def test_resuming_from_the_last_steps_checkpoint_trains_no_further_step(signalled_in_last_step):
    """A run killed after its last checkpoint but before result.json (while saving the adapter) was resumed by the
    same command: the Trainer trained step 5 of max_steps 4 and evaluated there, so the adapter and the final
    metrics came from a step more than asked (result.json: global_step 5, max_steps 4)."""
    cfg, _, _ = signalled_in_last_step
    (cfg.run_dir / runs.RESULT).unlink()
    shutil.rmtree(cfg.run_dir / runs.ADAPTER, ignore_errors=True)
    result = run_training(cfg)
    assert result["resumed_from_step"] == 4
    assert (result["status"], result["global_step"], result["final_step"]) == ("completed", 4, 4), result
    assert [row["step"] for row in _curve(cfg.run_dir)] == [2, 4]


# A learning rate too small to change any prediction: validation accuracy never improves after step 2, so early
# stopping with patience 2 stops an unbroken run at step 6. Training losses are logged at steps 5 and 10 only.
EARLY = dict(max_steps=12, eval_steps=2, logging_steps=5, learning_rate=1e-12, early_stopping_patience=2)


@pytest.fixture(scope="module")
def early_stopping_runs(tmp_path_factory, tiny_roberta, small_agnews):
    """(unbroken run's result, its curve, resumed run's result, its curve): the second is interrupted after step 5
    (after the evaluation at 4, which counted one evaluation without improvement) and resumed."""
    root = tmp_path_factory.mktemp("early")
    unbroken = run_training(_config(root, "unbroken", tiny_roberta, small_agnews, **EARLY))
    cfg = _config(root, "resumed", tiny_roberta, small_agnews, **EARLY)
    first = run_training(cfg, extra_callbacks=[signal_at_step(4)])
    assert (first["status"], first["global_step"]) == ("interrupted", 5)
    resumed = run_training(cfg)
    return unbroken, _curve(root / "runs" / "unbroken"), resumed, _curve(cfg.run_dir)


def test_early_stopping_counts_evaluations_from_before_a_resume(early_stopping_runs):
    """Early stopping's count of evaluations without improvement restarted at 0 on resume: an interrupted and
    resumed run stopped at step 8 where the same run unbroken stopped at 6 (another adapter, other metrics)."""
    unbroken, unbroken_curve, resumed, resumed_curve = early_stopping_runs
    assert unbroken["global_step"] == 6
    assert resumed["global_step"] == unbroken["global_step"]
    assert [row["step"] for row in resumed_curve] == [row["step"] for row in unbroken_curve]


def test_eval_curve_keeps_the_training_loss_logged_before_a_resume(early_stopping_runs):
    """The first evaluation after a resume showed train_loss null when no loss had been logged since the resume,
    where the unbroken run shows the last loss logged (here step 5's, at the evaluation of step 6)."""
    _, unbroken_curve, _, resumed_curve = early_stopping_runs
    want = {row["step"]: row["train_loss"] for row in unbroken_curve}
    got = {row["step"]: row["train_loss"] for row in resumed_curve}
    assert want[6] is not None
    assert got[6] == want[6]
