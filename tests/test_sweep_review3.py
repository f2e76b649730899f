"""Sweep review 3: a trial retried while its first worker still holds the run folder is neither failed nor counted
(and its folder is never cleared under the live writer); a changed search space is refused on rerun; under
budget_policy fit, a config that was already trained is not trained again."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import optuna
from optuna.trial import TrialState

from lorafit import locks, runs
from lorafit.sweep import (BUSY, DUPLICATE, SWEEP_INFO, SweepRunner, TrialFactory, default_storage_url, load_sweep,
                           open_study, run_sweep, trial_base)
from test_sweep import base_config, load_study, write_sweep

DROPOUT = {"type": "float", "low": 0.0, "high": 0.2}


def _search(n_trials: int, params: dict) -> dict:
    return {"n_trials": n_trials, "sampler": "random", "seed": 0, "pruner": "none", "params": params}


def _runner(sweep: Path, out: Path) -> SweepRunner:
    """A worker on the sweep's study, as run_sweep makes it."""
    spec = load_sweep(sweep)
    factory = TrialFactory(spec, {}, str(out))
    url = default_storage_url(factory.sweep_dir)
    study, storage, _ = open_study(spec, url, factory.sweep_dir, [], trial_base(factory))
    return SweepRunner(spec, factory, study, storage, url)


def _start_and_lose_heartbeat(runner: SweepRunner, written: str) -> Path:
    """Worker A starts trial 0 and takes its run folder (its lock, and what it wrote so far); then its heartbeats
    stop (a stalled database) while it goes on training: what fail_stale_trials does next is done here, at a fixed
    point.
    Returns the run folder, still locked by A (this process)."""
    trial = runner.next_trial()
    runner._settings(trial)
    name = runner._trial_name(trial)
    trial.set_user_attr("run_name", name)
    run_dir = runner.factory.sweep_dir / name
    runner.held = locks.RunLock(run_dir).acquire()
    (run_dir / written).mkdir(parents=True)
    trial_id = runner.storage.get_trial_id_from_study_id_trial_number(runner.study_id, trial.number)
    runner.storage.set_trial_state_values(trial_id, TrialState.FAIL)
    runner.storage.get_heartbeat_stale_trial_callback()(runner.study, runner.storage.get_trial(trial_id))
    return run_dir


def test_a_retry_whose_folder_a_live_worker_holds_waits_and_is_not_a_failure(tmp_path, tiny_roberta, small_agnews):
    """The retry was claimed at once, hit the folder's lock, and was a failed trial counted toward n_trials (exit
    1); one whose first worker had not checkpointed yet had its live folder deleted under it. Now a worker leaves
    it queued while the folder is held, runs other queued trials, waits, and runs it once the folder is free."""
    sweep = write_sweep(tmp_path, "retry", base_config(tiny_roberta, small_agnews),
                        search=_search(2, {"lora.dropout": DROPOUT}))
    out = tmp_path / "runs"
    worker_a = _runner(sweep, out)
    worker_a.study.enqueue_trial({"lora.dropout": 0.05})
    held = _start_and_lose_heartbeat(worker_a, "tokenized-data")  # before its first checkpoint
    worker_a.study.enqueue_trial({"lora.dropout": 0.15})  # another queued trial: B runs it meanwhile
    worker_b = _runner(sweep, out)
    waits = []

    def first_worker_ends(seconds: float) -> None:  # B has nothing else to run: A ends here, freeing the folder
        assert not waits, "waited again after the folder was free"
        waits.append(sorted(p.name for p in held.iterdir()))
        worker_a.held.release()

    worker_b._wait = first_worker_ends
    assert worker_b.run(None, None) == {"completed": 2}
    assert waits == [[locks.LOCK, "tokenized-data"]]  # A's folder untouched while A held it
    trials = load_study(out / "retry", "retry").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[1].params == trials[0].params == {"lora.dropout": 0.05}
    assert trials[2].params == {"lora.dropout": 0.15}
    assert trials[1].user_attrs["run_name"] == "trial-0000" and trials[2].user_attrs["run_name"] == "trial-0002"
    assert runs.read_json(held / runs.RESULT)["status"] == "completed"


def test_a_trial_that_meets_a_held_folder_after_its_claim_is_queued_again_not_failed(tmp_path, tiny_roberta,
                                                                                      small_agnews):
    """The folder may be taken between the claim and the trial's start: the trial ends as 'busy' (not counted
    toward n_trials, the sweep's exit code stays 0), the same point is queued again, and nothing is written."""
    sweep = write_sweep(tmp_path, "race", base_config(tiny_roberta, small_agnews),
                        search=_search(1, {"lora.dropout": DROPOUT}))
    out = tmp_path / "runs"
    worker_a = _runner(sweep, out)
    held = _start_and_lose_heartbeat(worker_a, f"{runs.CHECKPOINTS}/checkpoint-2")
    worker_b = _runner(sweep, out)
    retry = worker_b.study.get_trials(states=(TrialState.WAITING,))[0]
    trial_id = worker_b.storage.get_trial_id_from_study_id_trial_number(worker_b.study_id, retry.number)
    assert worker_b.storage.set_trial_state_values(trial_id, TrialState.RUNNING)  # claimed before A took the folder
    outcome = worker_b.run_trial(optuna.Trial(worker_b.study, trial_id))
    assert outcome.status == BUSY and "in use by" in outcome.note
    assert sorted(p.name for p in held.iterdir()) == [locks.LOCK, runs.CHECKPOINTS]
    trials = worker_b.study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.WAITING]
    assert trials[1].user_attrs["status"] == BUSY
    assert trials[2].system_attrs["fixed_params"] == trials[0].params  # how Optuna queues a trial's params
    assert trials[2].user_attrs["run_name"] == "trial-0000"
    assert worker_b._count_failed_for_good() == 0
    assert worker_b.next_trial() == "wait"  # the one trial left waits for A; n_trials is not used up
    worker_a.held.release()


