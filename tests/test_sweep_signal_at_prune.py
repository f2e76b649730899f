"""A Ctrl-C in the very step whose evaluation the pruner cuts. The pruner ends training at that evaluation anyway, so
the signal cut nothing short: the trial is pruned (its run finished, with the best checkpoint as adapter), and the
stop asked for ends the sweep. It was recorded 'interrupted' with a resumable run: the next sweep resumed a trial
the pruner had already judged poor and trained it on."""

from __future__ import annotations

import signal

from conftest import signal_at_step
from lorafit import runs
from lorafit.sweep import runner
from lorafit.sweep.runner import run_sweep
from test_sweep import FAST_TRAIN, base_config, write_sweep


def test_a_signal_in_the_step_the_pruner_cuts_records_the_trial_pruned(tmp_path, tiny_roberta, small_agnews,
                                                                       monkeypatch):
    first_eval = FAST_TRAIN["eval_steps"]

    class SignalInThePrunedStep(runner.OptunaReportCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            signal_at_step(first_eval - 1).on_step_begin(args, state, control)

    monkeypatch.setattr(runner, "OptunaReportCallback", SignalInThePrunedStep)
    search = {"n_trials": 2, "sampler": "random", "seed": 0, "pruner": {"type": "threshold", "lower": 1.1},
              "params": {"lora.dropout": {"choices": [0.05, 0.2]}}}  # every evaluation is below 1.1: pruned at once
    sweep = write_sweep(tmp_path, "cut", base_config(tiny_roberta, small_agnews), search=search)
    outcome = run_sweep(sweep, output_dir=str(tmp_path / "runs"))

    assert (outcome.exit_code, outcome.ran) == (128 + signal.SIGINT, {"pruned": 1}), outcome
    (run_dir,) = [p for p in (tmp_path / "runs" / "cut").iterdir() if (p / runs.RESULT).exists()]
    result = runs.read_json(run_dir / runs.RESULT)
    assert (result["status"], result["pruned_at_step"], result["global_step"]) == ("pruned", first_eval, first_eval)
    assert "resume_from" not in result and "stop_exit_code" not in result
    assert (run_dir / runs.ADAPTER / runs.ADAPTER_WEIGHTS).is_file()
