"""`lorafit report`: the shipped seed-experiments sweep, run end to end on the tiny RoBERTa, gives the five plots
of the seed project plus accuracy vs parameters; failed, pruned, skipped and unfinished runs stay in the table."""

from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib.image
import optuna
import pytest
import yaml

from lorafit import locks, runs
from lorafit.report import make_report
from lorafit.sweep import default_storage_url, run_sweep

ROOT = Path(__file__).resolve().parents[1]
SEED_SWEEP = ROOT / "configs" / "sweeps" / "seed-experiments.yaml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Two steps per trial, an evaluation after each: the shipped sweep's twelve runs in well under a minute.
TINY_RUN = {"train.max_steps": 2, "train.eval_steps": 1, "train.warmup_steps": 0, "train.logging_steps": 1,
            "data.max_length": 32, "data.validation_size": 40, "data.max_train_samples": 64}


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    height, width, _ = matplotlib.image.imread(path).shape  # decodes: not just a header
    assert height > 200 and width > 300


@pytest.fixture(scope="module")
def seed_sweep(tmp_path_factory, tiny_roberta, small_agnews) -> Path:
    out = tmp_path_factory.mktemp("seed-sweep")
    outcome = run_sweep(SEED_SWEEP, output_dir=str(out), model=str(tiny_roberta), train_file=str(small_agnews),
                        overrides=TINY_RUN)
    assert outcome.exit_code == 0 and outcome.ran == {"completed": 12}
    return out / "seed-experiments"


def test_seed_experiments_report_has_the_five_plots_and_params_plot(seed_sweep, tmp_path, cli):
    result = cli("report", seed_sweep, "--out", tmp_path / "report")
    assert result.code == 0, result.err
    report = make_report(seed_sweep, tmp_path / "report")
    assert list(report.plots) == [
        "peak-by-scope.png", "curve-lora.dropout.png", "curve-lora.alpha_over_r.png", "curve-lora.r.png",
        "curve-train.learning_rate.png", "accuracy-vs-params.png",
    ]
    for filename in report.plots:
        assert_png(report.out_dir / filename)
    assert report.plots["peak-by-scope.png"] == [
        "value r=22", "query+value r=22", "query+key+value r=22", "query+key+value+dense r=22"]
    assert report.plots["curve-lora.dropout.png"] == [
        "LoRA dropout = 0.05", "LoRA dropout = 0.1 (base)", "LoRA dropout = 0.15"]
    assert report.plots["curve-lora.alpha_over_r.png"] == [
        "alpha / r = 0.5 (alpha 11)", "alpha / r = 1 (alpha 22)", "alpha / r = 2 (alpha 44) (base)"]
    assert report.plots["curve-lora.r.png"] == ["rank r = 6", "rank r = 11", "rank r = 22 (base)"]
    assert report.plots["curve-train.learning_rate.png"] == [
        "learning rate = 2e-05", "learning rate = 3e-05", "learning rate = 5e-05 (base)"]
    series = report.plots["accuracy-vs-params.png"]
    assert series[0] == "runs" and series[1].startswith("best: ") and series[2] == "budget 1,000,000"

    table = report.markdown_path.read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| run ")]
    assert len(rows) == 12 and all("| completed |" in row for row in rows)
    assert "| base | completed | base |" in table
    assert "lora.target_modules=query,key,value,dense" in table
    for filename in report.plots:
        assert f"![{filename}]({filename})" in table


