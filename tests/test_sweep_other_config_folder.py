"""A sweep trial whose folder holds another config's run (an earlier sweep with other settings, in another storage
or with optuna.db deleted) fails with advice a sweep user can follow: it gave train's ('use another --name, or
--overwrite'), which `lorafit sweep` has neither of."""

from __future__ import annotations

import shutil

from optuna.trial import TrialState

from lorafit import runs
from lorafit.sweep import DUPLICATE, run_sweep
from test_sweep import base_config, load_study, write_sweep


def _failed_note(sweep_dir, storage_file) -> str:
    (trial,) = load_study(sweep_dir, "other", storage=f"sqlite:///{storage_file}").get_trials()
    assert trial.state == TrialState.FAIL
    return trial.user_attrs["note"]


def test_a_folder_with_another_configs_run_gets_sweep_advice(tmp_path, tiny_roberta, small_agnews):
    sweep = write_sweep(tmp_path, "other", base_config(tiny_roberta, small_agnews),
                        grid={"mode": "product", "axes": {"lora.dropout": [0.0]}})
    out = tmp_path / "runs"
    assert run_sweep(sweep, output_dir=str(out)).ran == {"completed": 1}
    run_dir = out / "other" / "lora.dropout=0"
    finished = runs.read_json(run_dir / runs.RESULT)

    for attempt, damage in enumerate([None, runs.CHECKPOINTS]):  # with its checkpoints, then with them deleted
        if damage:
            shutil.rmtree(run_dir / damage)
        storage = tmp_path / f"study{attempt}.db"
        clash = run_sweep(sweep, output_dir=str(out), storage=f"sqlite:///{storage}", overrides={"train.max_steps": 2})
        assert clash.exit_code == 1 and clash.ran == {"failed": 1}, clash
        note = _failed_note(out / "other", storage)
        assert "holds a run of another config" in note and "another --output-dir" in note, note
        assert "train.max_steps: 4 there, 2 here" in note, note  # why it is another config
        assert "--name" not in note and "--overwrite" not in note, note
        assert runs.read_json(run_dir / runs.RESULT) == finished and (run_dir / runs.ADAPTER).is_dir()


def test_a_pruned_run_found_in_its_folder_stays_pruned(tmp_path, tiny_roberta, small_agnews):
    """A new study (optuna.db deleted, or another storage) meeting a run the pruner cut short in the trial's folder
    resumed it from its checkpoint and trained it on: a finished completed run is never trained again, and neither
    is a finished pruned one. It is recorded as pruned again, with its run left as it was."""
    search = {"n_trials": 1, "sampler": "random", "seed": 0, "pruner": {"type": "threshold", "lower": 1.1},
              "params": {"lora.dropout": {"choices": [0.05]}}}
    sweep = write_sweep(tmp_path, "pruned", base_config(tiny_roberta, small_agnews), search=search)
    out = tmp_path / "runs"
    assert run_sweep(sweep, output_dir=str(out)).ran == {"pruned": 1}
    (run_dir,) = [p for p in (out / "pruned").iterdir() if (p / runs.RESULT).exists()]
    pruned = runs.read_json(run_dir / runs.RESULT)
    curve = runs.read_eval_curve(run_dir)
    assert pruned["status"] == "pruned"

    (out / "pruned" / "optuna.db").unlink()
    again = run_sweep(sweep, output_dir=str(out))
    assert again.exit_code == 0 and again.ran == {"pruned": 1}, again
    (trial,) = load_study(out / "pruned", "pruned").get_trials()
    assert trial.state == TrialState.PRUNED and "already in the folder" in trial.user_attrs["note"]
    assert runs.read_json(run_dir / runs.RESULT) == pruned and runs.read_eval_curve(run_dir) == curve


def test_workers_that_reach_the_sweep_folder_by_other_paths_share_a_configs_run(tmp_path, tiny_roberta, small_agnews,
                                                                                monkeypatch):
    """The config key held output_dir, so a worker whose --output-dir named the same folder another way (relative
    and absolute here; a share mounted elsewhere) did not see that a trial had trained its config, and trained it
    again."""
    search = {"n_trials": 2, "sampler": "random", "seed": 0, "params": {"lora.dropout": {"choices": [0.05]}}}
    sweep = write_sweep(tmp_path, "paths", base_config(tiny_roberta, small_agnews), search=search)
    monkeypatch.chdir(tmp_path)
    first = run_sweep(sweep, output_dir="runs", n_trials=1)
    assert first.exit_code == 0 and first.ran == {"completed": 1}, first
    second = run_sweep(sweep, output_dir=str(tmp_path / "runs"), n_trials=1)
    assert second.exit_code == 0 and second.ran == {DUPLICATE: 1}, second
    trials = load_study(tmp_path / "runs" / "paths", "paths").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[1].user_attrs["duplicate_of"] == 0
