"""Review of the sweep claims / per-trial seeds, the Hub spec parser and card, and atomic_replace_dir's lock and
leftovers: each test failed before its fix."""

from __future__ import annotations

from optuna.trial import TrialState

from lorafit.sweep import BUSY, COMPLETED
from lorafit.sweep.runner import TrialOutcome
from test_sweep import base_config, write_sweep
from test_sweep_workers import PARAMS, _runner


def test_a_busy_point_waiting_for_its_config_does_not_idle_the_other_workers(tmp_path, tiny_roberta, small_agnews):
    """A point queued again 'busy' (its config trained by another trial) kept every idle worker of a search waiting
    until that trial ended, though search.n_trials left trials to draw: Optuna's ask would take the queued point,
    so no new trial was drawn while one was queued. The queued point counts toward n_trials; a new one is drawn."""
    sweep = write_sweep(tmp_path, "same", base_config(tiny_roberta, small_agnews),
                        search={"n_trials": 10, "sampler": "random", "seed": 0, "pruner": "none",
                                "params": {"lora.dropout": PARAMS["lora.dropout"]}})
    out = tmp_path / "runs"
    worker_a, worker_b = _runner(sweep, out), _runner(sweep, out)
    for _ in range(2):
        worker_a.study.enqueue_trial({"lora.dropout": 0.05})
    trial_a, trial_b = worker_a.next_trial(), worker_b.next_trial()
    seen = []

    def a_trains(trial, run_dir, cfg, name, settings):
        seen.append(worker_b.run_trial(trial_b).status)
        seen.append(worker_b.next_trial())
        return worker_a._finish(trial, TrialOutcome(COMPLETED, 0.75))

    worker_a._train = a_trains
    worker_a.run_trial(trial_a)
    assert seen[0] == BUSY
    drawn = seen[1]
    assert drawn not in (None, "wait") and drawn.number == 3  # a new trial, not the queued point (2)
    assert 0.0 <= worker_b._settings(drawn)["lora.dropout"] <= 0.2
    assert worker_b.study.trials[2].state == TrialState.WAITING  # B's point still waits for A's result


def test_a_local_file_with_a_colon_evaluated_elsewhere_is_no_hub_dataset_in_the_card(tmp_path, monkeypatch):
    """A card written from another folder (an export) read `news:test.csv`, evaluated as a local file, as the Hub
    dataset `news` split `test.csv`, and listed it under `datasets:`."""
    from lorafit import card

    local = {"accuracy": 0.9, "macro_f1": 0.8, "data": "news:test.csv", "source": str(tmp_path / "a" / "news:test.csv")}
    hub = {"accuracy": 0.9, "macro_f1": 0.8, "data": "glue:sst2:validation", "source": "glue:sst2:validation"}
    monkeypatch.chdir(tmp_path)
    values = {"data": {"train_file": "train.csv"}}
    assert card._datasets(values, [("news_test", local), ("glue", hub)], {}) == ["glue"]
    results = card._eval_results(values, {}, [("news_test", local)])
    assert {r.dataset_type for r in results} == {"news_test"} and {r.dataset_split for r in results} == {None}
