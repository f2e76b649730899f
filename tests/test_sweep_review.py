"""Sweep review: sweep-file mistakes found when the file loads (one line, nothing written), settings that would do
nothing refused, grid values that differ only past six digits kept apart, and finished runs of another config never
wiped by a later study."""

from __future__ import annotations

import shutil

import pytest

from lorafit import runs
from lorafit.errors import UserError
from lorafit.sweep import TrialFactory, load_sweep, run_sweep
from conftest import one_line_error
from test_sweep import base_config, write_sweep

RANGE = {"type": "float", "low": 0.0, "high": 0.2}


def _search(params: dict, **more) -> dict:
    return {"search": {"n_trials": 1, "sampler": "random", "seed": 0, "pruner": "none", "params": params, **more}}


@pytest.mark.parametrize("pruner", [{"type": "median", "n_startup_trails": 3}, "threshold", "percentile"])
def test_pruner_options_are_refused_before_the_sweep_folder_is_made(tmp_path, tiny_roberta, small_agnews, cli, pruner):
    sweep = write_sweep(tmp_path, "pruner", base_config(tiny_roberta, small_agnews),
                        search={"n_trials": 1, "pruner": pruner, "params": {"lora.dropout": RANGE}})
    result = cli("sweep", sweep, "--output-dir", tmp_path / "runs")
    assert result.code == 2 and "search.pruner" in result.err and "Traceback" not in result.err
    assert not (tmp_path / "runs").exists()  # no sweep folder, lock file or optuna.db


