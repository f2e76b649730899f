"""A run whose weights diverge (NaN) stops at the evaluation that sees it, instead of training every step left on
NaN and saving a NaN adapter as "completed" (exit 0). The divergence is made at a fixed step, by a learning rate
no model survives or by a callback that poisons one weight, never raced."""

from __future__ import annotations

import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from conftest import one_line_error, tiny_run_config
from lorafit import runs
from lorafit.config import load_config
from lorafit.train import run_training


class PoisonAtStep(TrainerCallback):
    """Sets one trainable weight to NaN at the end of `step`: from then on every weight the optimizer touches is
    NaN, as after a real blow-up."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            weight = next(p for p in model.parameters() if p.requires_grad)
            with torch.no_grad():
                weight.view(-1)[0] = float("nan")


def test_a_run_that_diverges_after_a_good_evaluation_keeps_the_good_checkpoint(tmp_path, tiny_roberta,
                                                                              small_agnews):
    """Weights NaN after step 3 of 8: training stops at step 4's evaluation, not at step 8, and the adapter saved is
    step 2's, finite; result.json says where it diverged."""
    cfg = load_config(tiny_run_config(tmp_path, small_agnews, model=tiny_roberta, max_steps=8))
    result = run_training(cfg, extra_callbacks=[PoisonAtStep(3)])
    assert (result["status"], result["global_step"], result["diverged_at_step"], result["best_step"]) == \
        ("completed", 4, 4, 2), result
    weights = load_file(cfg.run_dir / runs.ADAPTER / runs.ADAPTER_WEIGHTS)
    assert all(bool(torch.isfinite(t).all()) for t in weights.values())


def test_a_learning_rate_that_blows_up_keeps_its_last_finite_checkpoint(tmp_path, tiny_roberta, small_agnews):
    """A learning rate of 1e6: step 2's validation loss is huge but finite, step 4's NaN, yet step 4 scored the
    higher accuracy (NaN logits all say class 0) and its NaN weights were restored and saved as the adapter of a
    "completed" run. Now the NaN evaluation is never the best: training stops at step 4 and step 2's weights are
    saved."""
    cfg = load_config(tiny_run_config(tmp_path, small_agnews, model=tiny_roberta, learning_rate=1e6, max_steps=8))
    result = run_training(cfg)
    assert (result["status"], result["diverged_at_step"], result["best_step"], result["global_step"]) == \
        ("completed", 4, 2, 4), result
    weights = load_file(cfg.run_dir / runs.ADAPTER / runs.ADAPTER_WEIGHTS)
    assert all(bool(torch.isfinite(t).all()) for t in weights.values())


def test_a_run_that_diverges_before_its_first_evaluation_is_one_line_and_saves_no_adapter(
        tmp_path, tiny_roberta, small_agnews, cli, monkeypatch):
    """Weights NaN after step 1, evaluated first at step 2: the run ended "completed" with a NaN adapter (a student
    distilled from it trained to NaN, predict said class 0 for every text). Now: exit 2 with one line naming the
    learning rate, result.json status "diverged", no adapter and no NaN checkpoint to resume; the same command
    again says so instead of resuming."""
    from lorafit import train

    config = tiny_run_config(tmp_path, small_agnews, model=tiny_roberta, max_steps=8)
    run_dir = tmp_path / "runs" / "tiny"
    real_build = train.build_trainer

    def build_with_poison(*args, **kwargs):
        trainer = real_build(*args, **kwargs)
        trainer.add_callback(PoisonAtStep(1))
        return trainer

    monkeypatch.setattr(train, "build_trainer", build_with_poison)
    refused = cli("train", config)
    assert refused.code == 2, refused.err
    errors = [line for line in refused.err.splitlines() if line.startswith("lorafit: error: ")]
    assert errors == refused.err.strip().splitlines()[-1:], refused.err  # one error line, after the progress lines
    assert all(w in errors[0] for w in ("training diverged", "step 2", "train.learning_rate (now 0.001)",
                                        "--overwrite")), errors
    monkeypatch.setattr(train, "build_trainer", real_build)
    result = runs.read_json(run_dir / runs.RESULT)
    assert (result["status"], result["diverged_at_step"], result["global_step"]) == ("diverged", 2, 2), result
    assert not (run_dir / runs.ADAPTER).exists() and not (run_dir / runs.CHECKPOINTS).exists()
    one_line_error(cli("train", config), "diverged", "--overwrite")
    one_line_error(cli("predict", run_dir, "--input", small_agnews, "--output", tmp_path / "p.csv"), "no trained adapter")
    assert not (tmp_path / "p.csv").exists()


def test_a_failed_sweep_trial_records_no_best_accuracy_of_nan_weights(tmp_path):
    """A sweep trial that diverged is recorded as failed, with best and final figures from its curve: the NaN
    evaluation's all-class-0 accuracy (0.275) was written as its best_eval_accuracy, above the finite step's."""
    from lorafit.sweep.runner import _curve_summary

    runs.append_jsonl(tmp_path / runs.EVAL_CURVE, {"step": 2, "accuracy": 0.25, "loss": 3373137.5})
    runs.append_jsonl(tmp_path / runs.EVAL_CURVE, {"step": 4, "accuracy": 0.275, "loss": float("nan")})
    assert _curve_summary(tmp_path) == {"best_eval_accuracy": 0.25, "best_step": 2,
                                        "final_eval_accuracy": 0.275, "final_step": 4}