def test_a_rerun_with_another_search_space_is_refused(tmp_path, tiny_roberta, small_agnews, cli):
    """The study mixed trials drawn from two spaces without a word (the best trial could lie outside the new one)."""
    base = base_config(tiny_roberta, small_agnews)
    out = tmp_path / "runs"
    over = {"lora.r": {"choices": [64]}}  # over budget and skipped: nothing trains
    assert run_sweep(write_sweep(tmp_path, "space", base, search=_search(1, over)), output_dir=str(out)).ran == {
        "skipped_over_budget": 1}
    assert cli("sweep", tmp_path / "space.yaml", "--output-dir", out).code == 0  # the same space: fine
    for changed in ({"lora.r": {"choices": [64, 128]}}, {**over, "lora.dropout": DROPOUT}):
        sweep = write_sweep(tmp_path, "space", base, search=_search(3, changed))
        refused = cli("sweep", sweep, "--output-dir", out)
        last_line = refused.err.strip().splitlines()[-1]
        assert refused.code == 2 and "search.params" in last_line and "another --output-dir" in last_line, last_line
    assert len(load_study(out / "space", "space").trials) == 1
    assert load_sweep(tmp_path / "space.yaml").search_space()["lora.dropout"]["low"] == 0.0  # a low of 0 is recorded


def test_two_ranks_fitted_to_one_are_trained_once(tmp_path, tiny_roberta, small_agnews):
    """r 32 and r 64 are both over budget and fitted down to the same rank: the second trial trained that same
    config again under its own folder."""
    sweep = write_sweep(tmp_path, "fit", base_config(tiny_roberta, small_agnews), budget_policy="fit",
                        search=_search(2, {"lora.r": {"choices": [32, 64]}}))
    out = tmp_path / "runs"
    outcome = run_sweep(sweep, output_dir=str(out))
    assert outcome.exit_code == 0 and outcome.ran == {"completed": 1, DUPLICATE: 1}
    first, second = load_study(out / "fit", "fit").get_trials()
    assert first.state == second.state == TrialState.COMPLETE and second.value == first.value
    assert second.user_attrs["duplicate_of"] == 0 and second.user_attrs["run_dir"] == first.user_attrs["run_dir"]
    assert first.user_attrs["r_fitted"]["r"] == second.user_attrs["r_fitted"]["r"]
    assert (out / "fit" / "trial-0000" / SWEEP_INFO).exists() and not (out / "fit" / "trial-0001").exists()
    assert run_sweep(sweep, output_dir=str(out)).ran == {}


def test_a_finished_trial_whose_adapter_was_deleted_fails_that_trial_without_naming_its_own_worker(
        tmp_path, tiny_roberta, small_agnews):
    """A recreated study finds a trial's folder completed under its config, but its adapter/ deleted since: the
    folder check raised 'has no trained adapter' as a plain UserError, which _ready_folder (catching damage only)
    let escape the trial, and the line named the sweep worker itself as the process training the folder (it holds
    that folder's lock while it checks it). Now that trial fails with the reason, the others run, nothing is
    overwritten."""
    sweep = write_sweep(tmp_path, "gone", base_config(tiny_roberta, small_agnews),
                        grid={"mode": "one_at_a_time", "axes": {"lora.dropout": [0.0]}})
    out = tmp_path / "runs"
    assert run_sweep(sweep, output_dir=str(out)).ran == {"completed": 2}
    sweep_dir = out / "gone"
    shutil.rmtree(sweep_dir / "base" / runs.ADAPTER)
    (sweep_dir / "optuna.db").unlink()

    again = run_sweep(sweep, output_dir=str(out))
    assert again.exit_code == 1 and again.ran == {"completed": 1, "failed": 1}, again
    note = load_study(sweep_dir, "gone").trials
    notes = [t.user_attrs.get("note", "") for t in note if t.state != TrialState.COMPLETE]
    assert len(notes) == 1 and notes[0].startswith(f"{sweep_dir / 'base'} has no trained adapter"), notes
    assert "holds its lock" not in notes[0] and str(os.getpid()) not in notes[0], notes
    assert runs.read_json(sweep_dir / "base" / runs.RESULT)["status"] == "completed"  # left for the user