def tiny_base(tiny_roberta: Path, data: Path, steps: int) -> dict:
    """A base config for sweeps of the tiny RoBERTa: value-only r=2 with alpha 4, an evaluation every steps/2."""
    return {
        "budget": 3000,
        "model": {"name_or_path": str(tiny_roberta)},
        "lora": {"r": 2, "alpha": 4, "target_modules": ["value"]},
        "data": {"train_file": str(data), "max_length": 32, "validation_size": 40, "max_train_samples": 64},
        "train": {"max_steps": steps, "eval_steps": steps // 2, "batch_size": 8, "warmup_steps": 0,
                  "logging_steps": steps // 2},
    }


def test_report_lists_failed_pruned_skipped_and_unfinished_runs(tmp_path, tiny_roberta, small_agnews, cli):
    base = tiny_base(tiny_roberta, small_agnews, steps=4)
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"name": "mixed", "base": base, "grid": {"mode": "one_at_a_time", "axes": {
        "lora.r": [64], "lora.target_modules": [["nonexistent"]]}}}))
    search = tmp_path / "search.yaml"  # a threshold no tiny model reaches: its first evaluation prunes it
    search.write_text(yaml.safe_dump({"name": "pruned", "base": base, "search": {
        "n_trials": 1, "pruner": {"type": "threshold", "lower": 0.99},
        "params": {"lora.dropout": {"type": "float", "low": 0.0, "high": 0.2}}}}))
    out = tmp_path / "runs"
    assert run_sweep(grid, output_dir=str(out)).exit_code == 1  # one trial failed: the worker says so
    assert run_sweep(search, output_dir=str(out)).ran == {"pruned": 1}

    pruned_dir = out / "pruned" / "trial-0000"
    pruned = runs.read_json(pruned_dir / runs.RESULT)
    assert pruned["status"] == "pruned" and pruned["pruned_at_step"] == 2 and pruned["global_step"] == 2
    trial = optuna.load_study(study_name="pruned", storage=default_storage_url(out / "pruned")).trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED and trial.user_attrs["status"] == "pruned"
    # a run killed after its evaluations: the folder has everything but result.json
    shutil.copytree(out / "mixed" / "base", out / "killed")
    (out / "killed" / runs.RESULT).unlink()
    (out / "killed" / "sweep.json").unlink()  # a plain `lorafit train` run, not part of the sweep

    result = cli("report", out)
    assert result.code == 0, result.err
    table = (out / "report" / "report.md").read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert "| completed | base |" in rows["mixed/base"]
    assert "| skipped |" in rows["mixed/lora.r=64"] and "over budget" in rows["mixed/lora.r=64"]
    assert "| failed |" in rows["mixed/lora.target_modules=nonexistent"]
    assert "['nonexistent'] not found" in rows["mixed/lora.target_modules=nonexistent"]
    assert "| pruned |" in rows["pruned/trial-0000"] and "pruned at step 2" in rows["pruned/trial-0000"]
    assert "| incomplete |" in rows["killed"] and "no result.json" in rows["killed"]
    assert "5 runs: 1 completed, 1 failed, 1 incomplete, 1 pruned, 1 skipped." in table
    for png in (out / "report").glob("*.png"):
        assert_png(png)
    report = make_report(out)
    assert report.plots["peak-by-scope.png"] == ["value r=2", "nonexistent r=2"]
    assert "skipped: over budget" in report.plots["accuracy-vs-params.png"]


def test_a_run_being_trained_shows_as_running_not_as_its_old_outcome(seed_sweep, tmp_path, cli):
    """`lorafit report` on a sweep whose workers still train: a held run folder is `running`, named with its writer,
    whatever its files say at that moment (here: a resumed run whose interruption result.json is still there)."""
    sweep = tmp_path / "seed-experiments"
    shutil.copytree(seed_sweep, sweep, ignore=shutil.ignore_patterns("report"))
    held = sweep / "lora.r=6"
    result = runs.read_json(held / runs.RESULT)
    runs.atomic_write_json(held / runs.RESULT, {**result, "status": "interrupted"})

    def rows() -> dict:
        table = (sweep / "report" / "report.md").read_text()
        return {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}

    with locks.RunLock(held):
        done = cli("report", sweep)
        assert done.code == 0, done.err
        assert "| running |" in rows()["lora.r=6"]
        assert f"being trained by process {__import__('os').getpid()}" in rows()["lora.r=6"]
        assert "| completed |" in rows()["base"]  # the others as before
    assert cli("report", sweep).code == 0
    assert "| interrupted |" in rows()["lora.r=6"]  # released: its files are its outcome again


def test_report_on_a_folder_without_runs_is_a_user_error(tmp_path, cli):
    result = cli("report", tmp_path)
    assert result.code == 2 and "no run folders" in result.err
    assert not (tmp_path / "report").exists()


def test_alpha_over_r_axis_over_a_base_that_sets_alpha(tmp_path, tiny_roberta, small_agnews):
    """The base run gives alpha itself (alpha_over_r unset): its curve is labelled with that alpha, not a crash."""
    base = tiny_base(tiny_roberta, small_agnews, steps=2)
    sweep = tmp_path / "alpha.yaml"
    sweep.write_text(yaml.safe_dump({"name": "alpha", "base": base, "grid": {"mode": "one_at_a_time", "axes": {
        "lora.alpha_over_r": [1, 3]}}}))
    assert run_sweep(sweep, output_dir=str(tmp_path / "runs")).ran == {"completed": 3}
    report = make_report(tmp_path / "runs" / "alpha", tmp_path / "report")
    assert report.plots["curve-lora.alpha_over_r.png"] == [
        "alpha / r = None (alpha 4) (base)", "alpha / r = 1 (alpha 2)", "alpha / r = 3 (alpha 6)"]
    assert_png(report.out_dir / "curve-lora.alpha_over_r.png")
