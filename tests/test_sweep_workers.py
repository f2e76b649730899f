"""Several workers on one study: workers started from the same sweep file (same search.seed) draw different points
while a lone worker stays reproducible, and two trials of one config that start together train it once."""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState

from lorafit.sweep import BUSY, COMPLETED, DUPLICATE, SweepRunner, TrialFactory, default_storage_url, load_sweep
from lorafit.sweep import open_study, trial_base
from lorafit.sweep.runner import TrialOutcome
from test_sweep import base_config, write_sweep

PARAMS = {"lora.dropout": {"type": "float", "low": 0.0, "high": 0.2},
          "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}


def _runner(sweep: Path, out: Path) -> SweepRunner:
    """A worker on the sweep's study, as run_sweep makes it (each its own Study and sampler, as in another process)."""
    spec = load_sweep(sweep)
    factory = TrialFactory(spec, {}, str(out))
    url = default_storage_url(factory.sweep_dir)
    points = factory.grid_points() if spec.search is None else []
    study, storage, _ = open_study(spec, url, factory.sweep_dir, points, trial_base(factory))
    return SweepRunner(spec, factory, study, storage, url)


def _draw(runner: SweepRunner) -> dict:
    """The next trial this worker asks for and the point it draws (nothing trains; the trial stays running)."""
    trial = runner.next_trial()
    assert trial not in (None, "wait")
    return runner._settings(trial)


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_workers_sharing_a_seed_draw_different_points_and_a_lone_worker_is_reproducible(
        tmp_path, tiny_roberta, small_agnews, sampler):
    """Every worker built its sampler with search.seed, so N workers started with one sweep file drew the same
    sequence and trained the same configs N times."""
    search = {"n_trials": 10, "sampler": sampler, "seed": 7, "pruner": "none", "params": PARAMS}
    sweep = write_sweep(tmp_path, "seeded", base_config(tiny_roberta, small_agnews), search=search)
    worker_a, worker_b = _runner(sweep, tmp_path / "shared"), _runner(sweep, tmp_path / "shared")
    first_a, first_b = _draw(worker_a), _draw(worker_b)
    assert first_a != first_b
    assert _draw(worker_b) not in (first_a, first_b)  # a worker's next draw is new too

    def lone(out: Path) -> list:
        worker = _runner(sweep, out)
        return [_draw(worker) for _ in range(3)]

    alone = lone(tmp_path / "alone-1")
    assert alone == lone(tmp_path / "alone-2")  # the same seed, a fresh study: the same points
    assert len({tuple(point.values()) for point in alone}) == 3
    assert alone[0] == first_a  # the first worker on a study draws what a lone worker draws


def _two_trials_of_one_config(tmp_path: Path, tiny_roberta, small_agnews, kind: str) -> Path:
    """A sweep whose first two trials train the same config in two run folders."""
    base = base_config(tiny_roberta, small_agnews)
    if kind == "grid":  # both ranks are over the budget and fitted down to the same rank
        return write_sweep(tmp_path, "same", base, budget_policy="fit",
                           grid={"mode": "product", "axes": {"lora.r": [32, 64]}})
    return write_sweep(tmp_path, "same", base, search={"n_trials": 2, "sampler": "random", "seed": 0,
                                                       "pruner": "none", "params": {"lora.dropout": PARAMS["lora.dropout"]}})


@pytest.mark.parametrize("kind", ["grid", "search"])
def test_two_trials_of_one_config_starting_together_train_it_once(tmp_path, tiny_roberta, small_agnews, kind):
    """Each trial looked for a finished trial of its config, found none while the other was still training, and
    trained it again. Now the check and the claim are one step: worker B, arriving while A trains the config, ends
    its trial 'busy' (not a failure, not counted), its point waits in the queue while A trains, and once A is done
    it becomes a 'duplicate' that reuses A's result."""
    sweep = _two_trials_of_one_config(tmp_path, tiny_roberta, small_agnews, kind)
    out = tmp_path / "runs"
    worker_a, worker_b = _runner(sweep, out), _runner(sweep, out)
    if kind == "search":
        for _ in range(2):
            worker_a.study.enqueue_trial({"lora.dropout": 0.05})
    trial_a, trial_b = worker_a.next_trial(), worker_b.next_trial()
    assert (trial_a.number, trial_b.number) == (0, 1)
    trained, seen_by_b = [], []

    def a_trains(trial, run_dir, cfg, name, settings):  # B arrives while A holds the config: no timer, no race
        trained.append(name)
        seen_by_b.append(worker_b.run_trial(trial_b))
        seen_by_b.append(worker_b.next_trial())  # its point waits for A instead of being claimed again
        return worker_a._finish(trial, TrialOutcome(COMPLETED, 0.75))

    def b_trains(trial, run_dir, cfg, name, settings):
        trained.append(name)
        return worker_b._finish(trial, TrialOutcome(COMPLETED, 0.5))

    worker_a._train, worker_b._train = a_trains, b_trains
    assert worker_a.run_trial(trial_a).status == COMPLETED
    assert [outcome if isinstance(outcome, str) else outcome.status for outcome in seen_by_b] == [BUSY, "wait"]
    assert worker_b.run(None, None) == {DUPLICATE: 1}  # B's point, now that A is done
    assert trained == [worker_a._trial_name(trial_a)]  # trained once, by A

    trials = worker_b.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert [t.user_attrs["status"] for t in trials] == [COMPLETED, BUSY, DUPLICATE]
    assert trials[2].value == 0.75 and trials[2].user_attrs["duplicate_of"] == 0
    assert trials[2].user_attrs["run_name"] == trials[1].user_attrs["run_name"]  # the same point as B's first try
    assert worker_b._count_failed_for_good() == 0 and worker_b.next_trial() is None
    assert not (out / "same" / trials[1].user_attrs["run_name"]).exists()  # B wrote nothing
