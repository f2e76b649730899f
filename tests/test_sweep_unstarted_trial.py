"""A worker killed between claiming a trial and its first heartbeat (or whose first heartbeat failed) left the trial
RUNNING with no heartbeat at all. Optuna sees only trials with a heartbeat as stale, so the trial was never failed
nor retried, and every other worker waited on it for good. Now it is failed and retried after the grace period, as
a trial whose heartbeat stopped is."""

from __future__ import annotations

import time

from optuna.trial import TrialState

from lorafit.sweep import TrialFactory, load_sweep, run_sweep, trial_base
from lorafit.sweep.storage import claim_waiting_trial, default_storage_url, open_study
from test_sweep import base_config, load_study, write_sweep

GRACE = 2  # seconds; heartbeats every 1


def test_a_trial_claimed_by_a_worker_that_died_before_its_first_heartbeat_is_retried(tmp_path, tiny_roberta,
                                                                                     small_agnews):
    grid = {"mode": "product", "axes": {"lora.r": [64]}}  # over budget: the retry writes a small folder, no training
    sweep = write_sweep(tmp_path, "unstarted", base_config(tiny_roberta, small_agnews), grid=grid,
                        heartbeat_interval=1, grace_period=GRACE)
    out = tmp_path / "runs"
    spec = load_sweep(sweep)
    factory = TrialFactory(spec, {}, str(out))
    url = default_storage_url(factory.sweep_dir)
    study, storage, queued = open_study(spec, url, factory.sweep_dir, factory.grid_points(), trial_base(factory))
    assert queued == 1
    dead = claim_waiting_trial(study, storage, storage.get_study_id_from_name(study.study_name))  # then killed
    assert dead is not None
    time.sleep(GRACE + 1)  # past the grace period: the trial is stale now, whenever the next worker looks

    outcome = run_sweep(sweep, output_dir=str(out), timeout=30)  # before the fix: waited on the trial until timeout
    assert outcome.exit_code == 0 and outcome.ran == {"skipped_over_budget": 1}, outcome
    first, retry = load_study(factory.sweep_dir, "unstarted").get_trials()
    assert first.number == dead.number and first.state == TrialState.FAIL
    assert retry.state == TrialState.PRUNED and retry.user_attrs["status"] == "skipped_over_budget"
