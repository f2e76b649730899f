"""A Ctrl-C in the very step whose evaluation finds the weights diverged (NaN validation loss). The divergence ends
training at that evaluation anyway, so the signal cut nothing short. The run ended 'interrupted' with a resume_from
checkpoint of NaN weights; the rerun resumed it, trained NaN on to the next evaluation, and recorded that later step
as where it diverged. Now it ends as a divergence does: the best finite checkpoint is the adapter, and the stop
asked for is passed on as the exit status."""

from __future__ import annotations

import signal

import torch
from safetensors.torch import load_file

from conftest import signal_at_step, tiny_run_config
from lorafit import runs
from lorafit.config import load_config
from lorafit.train import run_training
from test_divergence import PoisonAtStep


def test_a_signal_in_the_step_that_diverges_ends_the_run_as_the_divergence_does(tmp_path, tiny_roberta, small_agnews):
    cfg = load_config(tiny_run_config(tmp_path, small_agnews, model=tiny_roberta, max_steps=8))  # evaluates every 2
    result = run_training(cfg, extra_callbacks=[PoisonAtStep(3), signal_at_step(3)])  # NaN and SIGINT in step 4
    assert (result["status"], result["global_step"], result["diverged_at_step"], result["best_step"]) == \
        ("completed", 4, 4, 2), result
    assert "resume_from" not in result and result.get("stop_exit_code") == 128 + signal.SIGINT, result
    assert runs.read_json(cfg.run_dir / runs.RESULT)["status"] == "completed"
    weights = load_file(cfg.run_dir / runs.ADAPTER / runs.ADAPTER_WEIGHTS)
    assert all(bool(torch.isfinite(t).all()) for t in weights.values())
