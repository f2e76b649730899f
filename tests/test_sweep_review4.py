"""Sweep review 4: a duplicate of a pruned trial stays pruned (it became the sweep's best); a finished trial is
reused wherever its folder is reached from; a refused rerun no longer advises a study_name alone (its trials met the
old study's folders); grid points with long names get folders that fit; queued grid points taken out of the sweep
file are not trained."""

from __future__ import annotations

from pathlib import Path

from optuna.trial import TrialState

from lorafit import runs
from lorafit.sweep import DUPLICATE, run_sweep
from test_sweep import EVALS_PER_RUN, base_config, load_study, write_sweep


def test_a_duplicate_of_a_pruned_trial_stays_pruned_and_is_never_the_best(tmp_path, tiny_roberta, small_agnews):
    """Optuna gives a pruned trial a value (its last reported accuracy); the duplicate passed it on and was told
    COMPLETE, so a run cut short by the pruner was the sweep's best ('whose result is reused')."""
    search = {"n_trials": 2, "sampler": "random", "seed": 0, "pruner": {"type": "threshold", "lower": 1.1},
              "params": {"lora.dropout": {"choices": [0.05]}}}  # both trials draw one config; the first is pruned
    sweep = write_sweep(tmp_path, "pruned_dup", base_config(tiny_roberta, small_agnews), search=search)
    out = tmp_path / "runs"
    outcome = run_sweep(sweep, output_dir=str(out))
    assert outcome.exit_code == 0 and outcome.ran == {"pruned": 1, DUPLICATE: 1}, outcome
    assert outcome.best is None
    first, second = load_study(out / "pruned_dup", "pruned_dup").get_trials()
    assert first.state == second.state == TrialState.PRUNED
    assert second.user_attrs["duplicate_of"] == 0 and "pruned run is reused" in second.user_attrs["note"]


def test_a_finished_trial_is_reused_when_its_folder_is_reached_another_way(tmp_path, tiny_roberta, small_agnews,
                                                                           monkeypatch):
    """config.yaml was compared as text, output_dir included: the same finished run reached through another path (a
    shared folder mounted elsewhere, --output-dir typed relative then absolute) was not reused, and training then
    refused it ('already holds a finished run; use another --name, or --overwrite'): the trial failed, exit 1."""
    sweep = write_sweep(tmp_path, "moved", base_config(tiny_roberta, small_agnews),
                        grid={"mode": "product", "axes": {"lora.dropout": [0.0]}})
    monkeypatch.chdir(tmp_path)
    assert run_sweep(sweep, output_dir="runs").ran == {"completed": 1}
    sweep_dir = tmp_path / "runs" / "moved"
    (sweep_dir / "optuna.db").unlink()  # a new study (or a dead worker's retry) finds the run in its folder
    again = run_sweep(sweep, output_dir=str(tmp_path / "runs"))
    assert again.exit_code == 0 and again.ran == {"completed": 1}, again
    (trial,) = load_study(sweep_dir, "moved").get_trials()
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["note"] == "already in the folder"
    assert len(runs.read_eval_curve(sweep_dir / "lora.dropout=0")) == EVALS_PER_RUN  # not trained again


def test_a_refused_rerun_does_not_advise_another_study_name_alone(tmp_path, tiny_roberta, small_agnews, cli):
    """'give this sweep another name (or study_name)': with another study_name only, the sweep folder stays the same,
    and the new study's trials met the old study's run folders: every trial failed on 'a run with a different
    config'. The advice now names what makes a new folder."""
    base = base_config(tiny_roberta, small_agnews)
    grid = {"mode": "product", "axes": {"lora.r": [64]}}  # over budget: skipped, nothing trains
    out = tmp_path / "runs"
    for extra in ({}, {"study_name": "kept"}):
        name = "named" if extra else "plain"
        assert run_sweep(write_sweep(tmp_path, name, base, grid=grid, **extra), output_dir=str(out)).exit_code == 0
        changed = {**base, "train": {**base["train"], "learning_rate": 5e-4}}
        refused = cli("sweep", write_sweep(tmp_path, name, changed, grid=grid, **extra), "--output-dir", out)
        line = refused.err.strip().splitlines()[-1]
        assert refused.code == 2 and "learning_rate" in line, line
        advice = line.split("kept as they are: give this sweep ")[1]
        wanted = "another name and study_name" if extra else "another name, or use another --output-dir"
        assert advice.startswith(wanted) and "(or study_name)" not in advice, line


def test_grid_points_with_long_names_get_folders_that_fit(tmp_path, tiny_roberta, small_agnews):
    """A product grid of many axes named its folders past the file system's 255 bytes: every trial failed with a raw
    'File name too long' traceback. Long names are now cut with a hash of the whole name (two stay two)."""
    axes = {"lora.r": [64, 128],  # over budget: each point writes its small folder, nothing trains
            "lora.target_modules": [["query", "key", "value", "attention.output.dense", "intermediate.dense"]],
            "lora.dropout": [0.05], "lora.alpha_over_r": [0.5], "train.learning_rate": [2.0e-5],
            "train.weight_decay": [0.01], "train.warmup_steps": [1], "data.max_length": [32], "train.seed": [42],
            "train.batch_size": [8], "train.eval_steps": [2]}  # names of 279 and 280 bytes
    sweep = write_sweep(tmp_path, "long", base_config(tiny_roberta, small_agnews), grid={"mode": "product", "axes": axes})
    out = tmp_path / "runs"
    outcome = run_sweep(sweep, output_dir=str(out))
    assert outcome.exit_code == 0 and outcome.ran == {"skipped_over_budget": 2}, outcome
    folders = sorted(p for p in (out / "long").iterdir() if p.is_dir())
    assert len(folders) == 2 and all(len(p.name.encode()) <= 255 for p in folders)
    assert all(p.name.startswith("lora.r=") and runs.read_json(p / runs.RESULT)["status"] == "skipped" for p in folders)
    assert run_sweep(sweep, output_dir=str(out)).ran == {}  # the same names again: nothing reruns


def test_queued_grid_points_taken_out_of_the_sweep_file_are_not_run(tmp_path, tiny_roberta, small_agnews):
    """Every grid point is queued when the study opens; a value removed from the file before the rest ran was still
    trained by the next run of the file. It now leaves the queue ('dropped'), and comes back if the value does."""
    base = base_config(tiny_roberta, small_agnews)
    out = tmp_path / "runs"

    def sweep(values: list) -> Path:  # over-budget ranks: each point is skipped at once, nothing trains
        return write_sweep(tmp_path, "shrink", base, grid={"mode": "product", "axes": {"lora.r": values}})

    assert run_sweep(sweep([64, 128]), output_dir=str(out), n_trials=1).ran == {"skipped_over_budget": 1}
    second = run_sweep(sweep([64, 256]), output_dir=str(out))
    assert second.ran == {"skipped_over_budget": 1}, second
    assert sorted(p.name for p in (out / "shrink").iterdir() if p.is_dir()) == ["lora.r=256", "lora.r=64"]
    assert second.study_counts == {"skipped_over_budget": 2, "dropped": 1}
    third = run_sweep(sweep([64, 128, 256]), output_dir=str(out))  # the value is back: queued and run again
    assert third.ran == {"skipped_over_budget": 1} and (out / "shrink" / "lora.r=128").is_dir()