@pytest.mark.parametrize("sections, message", [
    (_search({"lora.r": {"choices": [2, "eight"]}}), "could draw 'eight'"),  # only the first choice was checked
    (_search({"lora.dropout": {"type": "float", "low": 0.0, "high": 1.5}}), "could draw 1.5"),  # only low was
    (_search({"lora.r": {"type": "float", "low": 2, "high": 8}}), r"lora.r: a trial could draw 4\.29"),
    (_search({"lora.dropout": {**RANGE, "step": 0}}), "step is 0; use a positive step"),
    (_search({"train.warmup_steps": {"type": "int", "low": 0.5, "high": 8, "log": True}}), "needs whole numbers"),
    (_search({"lora.dropout": RANGE}, n_trials=True), "search.n_trials is True"),
    # bool("false") is True: the quoted word turned log scale on
    (_search({"train.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": "false"}}),
     "log is 'false'; use true or false, without quotes"),
    ({"grid": {"axes": {"name": ["a", "b"]}}}, "grid.axes.name would do nothing"),
    ({"grid": {"mode": "product", "axes": {"output_dir": ["x", "y"]}}}, "grid.axes.output_dir would do nothing"),
    (_search({"name": {"choices": ["a", "b"]}}), "search.params.name would do nothing"),
    ({"overrides": {"name": "mine"}, "grid": {"axes": {"lora.dropout": [0.0]}}}, "overrides.name would do nothing"),
    ({"overrides": {"lora": {"alpha_over_r": 2}}, "grid": {"axes": {"lora.dropout": [0.0]}}},
     "would replace the whole 'lora' section"),
    ({"grid": {"axes": {1: [2]}}}, "grid.axes has the key 1"),
    ({"overrides": {None: 2}, "grid": {"axes": {"lora.dropout": [0.0]}}}, "overrides has the key None"),
    ({"output_dir": 5, "grid": {"axes": {"lora.dropout": [0.0]}}}, "'output_dir' is 5"),
])
def test_sweep_file_mistakes_fail_at_once_with_nothing_written(tmp_path, tiny_roberta, small_agnews, monkeypatch,
                                                               sections, message):
    """Each of these gave a raw traceback, a failed trial per draw, or silently did nothing."""
    monkeypatch.chdir(tmp_path)  # a sweep-file output_dir is relative to here
    sweep = write_sweep(tmp_path, "mistake", base_config(tiny_roberta, small_agnews), **sections)
    with pytest.raises(UserError, match=message):
        run_sweep(sweep, output_dir=None if "output_dir" in sections else str(tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()


def test_a_storage_url_typo_writes_nothing(tmp_path, tiny_roberta, small_agnews, cli):
    sweep = write_sweep(tmp_path, "url", base_config(tiny_roberta, small_agnews),
                        grid={"axes": {"lora.dropout": [0.0]}})
    result = cli("sweep", sweep, "--output-dir", tmp_path / "runs", "--storage", "optuna.db")
    assert result.code == 2 and "is not a database URL" in result.err
    assert not (tmp_path / "runs").exists()


def test_grid_values_that_differ_past_six_digits_are_two_points(tmp_path, tiny_roberta, small_agnews):
    """'{:g}' named both 'lora.dropout=0.123456': one point silently replaced the other."""
    sweep = write_sweep(tmp_path, "digits", base_config(tiny_roberta, small_agnews),
                        grid={"mode": "product", "axes": {"lora.dropout": [0.1234561, 0.1234564, 0.05]}})
    points = TrialFactory(load_sweep(sweep), {}).grid_points()
    assert [p.settings["lora.dropout"] for p in points] == [0.1234561, 0.1234564, 0.05]
    assert [p.name for p in points][2] == "lora.dropout=0.05"  # short names stay as they were


def test_a_finished_run_of_another_config_is_never_wiped(tmp_path, tiny_roberta, small_agnews):
    """A later study (another storage, or optuna.db deleted) that finds a finished run of another config in a point's
    folder fails that trial and leaves the run alone, also when the point is now over budget (it was replaced by
    a 'skipped' folder) or when its checkpoints were deleted to save space (it was removed and trained again)."""
    sweep = write_sweep(tmp_path, "keep", base_config(tiny_roberta, small_agnews),
                        grid={"mode": "product", "axes": {"lora.dropout": [0.0]}})
    out = tmp_path / "runs"
    assert run_sweep(sweep, output_dir=str(out)).ran == {"completed": 1}
    run_dir = out / "keep" / "lora.dropout=0"
    finished = runs.read_json(run_dir / runs.RESULT)

    over = run_sweep(sweep, output_dir=str(out), storage=f"sqlite:///{tmp_path / 'a.db'}", overrides={"budget": 1000})
    assert over.ran == {"failed": 1}, over
    assert runs.read_json(run_dir / runs.RESULT) == finished and (run_dir / runs.ADAPTER).is_dir()

    shutil.rmtree(run_dir / runs.CHECKPOINTS)
    other = run_sweep(sweep, output_dir=str(out), storage=f"sqlite:///{tmp_path / 'b.db'}",
                      overrides={"train.max_steps": 2})
    assert other.ran == {"failed": 1}, other
    assert runs.read_json(run_dir / runs.RESULT) == finished and (run_dir / runs.ADAPTER).is_dir()


def test_a_rerun_with_another_budget_policy_is_refused(tmp_path, tiny_roberta, small_agnews, cli):
    """Skipped points are done for the study: rerun with budget_policy fit, they stayed skipped without a word."""
    base = base_config(tiny_roberta, small_agnews)
    grid = {"mode": "product", "axes": {"lora.r": [64]}}  # over budget: skipped, nothing trains
    out = tmp_path / "runs"
    assert run_sweep(write_sweep(tmp_path, "policy", base, grid=grid), output_dir=str(out)).ran == {
        "skipped_over_budget": 1}
    refused = cli("sweep", write_sweep(tmp_path, "policy", base, grid=grid, budget_policy="fit"), "--output-dir", out)
    assert refused.code == 2 and "budget_policy: 'skip' -> 'fit'" in refused.err
    assert "another --output-dir" in refused.err


def test_a_worker_whose_trial_was_taken_over_goes_on(tmp_path, tiny_roberta, small_agnews):
    """A worker that missed its heartbeats for the grace period (stalled database, suspended machine) finds its
    trial failed by another worker when it ends: it crashed on that finished trial (UpdateFinishedTrialError)."""
    from optuna.trial import TrialState

    from lorafit.sweep import SweepRunner, default_storage_url, open_study, trial_base
    from lorafit.sweep.runner import COMPLETED, TrialOutcome

    sweep = write_sweep(tmp_path, "stale", base_config(tiny_roberta, small_agnews),
                        grid={"mode": "product", "axes": {"lora.dropout": [0.0]}})
    spec = load_sweep(sweep)
    factory = TrialFactory(spec, {}, str(tmp_path / "runs"))
    url = default_storage_url(factory.sweep_dir)
    study, storage, _ = open_study(spec, url, factory.sweep_dir, factory.grid_points(), trial_base(factory))
    runner = SweepRunner(spec, factory, study, storage, url)
    trial = runner.next_trial()
    trial_id = storage.get_trial_id_from_study_id_trial_number(runner.study_id, trial.number)
    storage.set_trial_state_values(trial_id, TrialState.FAIL)  # what another worker's fail_stale_trials does
    assert runner._finish(trial, TrialOutcome(COMPLETED, 0.5)).status == COMPLETED
    assert storage.get_trial(trial_id).state == TrialState.FAIL


@pytest.mark.parametrize("data, words", [
    # A Hub dataset (HF_HUB_OFFLINE here, not cached): every trial loaded the model, then failed on its own
    ({"train_file": None, "dataset": "nobody/no-such-news"},
     ("cannot load dataset 'nobody/no-such-news' split 'train'", "data.train_file and data.eval_file in the config")),
    ({"eval_file": "missing-eval.csv"}, ("validation file not found", "missing-eval.csv", "data.eval_file")),
])
def test_data_no_trial_could_read_fails_the_sweep_at_once_with_nothing_written(tmp_path, tiny_roberta, small_agnews,
                                                                               cli, data, words):
    base = base_config(tiny_roberta, small_agnews)
    base["data"].update(data)
    sweep = write_sweep(tmp_path, "data", base, grid={"axes": {"lora.dropout": [0.0, 0.1]}})
    one_line_error(cli("sweep", sweep, "--output-dir", tmp_path / "runs"), *words)
    assert not (tmp_path / "runs").exists()
